"""Which addresses a CNI ADD asks IPAM for, and refusing IPIP pools this kernel lacks.

Calico's ``ipam`` keys of the network config (``assign_ipv4``/``assign_ipv6``,
``ipv4_pools``/``ipv6_pools``) when given; otherwise one address of each family
some pool serves on the node (``request_families``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabby.calc.ipip import refusal
from tabby.dataplane.vxlan import ipip_supported
from tabby.errors import ConfigError, NoUsablePool
from tabby.ipam.pools import usable_pools, why_unusable
from tabby.model import IPPool

__all__ = ["Families", "first_choices", "refuse_ipip", "request_families"]


@dataclass(frozen=True, slots=True)
class Families:
    """How many addresses of each family to ask for, from which pools."""

    v4: int
    v6: int
    pools_v4: tuple[str, ...] = ()
    pools_v6: tuple[str, ...] = ()


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


def refuse_ipip(asking: Sequence[IPPool]) -> None:
    """ConfigError if pools asking for IPIP would serve the pod on a kernel without IPIP."""
    if asking and not ipip_supported():
        raise ConfigError("; ".join(refusal(p) for p in asking))


def first_choices(pools: Sequence[IPPool], labels: Mapping[str, str], node: str,
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


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes"))


def _names(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()
