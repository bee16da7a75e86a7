"""The agent's encapsulation controller: VTEPs in the store, VXLAN devices in the kernel.

Each pass, for each family:

1. publish: if a VXLAN pool serves this node (``tunnel_pool``) and the Node
   does not carry a usable VTEP yet (none, its pool no longer asks for
   VXLAN, or, on a full pass, IPAM no longer holds it for the node), take
   one address from IPAM (handle ``vxlan-tunnel-addr-<node>``, attributes
   ``node`` and ``type: vxlanTunnelAddress``) and write address and MAC onto
   the Node; if no pool asks for VXLAN any more, release the address and
   clear the fields. The watch brings the new Node back, and the next pass
   builds the device.
2. apply: ``desired_devices`` -> ``VxlanReconciler``.
3. IPIP: if a pool serving this node asks for IPIP and the kernel cannot make
   IPIP links, say so once in the log and keep it in ``health_notes()``
   (``/healthz`` shows it); CNI ADD refuses pods from such pools.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

from tabby.calc.ipip import ipip_pools, refusal
from tabby.calc.vxlan import (
    TUNNEL_TYPE,
    desired_devices,
    pool_holding,
    tunnel_handle,
    tunnel_mac,
    tunnel_pool,
    vxlan_pools,
)
from tabby.dataplane.netlink import CallCounts
from tabby.dataplane.vxlan import VxlanReconciler, ipip_supported
from tabby.errors import TabbyError
from tabby.ipam import IPAM
from tabby.model import Node
from tabby.snapshot import Snapshot
from tabby.store.client import Client

log = logging.getLogger(__name__)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class VxlanController:
    name = "vxlan"

    def __init__(self, node: str, client: Client, counts: CallCounts, mtu: int,
                 reconciler: VxlanReconciler | None = None) -> None:
        self.node = node
        self.client = client
        self.ipam = IPAM(client)
        self.mtu = mtu
        self.reconciler = reconciler or VxlanReconciler(counts)
        self._notes: tuple[str, ...] = ()

    def sync(self, snapshot: Snapshot, *, full: bool) -> list[str]:
        problems: list[str] = []
        for version in (4, 6):
            try:
                self._publish(snapshot, version, full)
            except TabbyError as exc:
                problems.append(f"VXLAN tunnel address (IPv{version}): {exc}")
        result = self.reconciler.apply(desired_devices(snapshot, self.node, self.mtu), full=full)
        for change in result.changes:
            log.info("vxlan: %s", change)
        self._check_ipip(snapshot)
        return problems + result.errors

    def health_notes(self) -> tuple[str, ...]:
        """Problems that do not stop the node but leave some pods out (for /healthz)."""
        return self._notes

    def close(self) -> None:
        pass

    # -- the VTEP in the store -----------------------------------------------------
    def _publish(self, snapshot: Snapshot, version: int, full: bool) -> None:
        local = snapshot.node(self.node)
        if local is None:
            return  # no Node object: nothing to publish on (routes have no address either)
        pool = tunnel_pool(snapshot, self.node, version)
        current = local.spec.vxlan.address(version)
        handle = tunnel_handle(self.node, version)
        if pool is None:
            if current is not None or local.spec.vxlan.mac_of(version):
                self.ipam.release_handle(handle)
                self._write(version, None, "")
                log.info("vxlan: no pool asks for IPv%d VXLAN; released %s", version, current)
            return
        mac = tunnel_mac(self.node, version)
        if current is not None and self._keeps(snapshot, current, handle, full) \
                and local.spec.vxlan.mac_of(version) == mac:
            return
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

    def _keeps(self, snapshot: Snapshot, current: IPAddress, handle: str, full: bool) -> bool:
        """The published VTEP still lies in a VXLAN pool (and, on a full pass, IPAM still
        holds it for this node)."""
        if pool_holding(vxlan_pools(snapshot), current) is None:
            return False
        return not full or current in self.ipam.addresses_of(handle)

    def _write(self, version: int, address: IPAddress | None, mac: str) -> None:
        def change(node: Node) -> Node:
            vxlan = node.spec.vxlan.with_family(version, address, mac)
            return dataclasses.replace(node, spec=dataclasses.replace(node.spec, vxlan=vxlan))
        self.client.mutate(Node, self.node, "", change)

    # -- IPIP ----------------------------------------------------------------------
    def _check_ipip(self, snapshot: Snapshot) -> None:
        pools = ipip_pools(snapshot, self.node)
        notes = tuple(refusal(p) for p in pools) if pools and not ipip_supported() else ()
        for note in notes:
            if note not in self._notes:
                log.error("%s", note)
        self._notes = notes
