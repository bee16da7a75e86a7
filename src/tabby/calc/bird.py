"""What BIRD should do on one node: a pure function of a Snapshot.

    desired_bird(snapshot, node) -> BirdConfig      (tabby.bgp.config renders it)

Settings merge ``BGPConfiguration/node.<name>`` over ``default`` over the
built-in defaults (AS 64512, node-to-node mesh on, port 179, Info); a Node's
own ``spec.bgp.asNumber`` beats the cluster's AS.

Origins (what the node exports, all blackhole-backed statics in BIRD):

- a blackhole-backed aggregate per block affine to the node;
- a /32 or /128 per address this node holds from another node's block
  (borrowed), so the owner's aggregate does not swallow it;
- the service ranges of ``default`` (cluster, external and load-balancer IPs),
  from every node; and a /32 or /128 per address of an externalTrafficPolicy
  Local service this node has an endpoint of (``tabby.services.bgp``);
- none of the first two in a pool with ``disableBGPExport``.

The kernel gets only routes BIRD learned over BGP within an IP pool whose
``vxlanMode`` is Never (the agent owns VXLAN pools' routes, local blocks'
blackholes and pods' routes: one owner per destination).

Peers, in order of precedence (one session per address and port; a later
duplicate is left out with a note):

1. BGPPeers naming this node (``node`` or a matching ``nodeSelector``),
2. global BGPPeers (neither),
3. the node-to-node mesh (every other node), unless ``nodeToNodeMeshEnabled``
   is false.

A ``peerSelector`` peers with the selected nodes at their ``spec.bgp``
addresses and AS numbers, both ways (as Calico does): a selected node peers
with every node the BGPPeer applies to. When this node has a ``routeReflectorClusterID``,
selected nodes outside its cluster are its route-reflector clients. Missing
data has a defined answer: no Node object means no BGP at all; a family the
node has no address of gets no sessions; a password whose Secret or key is
missing keeps the session configured but disabled.

BGPFilters (a BGPPeer's ``filters``, in order) apply to that BGPPeer's sessions
only, never to the mesh (as in Calico); a name with no BGPFilter is skipped
with a note. BFD: a BGPPeer's ``bfd`` on its sessions, ``nodeToNodeMeshBFD``
on the mesh's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from tabby import selector
from tabby.calc.route import borrowed_addresses, live_blocks
from tabby.model import BGPConfiguration, BGPFilter, BGPPeer, IPPool, Node, Secret
from tabby.model.bgpconfiguration import DEFAULT_AS, DEFAULT_NAME, DEFAULT_PORT, NODE_PREFIX
from tabby.model.bgpfields import BFD, SECRET_NAMESPACE, Community, Password, password_problem
from tabby.services.bgp import local_service_routes
from tabby.snapshot import Snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

MESH = "node-to-node mesh"
GLOBAL = "global"
NODE_SPECIFIC = "node specific"
RR_CLIENT = "route reflector client"
PEER_TYPES = (MESH, GLOBAL, NODE_SPECIFIC, RR_CLIENT)
_PREFIX = {MESH: "Mesh", GLOBAL: "Global", NODE_SPECIFIC: "Node"}

__all__ = ["GLOBAL", "MESH", "NODE_SPECIFIC", "PEER_TYPES", "RR_CLIENT", "BirdConfig",
           "Origin", "Peer", "Settings", "desired_bird", "settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """The merged BGPConfiguration for one node."""

    as_number: int = DEFAULT_AS
    mesh: bool = True
    listen_port: int = DEFAULT_PORT
    log_severity: str = "Info"
    services: tuple[tuple[IPNetwork, str], ...] = ()  # (cidr, which service range)
    advertisements: tuple[tuple[IPNetwork, tuple[Community, ...]], ...] = ()
    mesh_password: Password | None = None
    mesh_restart_time: int | None = None
    mesh_bfd: BFD | None = None


@dataclass(frozen=True, slots=True)
class Origin:
    """A route this node originates (a blackhole static in BIRD, exported to peers)."""

    net: IPNetwork
    why: str
    communities: tuple[Community, ...] = ()


@dataclass(frozen=True, slots=True)
class Peer:
    """One BGP session (one BIRD ``protocol bgp``)."""

    name: str  # the BIRD protocol name, e.g. Mesh_198_18_0_12
    type: str  # one of PEER_TYPES
    address: IPAddress
    as_number: int
    source: str  # the BGPPeer (``BGPPeer/x``) or ``mesh`` it comes from
    port: int | None = None
    local_address: IPAddress | None = None  # None: BIRD picks (sourceAddress None)
    direct: bool = True  # in a subnet of the node; else multihop
    rr_client: bool = False
    password: str = ""
    keep_next_hop: bool = False
    restart_time: int | None = None
    allow_local_as: int = 0
    disabled: str = ""  # why the session is kept down; "" when it runs
    filters: tuple[str, ...] = ()  # BGPFilter names, in order (all in BirdConfig.filters)
    bfd: BFD | None = None  # enabled BFD settings, None for no BFD

    @property
    def version(self) -> int:
        return self.address.version


@dataclass(frozen=True, slots=True)
class BirdConfig:
    node: str
    router_id: ipaddress.IPv4Address
    as_number: int
    listen_port: int
    log_severity: str
    families: tuple[int, ...]  # those the node has a BGP address of
    cluster_id: ipaddress.IPv4Address | None  # set when this node reflects routes
    origins: tuple[Origin, ...]
    kernel_pools: tuple[IPNetwork, ...]  # BGP routes within these go into the kernel
    peers: tuple[Peer, ...]
    notes: tuple[str, ...] = ()  # what was left out, and why
    filters: tuple[BGPFilter, ...] = ()  # those the peers name, by name


def desired_bird(snapshot: Snapshot, node: str) -> BirdConfig:
    s = settings(snapshot, node)
    me = snapshot.node(node)
    if me is None:
        return BirdConfig(node, router_id(None, node), s.as_number, s.listen_port,
                          s.log_severity, (), None, (), (), (),
                          (f"no Node object named {node}: no BGP sessions, nothing exported",))
    families = tuple(v for v in (4, 6) if me.address(v) is not None)
    rr = me.spec.bgp.route_reflector_cluster_id
    notes: list[str] = []
    peers, filters = _with_filters(snapshot, _peers(snapshot, me, s, families, notes), notes)
    return BirdConfig(
        node=node, router_id=router_id(me, node), as_number=node_as(me, s),
        listen_port=s.listen_port, log_severity=s.log_severity, families=families,
        cluster_id=ipaddress.IPv4Address(rr) if rr else None,
        origins=_origins(snapshot, node, s, families),
        kernel_pools=tuple(p.spec.cidr for p in _pools(snapshot)
                           if p.spec.vxlan_mode == "Never" and p.version in families),
        peers=peers, notes=tuple(notes), filters=filters)


# -- settings -----------------------------------------------------------------

def settings(snapshot: Snapshot, node: str) -> Settings:
    configs = {c.meta.name: c.spec for c in snapshot.of(BGPConfiguration)}
    default = configs.get(DEFAULT_NAME)
    mine = configs.get(NODE_PREFIX + node)
    out = Settings()
    if default is not None:
        out = dataclasses.replace(
            out, as_number=_pick(default.as_number, out.as_number),
            mesh=_pick(default.node_to_node_mesh, out.mesh),
            services=(*((n, "service cluster IPs") for n in default.service_cluster_ips),
                      *((n, "service external IPs") for n in default.service_external_ips),
                      *((n, "service load-balancer IPs")
                        for n in default.service_load_balancer_ips)),
            mesh_password=default.node_mesh_password,
            mesh_restart_time=default.node_mesh_max_restart_time,
            mesh_bfd=_enabled(default.node_mesh_bfd))
    for spec in (default, mine):  # the node's own overrides what it sets
        if spec is None:
            continue
        out = dataclasses.replace(
            out, listen_port=_pick(spec.listen_port, out.listen_port),
            log_severity=_pick(spec.log_severity, out.log_severity),
            advertisements=tuple((a.cidr, a.communities) for a in spec.prefix_advertisements)
            or out.advertisements)
    return out


def _pick(value: T | None, fallback: T) -> T:
    return fallback if value is None else value


def node_as(node: Node, s: Settings) -> int:
    return node.spec.bgp.as_number if node.spec.bgp.as_number is not None else s.as_number


def router_id(node: Node | None, name: str) -> ipaddress.IPv4Address:
    """The node's IPv4 address, or (IPv6-only) a stable 32-bit id hashed from its name."""
    if node is not None and node.spec.bgp.ipv4_address is not None:
        return node.spec.bgp.ipv4_address.ip
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return ipaddress.IPv4Address(digest or 1)


# -- origins ------------------------------------------------------------------

def _origins(snapshot: Snapshot, node: str, s: Settings, families: tuple[int, ...]
             ) -> tuple[Origin, ...]:
    pools = _pools(snapshot)
    found: dict[IPNetwork, Origin] = {}
    for block in live_blocks(snapshot):
        cidr = block.spec.cidr
        if not _exported(pools, cidr):
            continue
        if block.node == node:
            found.setdefault(cidr, Origin(cidr, f"block affine to {node}"))
        for address, holder in borrowed_addresses(block):
            if holder == node:
                net = ipaddress.ip_network(address)
                owner = block.node or "no node"
                found.setdefault(net, Origin(net, f"borrowed from {cidr} ({owner})"))
    for cidr, why in s.services:
        found.setdefault(cidr, Origin(cidr, why))
    for host, why in local_service_routes(snapshot, node):
        found.setdefault(host, Origin(host, why))
    origins = []
    for net, origin in found.items():
        if net.version not in families:
            continue
        tagged = _communities(s, net)
        origins.append(dataclasses.replace(origin, communities=tagged) if tagged else origin)
    return tuple(sorted(origins, key=lambda o: _net_key(o.net)))


def _exported(pools: Iterable[IPPool], cidr: IPNetwork) -> bool:
    """In a pool that does not disable BGP export (blocks of no pool are not exported)."""
    for pool in pools:
        if pool.version == cidr.version and cidr.subnet_of(pool.spec.cidr):  # type: ignore[arg-type]
            return not pool.spec.disable_bgp_export
    return False


def _communities(s: Settings, net: IPNetwork) -> tuple[Community, ...]:
    out: list[Community] = []
    for cidr, values in s.advertisements:
        if cidr.version == net.version and net.subnet_of(cidr):  # type: ignore[arg-type]
            out.extend(v for v in values if v not in out)
    return tuple(out)


# -- peers --------------------------------------------------------------------

def _peers(snapshot: Snapshot, me: Node, s: Settings, families: tuple[int, ...],
           notes: list[str]) -> tuple[Peer, ...]:
    labels = dict(me.meta.labels)
    every = snapshot.of(BGPPeer)
    candidates: list[Peer] = []
    for tier in ([p for p in every if not p.is_global], [p for p in every if p.is_global]):
        for bgp_peer in tier:
            if bgp_peer.applies_to(me.meta.name, labels):
                candidates += _from_bgp_peer(snapshot, me, s, bgp_peer, families, notes)
            if _selects(bgp_peer, labels):  # peerings are two-way, as in Calico
                candidates += _selected_peers(snapshot, me, s, bgp_peer, families)
    if s.mesh:
        candidates += [_node_peer(snapshot, me, s, other, v, MESH, "mesh")
                       for other in snapshot.nodes if other.meta.name != me.meta.name
                       for v in families if other.address(v) is not None]
    chosen: dict[tuple[IPAddress, int | None], Peer] = {}
    for peer in candidates:
        key = (peer.address, peer.port)
        if key in chosen:
            if peer.source not in ("mesh", chosen[key].source):
                notes.append(f"{peer.source}: {peer.address} is already a peer (from"
                             f" {chosen[key].source}); left out")
            continue
        chosen[key] = peer
    return tuple(sorted(chosen.values(), key=lambda p: (*_ip_key(p.address), p.port or 0)))


def _selects(bgp_peer: BGPPeer, labels: dict[str, str]) -> bool:
    sel = bgp_peer.spec.peer_selector
    return bool(sel) and selector.parse(sel).matches(labels)


def _selected_peers(snapshot: Snapshot, me: Node, s: Settings, bgp_peer: BGPPeer,
                    families: tuple[int, ...]) -> list[Peer]:
    """The other side of a peerSelector: ``me`` is selected, so it peers with every
    node the BGPPeer applies to."""
    kind = GLOBAL if bgp_peer.is_global else NODE_SPECIFIC
    others = [n for n in snapshot.nodes if n.meta.name != me.meta.name
              and bgp_peer.applies_to(n.meta.name, dict(n.meta.labels))]
    return [_with_options(snapshot, _node_peer(snapshot, me, s, other, v, kind, bgp_peer.ref),
                          bgp_peer)
            for other in others for v in families if other.address(v) is not None]


def _from_bgp_peer(snapshot: Snapshot, me: Node, s: Settings, bgp_peer: BGPPeer,
                   families: tuple[int, ...], notes: list[str]) -> list[Peer]:
    spec, source = bgp_peer.spec, bgp_peer.ref
    kind = GLOBAL if bgp_peer.is_global else NODE_SPECIFIC
    if spec.peer_ip is None:  # peerSelector: other nodes
        chosen = selector.parse(spec.peer_selector)
        others = [n for n in snapshot.nodes
                  if n.meta.name != me.meta.name and chosen.matches(dict(n.meta.labels))]
        peers = [_node_peer(snapshot, me, s, other, v, kind, source)
                 for other in others for v in families if other.address(v) is not None]
        return [_with_options(snapshot, p, bgp_peer) for p in peers]
    ip = spec.peer_ip
    if ip.version not in families:
        notes.append(f"{source}: {me.meta.name} has no IPv{ip.version} address; {ip} left out")
        return []
    if ip == me.address(ip.version):
        notes.append(f"{source}: {ip} is {me.meta.name}'s own address; left out")
        return []
    port = None if spec.peer_port == DEFAULT_PORT else spec.peer_port
    peer = Peer(name=_name(kind, ip, port), type=kind, address=ip,
                as_number=spec.as_number or DEFAULT_AS, source=source, port=port,
                local_address=me.address(ip.version), direct=_direct(me, ip))
    return [_with_options(snapshot, peer, bgp_peer)]


def _node_peer(snapshot: Snapshot, me: Node, s: Settings, other: Node, version: int,
               kind: str, source: str) -> Peer:
    address = other.address(version)
    assert address is not None
    cluster = me.spec.bgp.route_reflector_cluster_id
    client = bool(cluster) and kind != MESH and \
        other.spec.bgp.route_reflector_cluster_id != cluster
    port = settings(snapshot, other.meta.name).listen_port
    port_or_none = None if port == DEFAULT_PORT else port
    peer = Peer(name=_name(kind, address, port_or_none),
                type=RR_CLIENT if client else kind, address=address,
                as_number=node_as(other, s), source=source, port=port_or_none,
                local_address=me.address(version), direct=_direct(me, address),
                rr_client=client)
    if kind == MESH:
        peer = dataclasses.replace(peer, restart_time=s.mesh_restart_time, bfd=s.mesh_bfd)
        return _with_password(snapshot, peer, s.mesh_password)
    return peer


def _with_options(snapshot: Snapshot, peer: Peer, bgp_peer: BGPPeer) -> Peer:
    spec = bgp_peer.spec
    peer = dataclasses.replace(
        peer, keep_next_hop=spec.keep_original_next_hop, restart_time=spec.max_restart_time,
        allow_local_as=spec.num_allowed_local_as, filters=spec.filters, bfd=_enabled(spec.bfd),
        local_address=peer.local_address if spec.source_address == "UseNodeIP" else None)
    return _with_password(snapshot, peer, spec.password)


def _with_password(snapshot: Snapshot, peer: Peer, password: Password | None) -> Peer:
    if password is None:
        return peer
    if password.inline:
        return dataclasses.replace(peer, password=password.value)
    ref = f"Secret {SECRET_NAMESPACE}/{password.secret_name}"
    secret = next((x for x in snapshot.of(Secret) if x.meta.namespace == SECRET_NAMESPACE
                   and x.meta.name == password.secret_name), None)
    value = secret.text(password.secret_key) if secret is not None else None
    if secret is None:
        why = f"its password's {ref} does not exist"
    elif value is None:
        why = f"its password's {ref} has no key {password.secret_key!r}"
    else:
        problem = password_problem(value)
        if not problem:
            return dataclasses.replace(peer, password=value)
        why = f"its password ({ref}, key {password.secret_key!r}) {problem}"
    return dataclasses.replace(peer, disabled=why)


def _with_filters(snapshot: Snapshot, peers: tuple[Peer, ...], notes: list[str]
                  ) -> tuple[tuple[Peer, ...], tuple[BGPFilter, ...]]:
    """Peers naming only BGPFilters that exist (a missing one is skipped, with a note),
    and those filters."""
    known = {f.meta.name: f for f in snapshot.of(BGPFilter)}
    out: list[Peer] = []
    used: set[str] = set()
    for peer in peers:
        missing = [n for n in peer.filters if n not in known]
        notes += [f"{peer.source}: BGPFilter {n} does not exist; skipped for {peer.address}"
                  for n in missing]
        kept = tuple(dict.fromkeys(n for n in peer.filters if n in known))
        used.update(kept)
        out.append(dataclasses.replace(peer, filters=kept))
    return tuple(out), tuple(known[n] for n in sorted(used))


def _enabled(bfd: BFD | None) -> BFD | None:
    return bfd if bfd is not None and bfd.enabled else None


def _direct(me: Node, address: IPAddress) -> bool:
    own = me.spec.bgp.ipv4_address if address.version == 4 else me.spec.bgp.ipv6_address
    return own is not None and address in own.network


def _name(kind: str, address: IPAddress, port: int | None) -> str:
    token = str(address).replace(".", "_").replace(":", "_")
    return f"{_PREFIX[kind]}_{token}" + (f"_port_{port}" if port is not None else "")


# -- helpers ------------------------------------------------------------------

def _pools(snapshot: Snapshot) -> list[IPPool]:
    return sorted(snapshot.of(IPPool), key=lambda p: _net_key(p.spec.cidr))


def _ip_key(address: IPAddress) -> tuple[int, int]:
    return address.version, int(address)


def _net_key(net: IPNetwork) -> tuple[int, int, int]:
    return net.version, int(net.network_address), net.prefixlen
