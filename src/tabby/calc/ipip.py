"""IP-in-IP: which pools ask for it on a node, and what to say when it cannot be had (pure).

tabby does not build IPIP tunnels: VXLAN does the same job over UDP and
carries IPv6 too. A pool with ``ipipMode`` Always or CrossSubnet is still
valid Calico input, so instead of ignoring it silently the agent refuses it
where it cannot be honoured: on a kernel without the ``ipip`` link type (the
agent asks the kernel once), pods from such a pool are refused at CNI ADD,
and the agent's log and ``/healthz`` name the pool and the fix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from tabby.calc.vxlan import pool_holding
from tabby.model import IPPool
from tabby.snapshot import Snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["ipip_pools", "ipip_pools_of", "ipip_warning", "refusal"]


def ipip_pools(snapshot: Snapshot, node: str) -> tuple[IPPool, ...]:
    """Enabled pools asking for IPIP that serve ``node`` (by nodeSelector), by name."""
    obj = snapshot.node(node)
    labels = dict(obj.meta.labels) if obj is not None else {}
    return tuple(p for p in snapshot.of(IPPool)
                 if p.spec.ipip_mode != "Never" and not p.spec.disabled and p.selects(labels))


def ipip_pools_of(pools: Sequence[IPPool], addresses: Iterable[IPAddress]) -> tuple[IPPool, ...]:
    """The pools asking for IPIP that ``addresses`` came from."""
    found: dict[str, IPPool] = {}
    for address in addresses:
        pool = pool_holding(pools, address)
        if pool is not None and pool.spec.ipip_mode != "Never":
            found[pool.meta.name] = pool
    return tuple(found[name] for name in sorted(found))


def refusal(pool: IPPool) -> str:
    """Why ``pool`` cannot serve pods on a kernel without IPIP, and what to do."""
    return (f"IPPool/{pool.meta.name} ({pool.spec.cidr}) asks for ipipMode"
            f" {pool.spec.ipip_mode}, but this node's kernel has no IPIP support (it cannot"
            f" create an ipip link); pods from this pool are refused: set ipipMode: Never and"
            f" vxlanMode: {pool.spec.ipip_mode} on the pool instead")


def ipip_warning(pool: IPPool) -> str:
    """What ``tabby apply`` says about a pool asking for IPIP."""
    return (f"IPPool/{pool.meta.name} asks for ipipMode {pool.spec.ipip_mode}: tabby builds no"
            f" IPIP tunnels, and nodes whose kernel has no IPIP refuse pods from this pool;"
            f" use vxlanMode: {pool.spec.ipip_mode} instead")
