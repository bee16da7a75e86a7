"""VXLAN: which tunnel devices, FDB and neighbour entries and routes a node wants (pure).

Calico's design, tabby's names::

    node A  vxlan.tabby  VNI 4096, UDP 4789, local = A's fabric IPv4, nolearning,
                         MAC = A's vxlanTunnelMACAddr, VTEP = A's ipv4VXLANTunnelAddr/32,
                         MTU = host MTU - 50
            for every other node B that publishes a VTEP:
              fdb    B's VTEP MAC -> dst B's fabric address   (static, no multicast)
              neigh  B's VTEP address -> B's VTEP MAC          (permanent)
              route  <B's block> via <B's VTEP> dev vxlan.tabby onlink
    IPv6: vxlan-v6.tabby, VNI 6096, over the fabric's IPv6, MTU - 70.

A node wants a device of a family when an enabled pool of that family with
``vxlanMode`` Always or CrossSubnet selects it (``tunnel_pool``); its agent
then allocates the VTEP address from that pool (IPAM, attribute ``type``
``vxlanTunnelAddress`` / ``vxlanV6TunnelAddress``) and publishes address and
MAC on its Node. Until both are published, the device is not wanted yet.

Routes. Every remote destination (another node's block, or an address it
borrowed) lying in a pool whose ``vxlanMode`` is not Never is this module's,
not the plain or BGP source's (``TunnelRoutes.claimed``):

- Always, or CrossSubnet towards a node outside this node's subnet of the
  family (its ``spec.bgp`` address is not inside ours): via the remote VTEP,
  onlink, on the device. Without a local device or a published remote VTEP
  there is no route (it appears once the VTEPs are known).
- CrossSubnet towards a node in the same subnet: via its fabric address,
  like the plain source, unencapsulated.

So BIRD must not program destinations in VXLAN pools (``vxlan_pool_cidrs``);
the agent does, as Calico's Felix does.

nftables (``vxlan_nft_part``): the tunnel's own UDP packets between this node
and its peers carry no state worth tracking, so they skip conntrack
(``notrack`` in the raw hooks, only for the peers' fabric addresses: set
``vxlan-peers-v4`` / ``-v6``); the pods' packets inside are tracked as usual.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tabby.calc.route import Route, borrowed_addresses, live_blocks
from tabby.marks import VXLAN_DEVICES, tunnel_handle
from tabby.model import IPPool, Node
from tabby.nft.expr import Match, Notrack, Payload, SetRef, daddr, saddr
from tabby.nft.model import HookEntry, NftSet, Rule, Ruleset
from tabby.snapshot import Snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

DEVICES = VXLAN_DEVICES
VNI = {4: 4096, 6: 6096}
PORT = 4789
UDP_DPORT = Payload("udp", "dport")
OVERHEAD = {4: 50, 6: 70}  # outer IP + UDP + VXLAN + inner Ethernet header
TUNNEL_TYPE = {4: "vxlanTunnelAddress", 6: "vxlanV6TunnelAddress"}

__all__ = ["DEVICES", "OVERHEAD", "PORT", "TUNNEL_TYPE", "VNI", "Fdb", "Neighbour",
           "TunnelRoutes", "VxlanDevice", "desired_devices", "encapsulates", "has_device",
           "pod_mtu", "pool_holding", "same_subnet", "tunnel_handle", "tunnel_mac",
           "tunnel_pool", "tunnel_routes", "vxlan_nft_part", "vxlan_pool_cidrs", "vxlan_pools"]


@dataclass(frozen=True, slots=True)
class Fdb:
    """Frames for ``mac`` go to the node at ``dst`` (its fabric address)."""

    mac: str
    dst: IPAddress


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A remote VTEP address and its MAC (a permanent ARP/NDP entry)."""

    address: IPAddress
    mac: str


@dataclass(frozen=True, slots=True)
class VxlanDevice:
    name: str
    version: int
    vni: int
    port: int
    local: IPAddress  # this node's fabric address: the tunnel's source
    mac: str
    mtu: int
    address: IPInterface  # the VTEP, /32 or /128
    fdb: frozenset[Fdb] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()


@dataclass(frozen=True, slots=True)
class TunnelRoutes:
    routes: tuple[Route, ...]
    claimed: frozenset[IPNetwork]  # every destination this source decides, routed or not


# -- pools -------------------------------------------------------------------

def vxlan_pools(snapshot: Snapshot) -> tuple[IPPool, ...]:
    """Pools whose vxlanMode is Always or CrossSubnet (disabled ones too: their pods
    still need routes), lowest CIDR first."""
    return tuple(sorted((p for p in snapshot.of(IPPool) if p.spec.vxlan_mode != "Never"),
                        key=lambda p: (p.version, int(p.spec.cidr.network_address))))


def vxlan_pool_cidrs(snapshot: Snapshot) -> tuple[IPNetwork, ...]:
    """What the agent routes itself: BIRD must not program these into the kernel."""
    return tuple(p.spec.cidr for p in vxlan_pools(snapshot))


def pool_holding(pools: Iterable[IPPool], dst: IPNetwork | IPAddress) -> IPPool | None:
    net = ipaddress.ip_network(dst)
    for pool in pools:
        if pool.version == net.version and net.subnet_of(pool.spec.cidr):  # type: ignore[arg-type]
            return pool
    return None


def tunnel_pool(snapshot: Snapshot, node: str, version: int) -> IPPool | None:
    """The pool ``node`` takes its VTEP address of ``version`` from: the lowest enabled
    VXLAN pool of the family that selects the node and allows tunnels; None: no device."""
    obj = snapshot.node(node)
    labels = dict(obj.meta.labels) if obj is not None else {}
    for pool in vxlan_pools(snapshot):
        if pool.version == version and pool.usable_for("Tunnel") and pool.selects(labels):
            return pool
    return None


def tunnel_mac(node: str, version: int) -> str:
    """A stable, locally administered unicast MAC for the node's VTEP of ``version``."""
    digest = hashlib.sha256(f"tabby-vxlan/{version}/{node}".encode()).digest()
    first = (digest[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in (first, *digest[1:6]))


def pod_mtu(pools: Sequence[IPPool], addresses: Iterable[IPAddress], base: int) -> int:
    """``base`` less the largest encapsulation overhead among the pools of ``addresses``."""
    overhead = 0
    for address in addresses:
        pool = pool_holding(pools, address)
        if pool is not None and pool.spec.vxlan_mode != "Never":
            overhead = max(overhead, OVERHEAD[address.version])
    return base - overhead


# -- the subnet decision -----------------------------------------------------

def same_subnet(local: Node | None, remote: Node | None, version: int) -> bool:
    """True if ``remote``'s fabric address of ``version`` lies in ``local``'s subnet."""
    if local is None or remote is None:
        return False
    mine = local.spec.bgp.ipv4_address if version == 4 else local.spec.bgp.ipv6_address
    theirs = remote.address(version)
    return mine is not None and theirs is not None and theirs in mine.network


def encapsulates(mode: str, local: Node | None, remote: Node | None, version: int) -> bool:
    """Does traffic of a pool in ``mode`` from ``local`` to ``remote`` go through VXLAN?
    CrossSubnet does when the subnet is different or cannot be told."""
    if mode == "Always":
        return True
    if mode == "CrossSubnet":
        return not same_subnet(local, remote, version)
    return False


# -- devices -----------------------------------------------------------------

def desired_devices(snapshot: Snapshot, node: str, host_mtu: int) -> tuple[VxlanDevice, ...]:
    """The VXLAN devices ``node`` should have (none for a family without a pool that
    asks for one, or whose VTEP the agent has not published yet)."""
    local = snapshot.node(node)
    devices = []
    for version in (4, 6):
        if local is None or not has_device(snapshot, local, version):
            continue
        vtep, underlay = local.spec.vxlan.address(version), local.address(version)
        assert vtep is not None and underlay is not None  # has_device checked
        fdb, neighbours = _peers(snapshot, node, version)
        devices.append(VxlanDevice(
            name=DEVICES[version], version=version, vni=VNI[version], port=PORT, local=underlay,
            mac=local.spec.vxlan.mac_of(version), mtu=host_mtu - OVERHEAD[version],
            address=ipaddress.ip_interface(vtep), fdb=frozenset(fdb),
            neighbours=frozenset(neighbours)))
    return tuple(devices)


def has_device(snapshot: Snapshot, local: Node, version: int) -> bool:
    """A pool asks for a device of ``version`` and the node has published its VTEP."""
    return (tunnel_pool(snapshot, local.meta.name, version) is not None
            and _publishes(local, version))


def _publishes(node: Node, version: int) -> bool:
    """The node has a VTEP address, its MAC and a fabric address of ``version``."""
    return (node.spec.vxlan.address(version) is not None and bool(node.spec.vxlan.mac_of(version))
            and node.address(version) is not None)


def _peers(snapshot: Snapshot, node: str, version: int) -> tuple[list[Fdb], list[Neighbour]]:
    fdb, neighbours = [], []
    for other in snapshot.nodes:
        vtep, mac, underlay = (other.spec.vxlan.address(version),
                               other.spec.vxlan.mac_of(version), other.address(version))
        if other.meta.name == node or vtep is None or not mac or underlay is None:
            continue
        fdb.append(Fdb(mac, underlay))
        neighbours.append(Neighbour(vtep, mac))
    return fdb, neighbours


# -- routes ------------------------------------------------------------------

def tunnel_routes(snapshot: Snapshot, node: str) -> TunnelRoutes:
    """Routes to remote destinations in VXLAN pools, and every such destination."""
    pools = vxlan_pools(snapshot)
    if not pools:
        return TunnelRoutes((), frozenset())
    local = snapshot.node(node)
    devices = {v for v in (4, 6) if local is not None and has_device(snapshot, local, v)}
    nodes = {n.meta.name: n for n in snapshot.nodes}
    routes: list[Route] = []
    claimed: set[IPNetwork] = set()
    for dst, remote in _remote_destinations(snapshot, node):
        pool = pool_holding(pools, dst)
        if pool is None:
            continue
        claimed.add(dst)
        route = _route(dst, pool, local, nodes.get(remote), dst.version in devices)
        if route is not None:
            routes.append(route)
    return TunnelRoutes(tuple(routes), frozenset(claimed))


def _remote_destinations(snapshot: Snapshot, node: str) -> list[tuple[IPNetwork, str]]:
    out: list[tuple[IPNetwork, str]] = []
    for block in live_blocks(snapshot):
        if block.node is not None and block.node != node:
            out.append((block.spec.cidr, block.node))
        out += [(ipaddress.ip_network(address), holder)
                for address, holder in borrowed_addresses(block) if holder != node]
    return out


def _route(dst: IPNetwork, pool: IPPool, local: Node | None, remote: Node | None,
           have_device: bool) -> Route | None:
    version = dst.version
    if remote is None:
        return None
    if not encapsulates(pool.spec.vxlan_mode, local, remote, version):
        gateway = remote.address(version)
        if gateway is None or (local is not None and gateway == local.address(version)):
            return None
        return Route(dst, "unicast", gateway)
    vtep = remote.spec.vxlan.address(version)
    if not have_device or vtep is None or not _publishes(remote, version):
        return None
    return Route(dst, "unicast", vtep, DEVICES[version], onlink=True)


# -- nftables ----------------------------------------------------------------

def vxlan_nft_part(devices: Iterable[VxlanDevice]) -> Ruleset:
    """No conntrack for the tunnel packets between this node and its VXLAN peers
    (``devices``: the node's, from ``desired_devices``)."""
    sets, hooks = [], []
    for device in devices:
        peers = frozenset(str(e.dst) for e in device.fdb)
        if not peers:
            continue
        name = f"vxlan-peers-v{device.version}"
        sets.append(NftSet(name, "ipv4_addr" if device.version == 4 else "ipv6_addr", peers,
                           comment="VXLAN peers' fabric addresses"))
        comment = f"{device.name}: tunnel packets need no conntrack"
        hooks += [
            HookEntry("raw-prerouting", 50, Rule.of(
                Match(saddr(device.version), SetRef(name)), Match(UDP_DPORT, device.port),
                Notrack(), comment=comment)),
            HookEntry("raw-output", 50, Rule.of(
                Match(daddr(device.version), SetRef(name)), Match(UDP_DPORT, device.port),
                Notrack(), comment=comment))]
    return Ruleset.of(sets=sets, hooks=hooks)
