"""Which pools may serve a request, in which order (pure).

A pool serves a workload on a node when it has the request's IP version,
``allowedUses`` includes ``Workload``, it is not disabled, and its
``nodeSelector`` (Calico's selector language) matches the node's labels.
Requested pools (by name or CIDR) keep the caller's order; otherwise pools
go by CIDR, lowest first. Blocks are tried lowest CIDR first within a pool.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence

from tabby.errors import NoUsablePool
from tabby.model import IPPool

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
USE = "Workload"


def why_unusable(pool: IPPool, labels: Mapping[str, str]) -> str | None:
    """None if ``pool`` may serve a workload on a node with ``labels``, else the reason."""
    if pool.spec.disabled:
        return f"IPPool/{pool.meta.name} is disabled"
    if USE not in pool.spec.allowed_uses:
        return (f"IPPool/{pool.meta.name} does not allow {USE}"
                f" (allowedUses: {', '.join(pool.spec.allowed_uses)})")
    if not pool.selects(dict(labels)):
        return f"IPPool/{pool.meta.name} nodeSelector {pool.spec.node_selector!r} excludes the node"
    return None


def usable_pools(pools: Sequence[IPPool], version: int, node: str, labels: Mapping[str, str],
                 requested: Sequence[str] = ()) -> list[IPPool]:
    """The pools serving an IPv``version`` workload on ``node``; NoUsablePool if none."""
    of_version = [p for p in pools if p.version == version]
    reasons: list[str] = []
    if requested:
        candidates = []
        for wanted in requested:
            match = [p for p in of_version if wanted in (p.meta.name, str(p.spec.cidr))]
            if not match:
                reasons.append(f"no IPv{version} IPPool named {wanted!r}")
            candidates.extend(match)
    else:
        candidates = sorted(of_version, key=lambda p: int(p.spec.cidr.network_address))
    chosen = []
    for pool in candidates:
        reason = why_unusable(pool, labels)
        if reason is None:
            chosen.append(pool)
        else:
            reasons.append(reason)
    if not chosen:
        if not of_version and not requested:
            reasons.append(f"there is no IPv{version} IPPool; create one (tabby apply -f)")
        raise NoUsablePool(f"no usable IPv{version} pool for node {node!r}: "
                           + "; ".join(reasons))
    return chosen


def pool_of(pools: Sequence[IPPool], cidr: IPNetwork) -> IPPool | None:
    """The pool ``cidr`` (a block) lies in."""
    for pool in pools:
        if pool.version == cidr.version and cidr.subnet_of(pool.spec.cidr):  # type: ignore[arg-type]
            return pool
    return None


def block_cidrs(pool: IPPool) -> Iterator[IPNetwork]:
    """The pool's blocks, lowest first (lazily: an IPv6 pool has a great many)."""
    return pool.spec.cidr.subnets(new_prefix=pool.spec.block_size)


def block_for(pool: IPPool, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> IPNetwork:
    return ipaddress.ip_network((ip, pool.spec.block_size), strict=False)
