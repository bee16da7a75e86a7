"""What the proxy needs to know about each service port, read from a Snapshot.

    port_views(snapshot) -> tuple[PortView, ...]

One ``PortView`` per (Service, service port, address family) the service
serves: its frontends (the ClusterIP, externalIPs and load-balancer ingress
IPs of that family, the nodePort), its traffic policies, its session
affinity, and its usable backends, found in the service's EndpointSlices
(label ``kubernetes.io/service-name``) of that family by the port's name and
protocol. Usable means ready; when no endpoint is ready, the serving
endpoints that are terminating are used instead (what kube-proxy does, so
connections drain during a rollout). An endpoint's first address is the one
used, as Kubernetes specifies. Headless and ExternalName services have no
view. Everything is sorted, so equal snapshots give equal views.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tabby.model.service import SERVICE_NAME_LABEL, EndpointSlice, Service, ServicePort
from tabby.snapshot import Snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
R = TypeVar("R")


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    address: IPAddress
    port: int
    node: str = ""


@dataclass(frozen=True, slots=True)
class PortView:
    namespace: str
    service: str
    port_name: str
    version: int  # 4 or 6
    protocol: str  # "tcp" | "udp" | "sctp"
    port: int
    cluster_ip: IPAddress | None
    external_ips: tuple[IPAddress, ...]  # spec.externalIPs and LB ingress of this family
    node_port: int | None
    external_local: bool  # externalTrafficPolicy: Local
    internal_local: bool  # internalTrafficPolicy: Local
    affinity_timeout: int | None  # seconds, for sessionAffinity ClientIP
    backends: tuple[Backend, ...]

    @property
    def ref(self) -> str:
        suffix = f":{self.port_name}" if self.port_name else ""
        return f"{self.namespace}/{self.service}{suffix}"

    def local_backends(self, node: str) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.node == node)


def port_views(snapshot: Snapshot) -> tuple[PortView, ...]:
    return tuple(v for svc, slices in service_inputs(snapshot)
                 for v in service_views(svc, slices))


ServiceKey = tuple[str, str]  # (namespace, name)
Inputs = tuple[Service, tuple[EndpointSlice, ...]]


def served(svc: Service) -> bool:
    """Whether the proxy serves ``svc`` (it has a ClusterIP: not headless, not ExternalName)."""
    return bool(svc.spec.cluster_ips) and not svc.spec.headless \
        and svc.spec.type != "ExternalName"


class InputChanges:
    """``service_inputs`` pass after pass, by difference: ``changes(snapshot)`` names the
    services whose inputs may differ from the last snapshot's, with their inputs now
    (None: no longer served). Objects are compared by identity (the agent's cache hands
    out the same objects until they change), found with set operations over ids, so a
    pass over 10k services and 10k slices with one change does little Python work."""

    def __init__(self) -> None:
        self._services: tuple[Service, ...] = ()
        self._slices: tuple[EndpointSlice, ...] = ()
        self._service_ids: dict[int, Service] = {}  # holds them: an id stays theirs
        self._slice_ids: dict[int, EndpointSlice] = {}
        self._served: dict[ServiceKey, Service] = {}
        self._groups: dict[ServiceKey, dict[str, EndpointSlice]] = {}  # by slice name

    def changes(self, snapshot: Snapshot) -> dict[ServiceKey, Inputs | None]:
        touched: set[ServiceKey] = set()
        services = snapshot.of(Service)
        if services is not self._services:
            gone, came = _diff(self._service_ids, services)
            for svc in gone:
                key = (svc.meta.namespace, svc.meta.name)
                if self._served.get(key) is svc:
                    del self._served[key]
                touched.add(key)
            for svc in came:
                key = (svc.meta.namespace, svc.meta.name)
                if served(svc):
                    self._served[key] = svc
                touched.add(key)
            self._services = services
        slices = snapshot.of(EndpointSlice)
        if slices is not self._slices:
            gone_s, came_s = _diff(self._slice_ids, slices)
            for sl in gone_s:
                owner = _slice_key(sl)
                group = self._groups.get(owner) if owner is not None else None
                if owner is not None and group is not None and group.get(sl.meta.name) is sl:
                    del group[sl.meta.name]
                    touched.add(owner)
            for sl in came_s:
                owner = _slice_key(sl)
                if owner is not None:
                    self._groups.setdefault(owner, {})[sl.meta.name] = sl
                    touched.add(owner)
            self._slices = slices
        return {key: self._inputs(key) for key in touched}

    def _inputs(self, key: ServiceKey) -> Inputs | None:
        svc = self._served.get(key)
        if svc is None:
            return None
        group = self._groups.get(key)
        if not group:
            self._groups.pop(key, None)
            return svc, ()
        return svc, tuple(group[name] for name in sorted(group))


def _diff(held: dict[int, R], now: tuple[R, ...]) -> tuple[list[R], list[R]]:
    """(objects gone, objects new) between ``held`` (by id) and ``now``, by identity;
    ``held`` is updated to ``now``. Set operations over ids, in C: with one change among
    10k objects the Python work is that one object's."""
    ids = set(map(id, now))
    gone = [held.pop(i) for i in held.keys() - ids]
    fresh = ids.difference(held.keys())
    came = list(itertools.compress(now, map(fresh.__contains__, map(id, now))))
    held.update(zip(map(id, came), came, strict=True))
    return gone, came


def _slice_key(sl: EndpointSlice) -> ServiceKey | None:
    name = sl.meta.labels.get(SERVICE_NAME_LABEL)
    return (sl.meta.namespace, name) if name else None


def service_inputs(snapshot: Snapshot) -> Iterator[tuple[Service, tuple[EndpointSlice, ...]]]:
    """Each service the proxy serves with its EndpointSlices (by the service-name label).
    One pass over the snapshot, few objects made: it runs on every agent pass."""
    # namespace -> service -> its slice, or a list when it has several: most services
    # have one slice per family, and few new containers means less work for the GC
    slices: dict[str, dict[str, EndpointSlice | list[EndpointSlice]]] = {}
    services: list[Service] = []
    for obj in snapshot.others:
        if isinstance(obj, EndpointSlice):
            name = obj.meta.labels.get(SERVICE_NAME_LABEL)
            if name:
                group = slices.setdefault(obj.meta.namespace, {})
                held = group.get(name)
                group[name] = obj if held is None else \
                    [*held, obj] if isinstance(held, list) else [held, obj]
        elif isinstance(obj, Service) and served(obj):
            services.append(obj)
    for svc in services:
        held = slices.get(svc.meta.namespace, {}).get(svc.meta.name)
        yield svc, () if held is None else (held,) if isinstance(held, EndpointSlice) \
            else tuple(held)


def service_views(svc: Service, slices: tuple[EndpointSlice, ...]) -> tuple[PortView, ...]:
    views: list[PortView] = []
    for version in sorted(set(svc.families())):
        family_slices = [s for s in slices if s.address_type == version]
        views += [_view(svc, port, version, family_slices) for port in svc.spec.ports]
    return tuple(views)


def _view(svc: Service, port: ServicePort, version: int,
          slices: Iterable[EndpointSlice]) -> PortView:
    spec = svc.spec
    external = [ip for ip in (*spec.external_ips, *svc.ingress) if ip.version == version]
    return PortView(
        namespace=svc.meta.namespace, service=svc.meta.name, port_name=port.name,
        version=version, protocol=port.protocol.lower(), port=port.port,
        cluster_ip=svc.cluster_ip(version), external_ips=tuple(sorted(set(external))),
        node_port=port.node_port if spec.has_node_ports else None,
        external_local=spec.external_traffic_policy == "Local",
        internal_local=spec.internal_traffic_policy == "Local",
        affinity_timeout=spec.affinity_timeout if spec.session_affinity == "ClientIP" else None,
        backends=backends(port, slices),
    )


def backends(port: ServicePort, slices: Iterable[EndpointSlice]) -> tuple[Backend, ...]:
    """Ready backends of ``port``; if none, the serving ones that are terminating."""
    ready: set[Backend] = set()
    draining: set[Backend] = set()
    for s in slices:
        target = next((p for p in s.ports if p.name == port.name
                       and p.protocol == port.protocol), None)
        if target is None:
            continue
        for ep in s.endpoints:
            if not ep.addresses:
                continue
            backend = Backend(ep.addresses[0], target.port, ep.node_name)
            if ep.ready and not ep.terminating:
                ready.add(backend)
            elif ep.serving and ep.terminating:
                draining.add(backend)
    return tuple(sorted(_one_per_address(ready or draining)))


def _one_per_address(items: set[Backend]) -> set[Backend]:
    """One backend per (address, port): two slices naming one pod count once."""
    seen: dict[tuple[IPAddress, int], Backend] = {}
    for b in sorted(items):
        seen.setdefault((b.address, b.port), b)
    return set(seen.values())
