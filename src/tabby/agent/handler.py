"""The agent's PodHandler: what CNI ADD, DEL, CHECK, STATUS and GC do on a node.

    ADD    IPAM assign (handle ``<network>.<container>.<ifname>``; the same
           handle gets the same addresses again) -> wire the veth pair ->
           write the WorkloadEndpoint -> PodResult
    DEL    delete the endpoint -> retire the veth pair (down, routes gone; deleted
           in the background) -> release the handle; each step tolerates
           "already gone", and CNI_NETNS may be empty
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
returns when the pod's routes and policy are in place (``Programmer``: a pass
that snapshots the cache after the endpoint went in, bounded by the agent's
policy setup timeout): the pod's first packet after ADD is already allowed by
its policy, or denied by it, never by the gap.

Wiring and the endpoint write happen under the agent's dataplane lock, the
same lock its reconcile pass holds, and the new endpoint goes straight into
the agent's cache: a pass never sees a wired pod without its endpoint (and
so never sweeps the pod's host routes as leftovers). Retiring a pair takes
the lock too (a pass never writes a route through a pair going down), after
the endpoint left the store and the cache; the store's part of a DEL runs
outside the lock, and with the datastore down a DEL still retires the pair once
the store gives up, then answers "try again later".

Deleting a veth makes the kernel wait for an RCU grace period (~15 ms idle,
much more busy): a DEL does not wait for it. ``PodWirer.retire`` takes the
pair out of service in one request and ``VethReaper`` (``reaper``, a thread
started by ``start``) deletes every retired pair in one request soon after; an
ADD that finds its own name retired deletes that pair first (``PodWirer.wire``).
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from tabby.agent.attachments import AttachmentLocks
from tabby.agent.cache import StoreCache
from tabby.agent.families import Families, first_choices, refuse_ipip, request_families
from tabby.calc.endpoints import Attachment, new_endpoint
from tabby.calc.ipip import ipip_pools_of
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
from tabby.dataplane.reaper import VethReaper
from tabby.errors import Conflict, NotFound
from tabby.ipam import IPAM
from tabby.marks import HOST_MAC
from tabby.model import (
    IPAMBlock,
    IPPool,
    Namespace,
    Node,
    Pod,
    WorkloadEndpoint,
    block_name,
    endpoint_name,
)
from tabby.snapshot import Snapshot
from tabby.store.client import Client, key_of

# AttachmentLocks, Families and request_families live in their own modules now; the
# names stay importable from here.
__all__ = ["AgentPodHandler", "AttachmentLocks", "Families", "Programmer",
           "request_families"]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_NETWORK = "k8s-pod-network"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Programmer(Protocol):
    """The agent's passes, as ADD waits for them (``tabby.agent.daemon.Agent``)."""

    def ticket(self) -> int:
        """Under the dataplane lock, after changing the cache: passes above it see it."""
        ...

    def programmed(self, ticket: int) -> bool:
        """A pass above ``ticket`` has completed (run here if need be); False on timeout."""
        ...


class AgentPodHandler:
    def __init__(self, *, node: str, client: Client, cache: StoreCache, wirer: PodWirer,
                 lock: threading.Lock, ready: Callable[[], bool], mtu: int = 1500,
                 programmer: Programmer | None = None,
                 reaper: VethReaper | None = None) -> None:
        self.node = node
        self.client = client
        self.ipam = IPAM(client, known_blocks=lambda: [
            b.spec.cidr for b in cache.snapshot().blocks])
        self.cache = cache
        self.wirer = wirer
        self.lock = lock
        self.ready = ready
        self.programmer = programmer  # runs (or joins) a pass: ADD returns programmed
        self.mtu = mtu
        self._networks = {DEFAULT_NETWORK}  # network names seen in ADDs (GC has none)
        self._networks_lock = threading.Lock()
        self.attachments = AttachmentLocks()
        self.reaper = reaper or VethReaper(wirer.reap)  # deletes what DEL retires

    def start(self) -> None:
        """Start deleting retired pairs in the background (an earlier agent's at once)."""
        self.reaper.start()

    def close(self) -> None:
        self.reaper.close()

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
            refuse_ipip(first_choices(pools, labels, self.node, fam))
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
            refuse_ipip(ipip_pools_of(pools, addresses))  # IPAM fell back to one
            with self.lock:
                wired = self.wirer.wire(wiring)
                endpoint = new_endpoint(Attachment(
                    node=self.node, namespace=namespace, pod=pod_name,
                    container_id=req.container_id, ifname=req.ifname,
                    host_veth=wired.host_veth, mac=wired.pod_mac,
                    networks=tuple(ipaddress.ip_network(a) for a in addresses)), pod, ns)
                stored = self._write_endpoint(endpoint, fresh)
                self.cache.put(stored)
                self._cache_new_blocks(snapshot, assignment.blocks)
                ticket = self.programmer.ticket() if self.programmer is not None else 0
        except BaseException:
            if fresh:  # leave nothing behind for an attachment that never existed
                self._teardown(req.container_id, req.ifname, (handle,), pod_name, namespace)
            raise
        if self.programmer is not None and not self.programmer.programmed(ticket):
            log.warning("pod %s/%s: not programmed within the policy setup timeout; it stays"
                        " fail-closed until the next pass", namespace, pod_name)
        return _result(wiring, wired.pod_mac, addresses)

    def _cache_new_blocks(self, snapshot: Snapshot,
                          blocks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
                          ) -> None:
        """A block this ADD claimed goes into the cache now, not when the watch brings it:
        the pass the ADD waits for then also hands it to BIRD, so other nodes route the
        pod's block ~70 ms sooner (the watch's poll and burst folding). Only new blocks:
        one read each, and most ADDs claim none."""
        held = snapshot.blocks  # sorted by name
        for cidr in set(blocks):
            name = block_name(cidr)
            at = bisect.bisect_left(held, name, key=lambda b: b.meta.name)
            if at < len(held) and held[at].meta.name == name:
                continue
            block = self.client.try_get(IPAMBlock, name)
            if block is not None:
                self.cache.put(block)

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
        """The endpoint first (passes forget the pod), then the pair is retired, then the
        addresses go. With the datastore down the pair is retired once the store gives
        up, and the error (Unavailable: CNI "try again later") makes the runtime retry."""
        try:
            for ep in self._endpoints_of(container_id, ifname, pod_name, namespace):
                self._delete_endpoint(ep)
        finally:
            self._retire(host_veth_name(container_id, ifname))
        for handle in handles:
            self.ipam.release_handle(handle)

    def _retire(self, host_veth: str) -> None:
        """Down and unrouted now, deleted by the reaper soon (not on the request's path)."""
        with self.lock:
            retired = self.wirer.retire(host_veth)
        if retired:
            self.reaper.kick()

    def _endpoints_of(self, container_id: str, ifname: str, pod_name: str, namespace: str
                      ) -> list[WorkloadEndpoint]:
        found = {key_of(e): e for e in self.cache.endpoints()
                 if e.spec.container_id == container_id and e.spec.endpoint == ifname}
        # Before the first sync the cache may not be loaded: ask the store by name too
        # (after it, what this agent wrote is in the cache: a store read less per DEL).
        if pod_name and not (found and self.ready()):
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
                    self.wirer.retire(name)
        self.reaper.flush()  # GC answers with them gone (one request for them all)

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


def _texts(addresses: tuple[IPAddress, ...]) -> str:
    return ", ".join(str(a) for a in addresses) or "nothing"
