"""The agent's writes to the store: what the node publishes about itself.

The pass (``NodeCalculator`` -> ``NodeApplier``) never writes to the store. What
the node has to tell the others goes through this controller, which the loop
runs on its own trigger (a relist, a watch event, the periodic full resync, a
retry after a failure), before the pass. Each write it makes goes into the
agent's cache at once, so the pass that follows sees it; nothing waits for the
watch to bring our own write back.

1. VTEPs, per family: if a VXLAN pool serves this node (``tunnel_pool``) and
   the Node does not carry a usable VTEP yet (none, its pool no longer asks for
   VXLAN, or, on a full run, IPAM no longer holds it for the node), take one
   address from IPAM (handle ``vxlan-tunnel-addr-<node>``, attributes ``node``
   and ``type: vxlanTunnelAddress``) and write address and MAC onto the Node; if
   no pool asks for VXLAN any more, release the address and clear the fields.
2. Endpoint labels: a local WorkloadEndpoint whose pod's or namespace's labels
   (or named ports) changed is rewritten (``calc.endpoints.endpoint_updates``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from tabby.agent.cache import StoreCache
from tabby.calc.endpoints import endpoint_updates, refreshed_endpoint
from tabby.calc.vxlan import TUNNEL_TYPE, pool_holding, tunnel_mac, tunnel_pool, vxlan_pools
from tabby.errors import NotFound, TabbyError
from tabby.ipam import IPAM
from tabby.marks import tunnel_handle
from tabby.model import Namespace, Node, Pod, WorkloadEndpoint
from tabby.snapshot import Snapshot
from tabby.store.client import Client

log = logging.getLogger(__name__)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(slots=True)
class Published:
    vteps: int = 0  # Node writes (VTEP set, changed or cleared)
    endpoints: int = 0  # endpoints rewritten
    problems: list[str] = field(default_factory=list)

    @property
    def wrote(self) -> bool:
        return bool(self.vteps or self.endpoints)


class NodePublisher:
    def __init__(self, node: str, client: Client, cache: StoreCache) -> None:
        self.node = node
        self.client = client
        self.cache = cache
        self.ipam = IPAM(client)

    def run(self, snapshot: Snapshot, *, full: bool) -> Published:
        """Publish what ``snapshot`` calls for; store errors become problems."""
        out = Published()
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


def _refresher(pod: Pod | None, ns: Namespace | None
               ) -> Callable[[WorkloadEndpoint], WorkloadEndpoint]:
    def change(current: WorkloadEndpoint) -> WorkloadEndpoint:
        return refreshed_endpoint(current, pod, ns)
    return change
