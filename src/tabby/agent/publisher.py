"""The agent's writes to the store: what the node publishes about itself.

The pass (``NodeCalculator`` -> ``NodeApplier``) never writes to the store. What
the node has to tell the others goes through this controller, which the loop
runs on its own trigger (a relist, a watch event, the periodic full resync, a
retry after a failure), before the pass. Each write it makes goes into the
agent's cache at once, so the pass that follows sees it; nothing waits for the
watch to bring our own write back.

1. The Node and its BGP addresses, with an address source (``--ip``/``--ip6``
   other than none, ``tabby.agent.autodetect``): ``spec.bgp.ipv4Address`` and
   ``ipv6Address`` follow what the source says, asked afresh on every run (with
   a source the loop runs the publisher at least once per resync interval, so a
   change of the host's address gets written). On its first run the publisher
   creates the Node if it is missing (self-registration); a Node deleted later
   (its Kubernetes Node went, and the node controller with it) is not made again
   by this agent. A family the source cannot decide keeps its stored address and
   is reported as a problem (retried with backoff). Without a source the Node is
   left as stored (the lab seeds it, or an installer).
2. VTEPs, per family: if a VXLAN pool serves this node (``tunnel_pool``) and
   the Node does not carry a usable VTEP yet (none, its pool no longer asks for
   VXLAN, or, on a full run, IPAM no longer holds it for the node), take one
   address from IPAM (handle ``vxlan-tunnel-addr-<node>``, attributes ``node``
   and ``type: vxlanTunnelAddress``) and write address and MAC onto the Node; if
   no pool asks for VXLAN any more, release the address and clear the fields.
3. Endpoint labels: a local WorkloadEndpoint whose pod's or namespace's labels
   (or named ports) changed is rewritten (``calc.endpoints.endpoint_updates``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tabby.agent.autodetect import Detected
from tabby.agent.cache import StoreCache
from tabby.calc.endpoints import endpoint_updates, refreshed_endpoint
from tabby.calc.vxlan import TUNNEL_TYPE, pool_holding, tunnel_mac, tunnel_pool, vxlan_pools
from tabby.errors import Conflict, NotFound, TabbyError
from tabby.ipam import IPAM
from tabby.marks import tunnel_handle
from tabby.model import Namespace, Node, ObjectMeta, Pod, WorkloadEndpoint
from tabby.model.node import NodeBGP, NodeSpec
from tabby.snapshot import Snapshot
from tabby.store.client import Client

log = logging.getLogger(__name__)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class AddressSource(Protocol):
    """Where the node's BGP addresses come from (``autodetect.HostAddresses``)."""

    def detect(self) -> Detected: ...


@dataclass(slots=True)
class Published:
    vteps: int = 0  # Node writes (VTEP set, changed or cleared)
    endpoints: int = 0  # endpoints rewritten
    addresses: int = 0  # Node writes for its BGP addresses (created, or changed)
    problems: list[str] = field(default_factory=list)

    @property
    def wrote(self) -> bool:
        return bool(self.vteps or self.endpoints or self.addresses)


class NodePublisher:
    def __init__(self, node: str, client: Client, cache: StoreCache, *,
                 addresses: AddressSource | None = None) -> None:
        self.node = node
        self.client = client
        self.cache = cache
        self.ipam = IPAM(client)
        self.addresses = addresses
        self._registered = False  # the Node existed (or was made) on some run
        self._gone_noted = False

    @property
    def periodic(self) -> bool:
        """Whether runs are due with time, not only with store events (a host's address
        changes without the store hearing of it)."""
        return self.addresses is not None

    def run(self, snapshot: Snapshot, *, full: bool) -> Published:
        """Publish what ``snapshot`` calls for; store errors become problems."""
        out = Published()
        if self.addresses is not None:
            try:
                out.addresses = self._addresses(snapshot, self.addresses.detect(), out.problems)
            except TabbyError as exc:
                out.problems.append(f"node addresses: {exc}")
            if out.addresses:
                snapshot = self.cache.snapshot()  # the VTEP below needs the Node as written
        for version in (4, 6):
            try:
                out.vteps += self._vtep(snapshot, version, full)
            except TabbyError as exc:
                out.problems.append(f"VXLAN tunnel address (IPv{version}): {exc}")
        try:
            out.endpoints = self._endpoints(snapshot)
        except TabbyError as exc:
            out.problems.append(f"endpoint labels: {exc}")
        return out

    # -- the Node and its BGP addresses -------------------------------------------------
    def _addresses(self, snapshot: Snapshot, detected: Detected, problems: list[str]) -> int:
        problems.extend(f"node addresses: {p}" for p in detected.problems)
        want = detected.addresses
        local = snapshot.node(self.node)
        if local is None and self._registered:
            if not self._gone_noted:
                log.warning("Node %s is gone (deleted); not registering it again until the"
                            " agent restarts", self.node)
                self._gone_noted = True
            return 0
        if local is None:
            return self._register(want)
        self._registered = True
        if all(local.spec.bgp.ipv4_address == a if v == 4 else
               local.spec.bgp.ipv6_address == a for v, a in want.items()):
            return 0
        stored = self.client.mutate(Node, self.node, "", _readdressed(want))
        self.cache.put(stored)
        log.info("node addresses: %s (were %s)", _shown(stored.spec.bgp),
                 _shown(local.spec.bgp))
        return 1

    def _register(self, want: Mapping[int, IPInterface]) -> int:
        """Create the Node (self-registration); if it exists after all, update it."""
        node = _readdressed(want)(Node(meta=ObjectMeta(name=self.node), spec=NodeSpec()))
        try:
            stored = self.client.create(node)
        except Conflict:  # made meanwhile (an installer, the lab): the cache had not seen it
            stored = self.client.mutate(Node, self.node, "", _readdressed(want))
        self.cache.put(stored)
        self._registered = True
        log.info("registered Node %s: %s", self.node, _shown(stored.spec.bgp))
        return 1

    # -- the VTEP on the Node ----------------------------------------------------------
    def _vtep(self, snapshot: Snapshot, version: int, full: bool) -> int:
        local = snapshot.node(self.node)
        if local is None:
            return 0  # no Node object: nothing to publish on (routes have no address either)
        pool = tunnel_pool(snapshot, self.node, version)
        current = local.spec.vxlan.address(version)
        handle = tunnel_handle(self.node, version)
        if pool is None:
            if current is None and not local.spec.vxlan.mac_of(version):
                return 0
            self.ipam.release_handle(handle)
            self._write(version, None, "")
            log.info("vxlan: no pool asks for IPv%d VXLAN; released %s", version, current)
            return 1
        mac = tunnel_mac(self.node, version)
        if current is not None and self._keeps(snapshot, current, handle, full) \
                and local.spec.vxlan.mac_of(version) == mac:
            return 0
        held = self.ipam.addresses_of(handle)
        if any(pool_holding((pool,), a) is None for a in held):
            self.ipam.release_handle(handle)  # from a pool that no longer asks for VXLAN
        assignment = self.ipam.assign(
            handle, self.node, num_v4=int(version == 4), num_v6=int(version == 6),
            attrs={"node": self.node, "type": TUNNEL_TYPE[version]},
            pools_v4=(pool.meta.name,) if version == 4 else (),
            pools_v6=(pool.meta.name,) if version == 6 else ())
        address = assignment.addresses[0]
        self._write(version, address, mac)
        log.info("vxlan: IPv%d tunnel address %s (MAC %s) from IPPool/%s", version, address,
                 mac, pool.meta.name)
        return 1

    def _keeps(self, snapshot: Snapshot, current: IPAddress, handle: str, full: bool) -> bool:
        """The published VTEP still lies in a VXLAN pool (and, on a full run, IPAM still
        holds it for this node)."""
        if pool_holding(vxlan_pools(snapshot), current) is None:
            return False
        return not full or current in self.ipam.addresses_of(handle)

    def _write(self, version: int, address: IPAddress | None, mac: str) -> None:
        def change(node: Node) -> Node:
            vxlan = node.spec.vxlan.with_family(version, address, mac)
            return dataclasses.replace(node, spec=dataclasses.replace(node.spec, vxlan=vxlan))
        self.cache.put(self.client.mutate(Node, self.node, "", change))

    # -- endpoint labels -----------------------------------------------------------------
    def _endpoints(self, snapshot: Snapshot) -> int:
        """Rewrite endpoints whose pod or namespace labels changed; returns how many."""
        count = 0
        for want in endpoint_updates(snapshot, self.node):
            change = _refresher(snapshot.pod(want.meta.namespace, want.spec.pod),
                                snapshot.namespace(want.meta.namespace))
            try:
                stored = self.client.mutate(WorkloadEndpoint, want.meta.name,
                                            want.meta.namespace, change)
            except NotFound:
                continue  # deleted meanwhile
            self.cache.put(stored)
            count += 1
        return count


def _readdressed(want: Mapping[int, IPInterface]) -> Callable[[Node], Node]:
    def change(node: Node) -> Node:
        bgp = node.spec.bgp
        v4, v6 = want.get(4), want.get(6)
        bgp = dataclasses.replace(
            bgp, ipv4_address=v4 if isinstance(v4, ipaddress.IPv4Interface) else bgp.ipv4_address,
            ipv6_address=v6 if isinstance(v6, ipaddress.IPv6Interface) else bgp.ipv6_address)
        return dataclasses.replace(node, spec=dataclasses.replace(node.spec, bgp=bgp))
    return change


def _shown(bgp: NodeBGP) -> str:
    return f"IPv4 {bgp.ipv4_address or '-'}, IPv6 {bgp.ipv6_address or '-'}"


def _refresher(pod: Pod | None, ns: Namespace | None
               ) -> Callable[[WorkloadEndpoint], WorkloadEndpoint]:
    def change(current: WorkloadEndpoint) -> WorkloadEndpoint:
        return refreshed_endpoint(current, pod, ns)
    return change
