"""Services in a lab: the API server's allocations and the endpoints controller.

    apply_service(lab, client, svc)          allocate (clusterIPs, nodePorts, LB IPs)
                                             and store; its slices follow at once
    delete_service(lab, client, ns, name)    the object, then its slices
    sync(lab_name, client, leaving=())       every managed EndpointSlice made to match
                                             the Services and Pods in the store

``tabby apply`` / ``tabby delete`` of a Service call the first two when a lab is
up; the lab's pod driver calls ``sync`` after a pod is wired (Running: its
listener answers) or relabelled, and before and after one is deleted (the
leaving pod's endpoint goes first, so agents stop sending it traffic while it
still answers). Syncs run under a lock file in the lab's directory, one at a
time, each reading the store afresh, so the last one to run is never stale.

Addresses: ClusterIPs from ``CLUSTER_RANGES`` (carved from the services block
198.18.128.0/17 and fd7a:bb1e:2::/112), LoadBalancer IPs from IPPools with
``allowedUses: [LoadBalancer]``; the lab creates ``LB_POOLS`` the first time it
syncs if no such pool exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterable, Iterator

from tabby.errors import NotFound, ValidationError
from tabby.lab.state import LabState, lab_dir, require
from tabby.model import EndpointSlice, IPPool, ObjectMeta, Pod, Service
from tabby.model.ippool import IPPoolSpec
from tabby.model.service import MANAGED_BY_LABEL
from tabby.services.controller import (
    MANAGER,
    Ranges,
    allocate,
    carry_over,
    desired_slices,
    needs_allocation,
)
from tabby.store.client import Client

CLUSTER_RANGES = {4: ipaddress.ip_network("198.18.128.0/20"),
                  6: ipaddress.ip_network("fd7a:bb1e:2::/112")}
LB_POOLS = {4: ("loadbalancer-ipv4", ipaddress.ip_network("198.18.144.0/24")),
            6: ("loadbalancer-ipv6", ipaddress.ip_network("fd7a:bb1e:3::/120"))}


def ranges(state: LabState) -> Ranges:
    return Ranges({v: CLUSTER_RANGES[v] for v in state.topology.families})


def apply_service(lab: LabState, client: Client, svc: Service) -> str:
    with _locked(lab.name):
        pools = _lb_pools(client, lab)
        old = client.try_get(Service, svc.meta.name, svc.meta.namespace)
        others = client.list(Service)
        wanted = allocate(carry_over(svc, old), others, ranges(lab), pools)
        verb = client.apply(wanted)[1]
        _sync_locked(lab, client, set())
    return verb


def delete_service(lab: LabState, client: Client, namespace: str, name: str) -> None:
    """NotFound if there is no such service."""
    with _locked(lab.name):
        client.delete(Service, name, namespace)
        _sync_locked(lab, client, set())


def sync(lab: str, client: Client, leaving: Iterable[tuple[str, str]] = ()) -> None:
    """Make every managed slice match the store; pods in ``leaving`` (namespace, name)
    count as gone already."""
    state = require(lab)
    with _locked(lab):
        _sync_locked(state, client, set(leaving))


def _sync_locked(lab: LabState, client: Client, leaving: set[tuple[str, str]]) -> None:
    services = client.list(Service)
    pending = [s for s in services if needs_allocation(s)]
    if pending:
        pools = _lb_pools(client, lab)
        for svc in pending:
            with contextlib.suppress(NotFound):
                services = _allocated(client, svc, services, lab, pools)
    pods = [p for p in client.list(Pod) if (p.meta.namespace, p.meta.name) not in leaving]
    by_ns: dict[str, list[Pod]] = {}
    for pod in pods:
        by_ns.setdefault(pod.meta.namespace, []).append(pod)
    wanted: dict[tuple[str, str], EndpointSlice] = {}
    for svc in services:
        for s in desired_slices(svc, by_ns.get(svc.meta.namespace, ())):
            wanted[(s.meta.namespace, s.meta.name)] = s
    for s in wanted.values():
        client.apply(s)
    for s in client.list(EndpointSlice):
        key = (s.meta.namespace, s.meta.name)
        if s.meta.labels.get(MANAGED_BY_LABEL) == MANAGER and key not in wanted:
            with contextlib.suppress(NotFound):
                client.delete(EndpointSlice, s.meta.name, s.meta.namespace)


def _allocated(client: Client, svc: Service, services: list[Service], lab: LabState,
               pools: list[IPPool]) -> list[Service]:
    """Allocate for a service written without the lab (or pending an LB IP)."""
    try:
        done = allocate(svc, services, ranges(lab), pools)
    except ValidationError:  # one that cannot be served stays as it is (apply said why)
        return services
    if done == svc:
        return services
    stored = client.mutate(Service, svc.meta.name, svc.meta.namespace,
                           lambda now: done.with_meta(resource_version=now.meta.resource_version))
    return [stored if (s.meta.namespace, s.meta.name) == (svc.meta.namespace, svc.meta.name)
            else s for s in services]


def _lb_pools(client: Client, lab: LabState) -> list[IPPool]:
    pools = client.list(IPPool)
    usable = [p for p in pools if p.usable_for("LoadBalancer")]
    have = {p.version for p in usable}
    for version in lab.topology.families:
        if version in have:
            continue
        name, cidr = LB_POOLS[version]
        spec = IPPoolSpec(cidr=cidr, block_size=26 if version == 4 else 122,
                          allowed_uses=("LoadBalancer",))
        usable.append(client.apply(IPPool(ObjectMeta(name), spec))[0])
    return usable


@contextlib.contextmanager
def _locked(lab: str) -> Iterator[None]:
    fd = os.open(lab_dir(lab) / "services.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
