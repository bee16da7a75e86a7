"""The agent's PodHandler: what CNI ADD, DEL, CHECK, STATUS and GC do on a node.

    ADD    IPAM assign (handle ``<network>.<container>.<ifname>``; the same
           handle gets the same addresses again) -> wire the veth pair ->
           write the WorkloadEndpoint -> PodResult
    DEL    unwire -> delete the endpoint -> release the handle; each step
           tolerates "already gone", and CNI_NETNS may be empty
    CHECK  the handle still holds addresses (and prevResult's, if given) and
           the wiring is intact (``PodWirer.inspect``)
    STATUS ready once the agent's first full sync has completed
    GC     tear down endpoints, handles and veths of attachments the runtime
           no longer lists

Requests for one attachment (container id and interface) are served one at a
time (``AttachmentLocks``): a runtime that sends two ADDs for
one container at once gets the same addresses twice, never two sets, and a DEL
never interleaves with the ADD it undoes. Requests for different attachments
run side by side.

Fail closed: a pod's veth that no pass has programmed yet is unknown to the
nft table, which drops its traffic both ways (anti-spoofing, unknown ``tab*``
interfaces). So ADD, once the endpoint is written, runs (or joins) a pass and
returns when the pod's routes and policy are in place (``programmed``, bounded
by the agent's policy setup timeout): the pod's first packet after ADD is
already allowed by its policy, or denied by it, never by the gap.

Wiring and the endpoint write happen under the agent's dataplane lock, the
same lock its reconcile pass holds, and the new endpoint goes straight into
the agent's cache: a pass never sees a wired pod without its endpoint (and
so never sweeps the pod's host routes as leftovers). Unwiring takes the lock
too, but the store's part of a DEL runs outside it, so that with the
datastore down a DEL still unwires at once and answers "try again later"
once the store gives up, without holding up other requests or passes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabby.agent.cache import StoreCache
from tabby.calc.endpoints import Attachment, new_endpoint
from tabby.calc.ipip import ipip_pools_of, refusal
from tabby.calc.vxlan import pod_mtu
from tabby.cni import wire
from tabby.cni.protocol import CNIError, CNIRequest
from tabby.cni.results import Interface, IPConfig, PodResult
from tabby.cni.results import Route as CNIRoute
from tabby.dataplane.pods import (
    DEFAULT_V4,
    DEFAULT_V6,
    PodWirer,
    PodWiring,
    gateway_for,
    host_veth_name,
)
from tabby.dataplane.vxlan import ipip_supported
from tabby.errors import ConfigError, Conflict, NotFound, NoUsablePool
from tabby.ipam import IPAM
from tabby.ipam.pools import usable_pools, why_unusable
from tabby.marks import HOST_MAC
from tabby.model import IPPool, Namespace, Node, Pod, WorkloadEndpoint, endpoint_name
from tabby.snapshot import Snapshot
from tabby.store.client import Client, key_of

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_NETWORK = "k8s-pod-network"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class Families:
    """How many addresses of each family to ask for, from which pools."""

    v4: int
    v6: int
    pools_v4: tuple[str, ...] = ()
    pools_v6: tuple[str, ...] = ()


class AgentPodHandler:
    def __init__(self, *, node: str, client: Client, cache: StoreCache, wirer: PodWirer,
                 lock: threading.Lock, ready: Callable[[], bool], mtu: int = 1500,
                 programmed: Callable[[], bool] | None = None) -> None:
        self.node = node
        self.client = client
        self.ipam = IPAM(client, known_blocks=lambda: [
            b.spec.cidr for b in cache.snapshot().blocks])
        self.cache = cache
        self.wirer = wirer
        self.lock = lock
        self.ready = ready
        self.programmed = programmed  # runs (or joins) a pass: ADD returns programmed
        self.mtu = mtu
        self._networks = {DEFAULT_NETWORK}  # network names seen in ADDs (GC has none)
        self._networks_lock = threading.Lock()
        self.attachments = AttachmentLocks()

    # -- ADD -----------------------------------------------------------------
    def add(self, req: CNIRequest) -> PodResult:
        _require(req, "containerID", "netns", "ifname")
        with self.attachments.held(req.container_id, req.ifname):
            return self._add(req)

    def _add(self, req: CNIRequest) -> PodResult:
        namespace, pod_name = _pod_identity(req)
        with self._networks_lock:
            self._networks.add(req.network_name)
        handle = req.handle_id
        # This node, the pod and its namespace come from the agent's cache (one ADD
        # was ~21 round trips on Kubernetes); a pod created a moment ago may not be
        # cached yet: then it is read. The pools are read afresh, once, and handed
        # to IPAM: a pool deleted a moment ago must not hand out an address.
        snapshot = self.cache.snapshot()
        held = self.ipam.records.handle(handle)
        fresh = held is None or not held.spec.blocks
        pools = self.client.list(IPPool)
        labels = self._labels(snapshot)
        fam = request_families(req.config.get("ipam"), pools, labels, self.node)
        if fresh:  # refuse before taking an address when IPAM would pick an IPIP pool
            _refuse_ipip(_first_choices(pools, labels, self.node, fam))
        assignment = self.ipam.assign(
            handle, self.node, num_v4=fam.v4, num_v6=fam.v6,
            attrs={"namespace": namespace, "pod": pod_name, "node": self.node},
            pools_v4=fam.pools_v4, pools_v6=fam.pools_v6, pools=pools, labels=labels,
            handle=held)
        addresses = assignment.addresses
        wiring = self._wiring(req, addresses, pools)
        pod = snapshot.pod(namespace, pod_name) or self.client.try_get(Pod, pod_name, namespace)
        ns = snapshot.namespace(namespace) or self.client.try_get(Namespace, namespace)
        try:
            _refuse_ipip(ipip_pools_of(pools, addresses))  # IPAM fell back to one
            with self.lock:
                wired = self.wirer.wire(wiring)
                endpoint = new_endpoint(Attachment(
                    node=self.node, namespace=namespace, pod=pod_name,
                    container_id=req.container_id, ifname=req.ifname,
                    host_veth=wired.host_veth, mac=wired.pod_mac,
                    networks=tuple(ipaddress.ip_network(a) for a in addresses)), pod, ns)
                stored = self._write_endpoint(endpoint, fresh)
                self.cache.put(stored)
        except BaseException:
            if fresh:  # leave nothing behind for an attachment that never existed
                self._teardown(req.container_id, req.ifname, (handle,), pod_name, namespace)
            raise
        if self.programmed is not None and not self.programmed():
            log.warning("pod %s/%s: not programmed within the policy setup timeout; it stays"
                        " fail-closed until the next pass", namespace, pod_name)
        return _result(wiring, wired.pod_mac, addresses)

    def _labels(self, snapshot: Snapshot) -> dict[str, str]:
        node = snapshot.node(self.node) or self.client.try_get(Node, self.node)
        return dict(node.meta.labels) if node is not None else {}

    def _write_endpoint(self, endpoint: WorkloadEndpoint, fresh: bool) -> WorkloadEndpoint:
        """A new attachment's endpoint is created (one write); a repeated ADD's replaced."""
        if fresh:
            try:
                return self.client.create(endpoint)
            except Conflict:
                pass  # left by an earlier attempt: replace it
        return self.client.apply(endpoint)[0]

    def _wiring(self, req: CNIRequest, addresses: tuple[IPAddress, ...],
                pools: Sequence[IPPool] = ()) -> PodWiring:
        """The pod's interface; its MTU is the link MTU (the CNI config's, else --mtu)
        less the overhead of VXLAN when a pool of its addresses encapsulates."""
        mtu = req.config.get("mtu")
        base = mtu if isinstance(mtu, int) and not isinstance(mtu, bool) and mtu > 0 \
            else self.mtu
        return PodWiring(
            host_veth=host_veth_name(req.container_id, req.ifname), netns=req.netns,
            ifname=req.ifname, addresses=tuple(ipaddress.ip_interface(a) for a in addresses),
            mtu=pod_mtu(pools, addresses, base))

    # -- DEL -----------------------------------------------------------------
    def delete(self, req: CNIRequest) -> None:
        _require(req, "containerID", "ifname")
        namespace, pod_name = _pod_identity(req, strict=False)
        with self.attachments.held(req.container_id, req.ifname):
            self._teardown(req.container_id, req.ifname, (req.handle_id,), pod_name, namespace)

    def _teardown(self, container_id: str, ifname: str, handles: Iterable[str], pod_name: str,
                  namespace: str) -> None:
        """Unwire first (local, never waits on the store), then the store's part: with the
        datastore down the pod's veth and host route are gone at once and the error
        (Unavailable: CNI "try again later") makes the runtime retry the DEL."""
        with self.lock:
            self.wirer.unwire(host_veth_name(container_id, ifname))
        # Outside the lock: a pass meanwhile sees an endpoint without its veth, and a
        # route to a missing device is left unresolved, not swept or an error.
        for ep in self._endpoints_of(container_id, ifname, pod_name, namespace):
            self._delete_endpoint(ep)
        for handle in handles:
            self.ipam.release_handle(handle)

    def _endpoints_of(self, container_id: str, ifname: str, pod_name: str, namespace: str
                      ) -> list[WorkloadEndpoint]:
        found = {key_of(e): e for e in self.cache.endpoints()
                 if e.spec.container_id == container_id and e.spec.endpoint == ifname}
        if pod_name:  # the cache may not be loaded yet: ask the store by name too
            ep = self.client.try_get(WorkloadEndpoint,
                                     endpoint_name(self.node, pod_name, ifname), namespace)
            if ep is not None and ep.spec.container_id == container_id:
                found[key_of(ep)] = ep
        return list(found.values())

    def _delete_endpoint(self, ep: WorkloadEndpoint) -> None:
        for _ in range(10):
            try:
                gone = self.client.delete(WorkloadEndpoint, ep.meta.name, ep.meta.namespace,
                                          resource_version=ep.meta.resource_version)
            except NotFound:
                return
            except Conflict:  # relabelled meanwhile: still ours?
                current = self.client.try_get(WorkloadEndpoint, ep.meta.name, ep.meta.namespace)
                if current is None or current.spec.container_id != ep.spec.container_id:
                    return
                ep = current
                continue
            self.cache.remove(key_of(ep), int(gone.meta.resource_version or 0))
            return
        raise Conflict(f"{ep.ref}: kept changing while deleting it; try again")

    # -- CHECK ---------------------------------------------------------------
    def check(self, req: CNIRequest) -> None:
        _require(req, "containerID", "netns", "ifname")
        addresses = self.ipam.addresses_of(req.handle_id)
        if not addresses:
            raise CNIError(wire.ERR_UNKNOWN_CONTAINER, "no addresses are held for this container",
                           f"IPAM handle {req.handle_id} is empty")
        prev = req.prev_pod_result()
        if prev is not None and set(prev.addresses()) != set(addresses):
            raise CNIError(wire.ERR_INTERNAL, "addresses differ from prevResult",
                           f"IPAM holds {_texts(addresses)}, prevResult has"
                           f" {_texts(prev.addresses())}")
        problems = self.wirer.inspect(self._wiring(req, addresses))
        if problems:
            raise CNIError(wire.ERR_INTERNAL, "pod wiring is incomplete", "; ".join(problems))

    # -- STATUS, GC ----------------------------------------------------------
    def status(self) -> None:
        if not self.ready():
            raise CNIError(wire.ERR_NOT_AVAILABLE, "the tabby agent is not ready",
                           "waiting for its first full sync with the datastore")

    def gc(self, valid: list[tuple[str, str]]) -> None:
        keep = set(valid)
        for ep in self.cache.endpoints():
            key = (ep.spec.container_id, ep.spec.endpoint)
            if key not in keep:
                log.info("GC: tearing down %s (container %s)", ep.ref, ep.spec.container_id)
                handles = [f"{net}.{key[0]}.{key[1]}" for net in self._known_networks()]
                self._teardown(*key, handles, ep.spec.pod, ep.meta.namespace)
        self._gc_handles(keep)
        kept_veths = {host_veth_name(cid, ifname) for cid, ifname in keep}
        with self.lock:
            for name in self.wirer.host_veths():
                if name not in kept_veths:
                    log.info("GC: deleting orphaned veth %s", name)
                    self.wirer.unwire(name)

    def _known_networks(self) -> list[str]:
        with self._networks_lock:
            return sorted(self._networks)

    def _gc_handles(self, keep: set[tuple[str, str]]) -> None:
        for network in self._known_networks():
            wanted = {f"{network}.{cid}.{ifname}" for cid, ifname in keep}
            for handle in self.ipam.handles(prefix=f"{network}."):
                if handle in wanted or self.ipam.attributes_of(handle).get("node") != self.node:
                    continue
                log.info("GC: releasing IPAM handle %s", handle)
                self.ipam.release_handle(handle)


def request_families(ipam: Any, pools: Sequence[IPPool], labels: Mapping[str, str],
                     node: str) -> Families:
    """Calico's ``ipam`` keys (assign_ipv4/6, ipv4_pools/ipv6_pools) if given, else one
    address of each family some pool serves on this node; NoUsablePool if none."""
    if isinstance(ipam, Mapping) and ("assign_ipv4" in ipam or "assign_ipv6" in ipam):
        return Families(int(_truthy(ipam.get("assign_ipv4", True))),
                        int(_truthy(ipam.get("assign_ipv6", False))),
                        _names(ipam.get("ipv4_pools")), _names(ipam.get("ipv6_pools")))
    p4 = _names(ipam.get("ipv4_pools")) if isinstance(ipam, Mapping) else ()
    p6 = _names(ipam.get("ipv6_pools")) if isinstance(ipam, Mapping) else ()
    served = {p.version for p in pools if why_unusable(p, labels) is None}
    fam = Families(int(4 in served or bool(p4)), int(6 in served or bool(p6)), p4, p6)
    if not fam.v4 and not fam.v6:
        raise NoUsablePool(f"no enabled IPPool serves workloads on node {node!r};"
                           " create one (tabby apply -f)")
    return fam


def _refuse_ipip(asking: Sequence[IPPool]) -> None:
    """ConfigError if pools asking for IPIP would serve the pod on a kernel without IPIP."""
    if asking and not ipip_supported():
        raise ConfigError("; ".join(refusal(p) for p in asking))


def _first_choices(pools: Sequence[IPPool], labels: Mapping[str, str], node: str,
                   fam: Families) -> list[IPPool]:
    """The pools IPAM tries first for each family asked, if they ask for IPIP."""
    out = []
    for version, count, requested in ((4, fam.v4, fam.pools_v4), (6, fam.v6, fam.pools_v6)):
        try:
            first = usable_pools(pools, version, node, labels, requested)[0] if count else None
        except NoUsablePool:
            continue  # IPAM says so itself
        if first is not None and first.spec.ipip_mode != "Never":
            out.append(first)
    return out


def _result(w: PodWiring, pod_mac: str, addresses: tuple[IPAddress, ...]) -> PodResult:
    ips = tuple(IPConfig(ipaddress.ip_interface(a), gateway_for(a.version), 1)
                for a in addresses)
    versions = {a.version for a in addresses}
    routes = tuple(CNIRoute(dst, gateway_for(dst.version))
                   for dst in (DEFAULT_V4, DEFAULT_V6) if dst.version in versions)
    return PodResult(
        interfaces=(Interface(w.host_veth, HOST_MAC), Interface(w.ifname, pod_mac, w.netns, w.mtu)),
        ips=ips, routes=routes)


def _pod_identity(req: CNIRequest, strict: bool = True) -> tuple[str, str]:
    """(namespace, pod) from CNI_ARGS; without them (a bare CNI run) ``default``
    and a name derived from the container id."""
    namespace = req.pod_namespace or "default"
    pod = req.pod_name or ("cni-" + re.sub(r"[^a-z0-9-]", "-", req.container_id.lower())[:40]
                           ).strip("-")
    if strict:
        for what, value in (("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", pod)):
            if len(value) > 253 or not _NAME.match(value):
                raise CNIError(wire.ERR_INVALID_ENVIRONMENT, f"{what}={value!r} is not a valid"
                               " Kubernetes name")
    return namespace, pod


def _require(req: CNIRequest, *fields: str) -> None:
    values = {"containerID": req.container_id, "netns": req.netns, "ifname": req.ifname}
    missing = [f for f in fields if not values[f]]
    if missing:
        raise CNIError(wire.ERR_INVALID_ENVIRONMENT, f"{req.command} needs {', '.join(missing)}")


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes"))


def _names(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _texts(addresses: tuple[IPAddress, ...]) -> str:
    return ", ".join(str(a) for a in addresses) or "nothing"


class AttachmentLocks:
    """One lock per attachment (container id, interface) while requests for it are in
    flight; the entry goes with the last of them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def held(self, container_id: str, ifname: str) -> Iterator[None]:
        key = (container_id, ifname)
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)
