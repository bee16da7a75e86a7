"""LoadBalancer address management on a Kubernetes cluster (Calico's kube-controllers
does the same): Services of type LoadBalancer get ``status.loadBalancer.ingress``
from IP pools with ``allowedUses: [LoadBalancer]``.

    desired_ingress(services, pools)   pure: (namespace, name) -> the addresses it should have
    LoadBalancerController(store).run(stop)   list + watch Services and IPPools, write status

The calculation is a function of the current objects only: Services are taken
oldest first (creationTimestamp, then namespace/name), each keeps an address it
already holds if that is still free and in a usable pool (or is its
``spec.loadBalancerIP``), else gets the first free one (the same choice the
lab's SQLite mode makes, ``tabby.services.controller.ingress_for``). A Service
that is no longer of type LoadBalancer loses its addresses. Writes go through
the status subresource with compare-and-swap on resourceVersion; a lost race
is simply recomputed on the next event.

The API server allocates ClusterIPs and NodePorts itself, and the
controller-manager makes the EndpointSlices: this controller does only what no
Kubernetes component does without a cloud provider.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import TypeVar

from tabby.errors import Compacted, Conflict, FieldError, NotFound, TabbyError
from tabby.model import IPPool, Resource, Service
from tabby.services.controller import ingress_for
from tabby.store.base import Event, Item, Store
from tabby.store.client import from_item, key_of, to_value

__all__ = ["LoadBalancerController", "desired_ingress"]

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Resource)
Ref = tuple[str, str]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def desired_ingress(services: Iterable[Service], pools: Sequence[IPPool],
                    ) -> dict[Ref, tuple[IPAddress, ...]]:
    """Every Service's wanted ingress addresses (empty for non-LoadBalancer ones)."""
    usable = [p for p in pools if p.usable_for("LoadBalancer")]
    ordered = sorted(services, key=lambda s: (s.meta.creation_timestamp, s.meta.namespace,
                                              s.meta.name))
    decided: list[Service] = []
    out: dict[Ref, tuple[IPAddress, ...]] = {}
    for svc in ordered:
        ref = (svc.meta.namespace, svc.meta.name)
        if svc.spec.type != "LoadBalancer":
            out[ref] = ()
            decided.append(dataclasses.replace(svc, ingress=()))
            continue
        errors: list[FieldError] = []
        ips = ingress_for(svc, decided, usable, errors)
        for e in errors:
            log.warning("%s: %s", svc.ref, e)
        out[ref] = tuple(ips)
        decided.append(dataclasses.replace(svc, ingress=ips))
    return out


class LoadBalancerController:
    def __init__(self, store: Store) -> None:
        self.store = store

    def sync(self, services: Sequence[Service], pools: Sequence[IPPool]) -> int:
        """Write every Service whose ingress differs; returns how many were written."""
        wanted = desired_ingress(services, pools)
        written = 0
        for svc in services:
            want = wanted[(svc.meta.namespace, svc.meta.name)]
            if tuple(svc.ingress) == want:
                continue
            new = dataclasses.replace(svc, ingress=want)
            try:
                self.store.update_status(key_of(new), to_value(new),
                                         int(svc.meta.resource_version))
            except (Conflict, NotFound):
                continue  # it moved: the watch brings it back
            log.info("%s: loadBalancer ingress %s", svc.ref,
                     ", ".join(map(str, want)) or "(none)")
            written += 1
        return written

    def run(self, stop: threading.Event) -> None:
        """List, sync, then follow the watch; list again after Compacted or an error."""
        resources = [Service.KIND.resource, IPPool.KIND.resource]
        backoff = 0.5
        while not stop.is_set():
            try:
                services, pools, revision = self._list()
                self.sync(list(services.values()), list(pools.values()))
                with self.store.watch_many(resources, revision + 1) as watch:
                    backoff = 0.5
                    while not stop.is_set():
                        events = watch.next(1.0)
                        if events:
                            _fold(events, services, pools)
                            self.sync(list(services.values()), list(pools.values()))
            except Compacted:
                continue
            except TabbyError as exc:
                log.error("load balancer controller: %s; retrying in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _list(self) -> tuple[dict[Ref, Service], dict[Ref, IPPool], int]:
        listing = self.store.list(Service.KIND.resource)
        pools_listing = self.store.list(IPPool.KIND.resource)
        services: dict[Ref, Service] = {}
        for item in listing:
            try:
                services[(item.key.namespace, item.key.name)] = from_item(Service, item)
            except TabbyError as exc:
                log.warning("ignoring %s: %s", item.key, exc)
        pools = {("", i.key.name): from_item(IPPool, i) for i in pools_listing}
        return services, pools, min(listing.revision, pools_listing.revision)


def _fold(events: Iterable[Event], services: dict[Ref, Service],
          pools: dict[Ref, IPPool]) -> None:
    for e in events:
        ref = (e.key.namespace, e.key.name)
        if e.key.resource == Service.KIND.resource:
            _put(services, Service, ref, e)
        else:
            _put(pools, IPPool, ref, e)


def _put(table: dict[Ref, R], cls: type[R], ref: Ref, e: Event) -> None:
    if e.type == "DELETE" or e.value is None:
        table.pop(ref, None)
        return
    try:
        table[ref] = from_item(cls, Item(e.key, e.value, e.revision, 0))
    except TabbyError as exc:
        log.warning("ignoring %s: %s", e.key, exc)
