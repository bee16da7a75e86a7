"""A route tabby owns, and the IPAM block facts every route source reads.

Split from ``tabby.calc.routes`` so that the VXLAN calculation (which decides
the tunnel routes) and the route calculation (which merges every source) both
build on it without importing each other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from tabby.model import IPAMBlock
from tabby.snapshot import Snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RouteType = Literal["unicast", "blackhole"]


@dataclass(frozen=True, slots=True)
class Route:
    """One main-table route tabby owns: blackhole, via a gateway, or via a device."""

    dst: IPNetwork
    type: RouteType = "unicast"
    gateway: IPAddress | None = None
    dev: str | None = None
    onlink: bool = False  # the gateway is reachable on dev without a covering route (VXLAN)

    def __str__(self) -> str:
        if self.type == "blackhole":
            return f"blackhole {self.dst}"
        via = f" via {self.gateway}" if self.gateway is not None else ""
        dev = f" dev {self.dev}" if self.dev else ""
        return f"{self.dst}{via}{dev}{' onlink' if self.onlink else ''}"


def route_sort_key(route: Route) -> tuple[int, int, int, str]:
    """Stable order for routes of both families (ipaddress types do not compare across)."""
    return (route.dst.version, int(route.dst.network_address), route.dst.prefixlen, str(route))


def borrowed_addresses(block: IPAMBlock) -> list[tuple[IPAddress, str]]:
    """(address, holding node) for allocations whose node is not the block's owner."""
    spec = block.spec
    owner = block.node
    holders = [dict(attr.secondary).get("node") for attr in spec.attributes]
    foreign = {i: h for i, h in enumerate(holders) if h and h != owner}
    if not foreign:  # the usual case: every allocation is the owner's
        return []
    return [(spec.cidr[ordinal], foreign[index])
            for ordinal, index in enumerate(spec.allocations) if index in foreign]


def live_blocks(snapshot: Snapshot) -> list[IPAMBlock]:
    return [b for b in snapshot.blocks if not b.spec.deleted]
