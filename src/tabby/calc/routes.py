"""Which routes one node should have: a pure function of a Snapshot.

    desired_routes(snapshot, node, bgp=False) -> frozenset[Route]

Sources, from the most specific claim to the least:

1. local endpoints: ``POD_IP/32`` and ``POD_IP/128`` via the pod's host veth;
2. borrowed addresses: an address handed out from a block affine to node X
   to a pod on node Y (its allocation attributes name Y) is routed ``/32``
   (``/128``) via Y on every node but Y — the owner of the block included,
   whose blackhole would otherwise swallow it;
3. remote blocks: every block affine to another node, via that node's
   address of the block's family (``spec.bgp.ipv4Address`` / ``ipv6Address``);
4. local blocks: a blackhole per block affine to this node (what BGP exports;
   it also drops traffic to free addresses instead of bouncing it upstream).

Sources 2 and 3 are what BGP learns once it runs; they sit together in
``remote_routes`` so that source can be swapped out whole (``bgp=True``, the
agent's ``--bgp bird``: BIRD learns them). Remote destinations inside a pool
with ``vxlanMode`` Always or CrossSubnet are not theirs:
``tabby.calc.vxlan.tunnel_routes`` decides those (via the VXLAN device, or
plainly within a subnet for CrossSubnet), whatever routes the rest.

Each destination appears once: when sources disagree about one prefix, the
more specific source above wins (a local endpoint beats stale allocation
data), and ties inside a source go to the first in sorted order. Missing
data has a defined answer: a remote node without an address of the family
gets no route; an endpoint without an interface name gets none either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from tabby.calc.route import (
    IPAddress,
    IPNetwork,
    Route,
    borrowed_addresses,
    live_blocks,
    route_sort_key,
)
from tabby.calc.vxlan import tunnel_routes
from tabby.snapshot import Snapshot

__all__ = ["Route", "borrowed_addresses", "borrowed_routes", "desired_routes", "endpoint_routes",
           "live_blocks", "local_block_routes", "remote_block_routes", "remote_routes",
           "route_sort_key"]


def desired_routes(snapshot: Snapshot, node: str, *, bgp: bool = False) -> frozenset[Route]:
    """With ``bgp``, BIRD learns the remote routes (proto bird) and ``remote_routes`` is
    left out; local endpoints, local blackholes and tunnel routes stay the agent's."""
    by_dst: dict[IPNetwork, Route] = {}
    tunnels = tunnel_routes(snapshot, node)
    plain = [] if bgp else [r for r in remote_routes(snapshot, node)
                            if r.dst not in tunnels.claimed]
    # Least specific source first; later sources overwrite a shared destination.
    for source in (local_block_routes(snapshot, node), plain, tunnels.routes,
                   endpoint_routes(snapshot, node)):
        by_dst.update(_first_per_dst(source))
    return frozenset(by_dst.values())


def endpoint_routes(snapshot: Snapshot, node: str) -> list[Route]:
    routes: list[Route] = []
    for ep in snapshot.local_endpoints(node):
        if not ep.spec.interface_name:
            continue
        routes.extend(Route(net, "unicast", None, ep.spec.interface_name)
                      for net in ep.spec.ip_networks)
    return routes


def local_block_routes(snapshot: Snapshot, node: str) -> list[Route]:
    return [Route(b.spec.cidr, "blackhole") for b in live_blocks(snapshot)
            if b.node == node]


def remote_routes(snapshot: Snapshot, node: str) -> list[Route]:
    """Routes BGP will learn later: remote blocks, then borrowed addresses (more specific)."""
    addresses = _node_addresses(snapshot)
    return remote_block_routes(snapshot, node, addresses) + borrowed_routes(
        snapshot, node, addresses)


def remote_block_routes(snapshot: Snapshot, node: str,
                        addresses: Mapping[tuple[str, int], IPAddress] | None = None
                        ) -> list[Route]:
    addresses = _node_addresses(snapshot) if addresses is None else addresses
    routes = []
    for block in live_blocks(snapshot):
        owner = block.node
        if owner is None or owner == node:
            continue
        gateway = _gateway(addresses, node, owner, block.spec.cidr.version)
        if gateway is not None:
            routes.append(Route(block.spec.cidr, "unicast", gateway))
    return routes


def borrowed_routes(snapshot: Snapshot, node: str,
                    addresses: Mapping[tuple[str, int], IPAddress] | None = None
                    ) -> list[Route]:
    addresses = _node_addresses(snapshot) if addresses is None else addresses
    routes = []
    for block in live_blocks(snapshot):
        for address, holder in borrowed_addresses(block):
            if holder == node:
                continue  # ours: the endpoint route covers it
            gateway = _gateway(addresses, node, holder, address.version)
            if gateway is not None:
                routes.append(Route(ipaddress.ip_network(address), "unicast", gateway))
    return routes


def _node_addresses(snapshot: Snapshot) -> dict[tuple[str, int], IPAddress]:
    out: dict[tuple[str, int], IPAddress] = {}
    for n in snapshot.nodes:
        for version in (4, 6):
            address = n.address(version)
            if address is not None:
                out[(n.meta.name, version)] = address
    return out


def _gateway(addresses: Mapping[tuple[str, int], IPAddress], node: str, other: str,
             version: int) -> IPAddress | None:
    """``other``'s address of the family, unless unknown or (misconfigured) also ours."""
    gateway = addresses.get((other, version))
    if gateway is None or gateway == addresses.get((node, version)):
        return None
    return gateway


def _first_per_dst(routes: Iterable[Route]) -> dict[IPNetwork, Route]:
    out: dict[IPNetwork, Route] = {}
    for route in sorted(routes, key=route_sort_key):
        out.setdefault(route.dst, route)
    return out
