"""What IPAM holds (``show``) and what looks wrong (``check``), plus renderers.

    report = show(client)          # IPAMReport: pools, blocks, affinities
    print(render_report(report))   # readable tables
    json.dumps(report_to_dict(report))
    problems = check(client)       # list[Problem], [] when consistent
    print(render_problems(problems)); json.dumps(problems_to_dict(problems))

``show`` and ``check`` read the store once per kind and compute the rest;
the renderers are pure.

check finds:
  leaked-address       an allocation no WorkloadEndpoint carries (its attributes,
                       e.g. namespace/pod/node/containerID, tell whose it was);
                       tunnel addresses (attribute ``type`` ending in
                       ``TunnelAddress``) of existing nodes are expected
  missing-allocation   a WorkloadEndpoint address no block has allocated
  missing-node         a block or affinity claimed by a node with no Node object
  handle-mismatch      an IPAMHandle's count for a block differs from the block's
  missing-handle       allocations whose handle has no IPAMHandle record
  stale-affinity       an affinity whose block is gone or belongs to another node
  reserved-address     an allocation inside an IPReservation (made before the
                       reservation, or by hand): it stays with its holder until
                       released; the holder should move
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tabby.ipam import blocks as blk
from tabby.ipam.pools import pool_of
from tabby.ipam.reserved import Reserved
from tabby.model import (
    BlockAffinity,
    IPAMBlock,
    IPAMHandle,
    IPPool,
    IPReservation,
    Node,
    WorkloadEndpoint,
)
from tabby.store.client import Client

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class PoolUsage:
    name: str
    cidr: IPNetwork
    size: int  # addresses in the pool
    used: int  # held by handles
    reserved: int  # held back (gateway, network, broadcast; IPReservations, unless held)
    free: int  # size - used - reserved
    blocks: int  # blocks in existence
    disabled: bool


@dataclass(frozen=True, slots=True)
class BlockUsage:
    cidr: IPNetwork
    pool: str  # "" if no pool holds it any more
    node: str | None  # the affine node, None if nobody's
    used: int
    reserved: int
    free: int


@dataclass(frozen=True, slots=True)
class AffinityRow:
    node: str
    cidr: IPNetwork
    state: str


@dataclass(frozen=True, slots=True)
class IPAMReport:
    pools: tuple[PoolUsage, ...]
    blocks: tuple[BlockUsage, ...]
    affinities: tuple[AffinityRow, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # leaked-address, missing-allocation, missing-node, ...
    subject: str  # what it is about: an address, a block, a handle
    detail: str  # a readable sentence naming the objects and the fix


def _net_key(net: IPNetwork) -> tuple[int, int]:
    return net.version, int(net.network_address)


def show(client: Client) -> IPAMReport:
    pools = sorted(client.list(IPPool), key=lambda p: _net_key(p.spec.cidr))
    all_blocks = sorted(client.list(IPAMBlock), key=lambda b: _net_key(b.spec.cidr))
    held_back = Reserved.of(client.list(IPReservation))
    rows = []
    for b in all_blocks:
        pool = pool_of(pools, b.spec.cidr)
        used, reserved = blk.used_count(b.spec), blk.reserved_count(b.spec)
        reserved += len(b.spec.unallocated) - held_back.free_count(b.spec)  # IPReservations
        rows.append(BlockUsage(b.spec.cidr, pool.meta.name if pool else "", b.node, used,
                               reserved, b.spec.cidr.num_addresses - used - reserved))
    usage = []
    for p in pools:
        mine = [r for r in rows if r.pool == p.meta.name]
        used = sum(r.used for r in mine)
        reserved = sum(r.reserved for r in mine) + _reserved_outside(
            held_back, p.spec.cidr, [r.cidr for r in mine])
        size = p.spec.cidr.num_addresses
        usage.append(PoolUsage(p.meta.name, p.spec.cidr, size, used, reserved,
                               size - used - reserved, len(mine), p.spec.disabled))
    affinities = sorted((AffinityRow(a.spec.node, a.spec.cidr, a.spec.state)
                         for a in client.list(BlockAffinity)),
                        key=lambda a: (a.node, _net_key(a.cidr)))
    return IPAMReport(tuple(usage), tuple(rows), tuple(affinities))


def _reserved_outside(reserved: Reserved, pool: IPNetwork, blocks: Sequence[IPNetwork]) -> int:
    """Addresses of ``pool`` an IPReservation holds back outside its existing blocks."""
    def count(net: IPNetwork) -> int:
        return sum(hi - lo + 1 for lo, hi in reserved.overlapping(net))
    return count(pool) - sum(count(b) for b in blocks) if reserved else 0


def check(client: Client) -> list[Problem]:
    all_blocks = client.list(IPAMBlock)
    nodes = {n.meta.name for n in client.list(Node)}
    endpoints = client.list(WorkloadEndpoint)
    handles = {h.spec.handle_id: h for h in client.list(IPAMHandle)}
    problems: list[Problem] = []
    problems += _leaks(all_blocks, endpoints, nodes)
    problems += _unallocated_endpoints(all_blocks, endpoints)
    problems += _missing_nodes(all_blocks, client.list(BlockAffinity), nodes)
    problems += _handle_mismatches(all_blocks, handles)
    problems += _reserved_holders(all_blocks, client.list(IPReservation))
    return problems


def _leaks(all_blocks: Sequence[IPAMBlock], endpoints: Sequence[WorkloadEndpoint],
           nodes: set[str]) -> list[Problem]:
    carried = {net.network_address for e in endpoints for net in e.spec.ip_networks}
    out = []
    for b in all_blocks:
        for ordinal, attr in blk.allocated(b.spec):
            ip = blk.address(b.spec, ordinal)
            if attr.handle_id == blk.RESERVED_HANDLE or ip in carried:
                continue
            attrs = dict(attr.secondary)
            if attrs.get("type", "").endswith("TunnelAddress") and attrs.get("node") in nodes:
                continue
            said = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items())) or "no attributes"
            out.append(Problem("leaked-address", str(ip), (
                f"{ip} (block {b.spec.cidr}, handle {attr.handle_id}; {said}) is allocated but"
                f" no WorkloadEndpoint carries it; if its owner is gone, free it with"
                f" tabby ipam release --ip {ip}")))
    return out


def _unallocated_endpoints(all_blocks: Sequence[IPAMBlock],
                           endpoints: Sequence[WorkloadEndpoint]) -> list[Problem]:
    allocated = {blk.address(b.spec, o) for b in all_blocks for o, _ in blk.allocated(b.spec)}
    out = []
    for e in endpoints:
        for net in e.spec.ip_networks:
            if net.network_address not in allocated:
                out.append(Problem("missing-allocation", str(net.network_address), (
                    f"WorkloadEndpoint {e.meta.namespace}/{e.meta.name} (node {e.spec.node})"
                    f" uses {net.network_address}, which IPAM has not allocated: another pod"
                    f" may receive it; recreate the pod")))
    return out


def _missing_nodes(all_blocks: Sequence[IPAMBlock], affinities: Sequence[BlockAffinity],
                   nodes: set[str]) -> list[Problem]:
    out = []
    by_cidr = {b.spec.cidr: b for b in all_blocks}
    for b in all_blocks:
        if b.node is not None and b.node not in nodes:
            out.append(Problem("missing-node", str(b.spec.cidr), (
                f"block {b.spec.cidr} is claimed by node {b.node!r}, which has no Node object;"
                f" release it with IPAM.release_node({b.node!r})")))
    for a in affinities:
        block = by_cidr.get(a.spec.cidr)
        if block is None or block.node != a.spec.node:
            owner = "no block exists" if block is None else f"the block is {block.node!r}'s"
            out.append(Problem("stale-affinity", a.meta.name, (
                f"BlockAffinity/{a.meta.name} ({a.spec.state}) says node {a.spec.node!r} holds"
                f" {a.spec.cidr} but {owner}; IPAM.release_empty_blocks({a.spec.node!r})"
                f" removes it")))
    return out


def _handle_mismatches(all_blocks: Sequence[IPAMBlock],
                       handles: dict[str, IPAMHandle]) -> list[Problem]:
    actual: dict[str, dict[str, int]] = {}
    for b in all_blocks:
        for handle_id, count in blk.handle_counts(b.spec).items():
            actual.setdefault(handle_id, {})[str(b.spec.cidr)] = count
    out = []
    for handle_id, counts in sorted(actual.items()):
        if handle_id not in handles:
            out.append(Problem("missing-handle", handle_id, (
                f"handle {handle_id!r} holds {sum(counts.values())} address(es) in"
                f" {', '.join(sorted(counts))} but has no IPAMHandle record; release by IP")))
    for handle_id, handle in sorted(handles.items()):
        recorded = dict(handle.spec.blocks)
        real = actual.get(handle_id, {})
        if recorded != real:
            out.append(Problem("handle-mismatch", handle_id, (
                f"IPAMHandle {handle_id!r} records {_counts(recorded)} but the blocks hold"
                f" {_counts(real)}; releasing the handle repairs it")))
    return out


def _reserved_holders(all_blocks: Sequence[IPAMBlock],
                      reservations: Sequence[IPReservation]) -> list[Problem]:
    reserved = Reserved.of(reservations)
    out = []
    for b in all_blocks if reserved else ():
        skip = reserved.skip(b.spec.cidr)
        if skip is None:
            continue
        for ordinal, attr in blk.allocated(b.spec):
            if attr.handle_id == blk.RESERVED_HANDLE or not skip(ordinal):
                continue
            ip = blk.address(b.spec, ordinal)
            names = ", ".join(r.meta.name for r in reservations
                              if any(ip in c for c in r.reserved_cidrs))
            attrs = dict(attr.secondary)
            who = (f"pod {attrs['namespace']}/{attrs['pod']}"
                   if "namespace" in attrs and "pod" in attrs else f"handle {attr.handle_id}")
            out.append(Problem("reserved-address", str(ip), (
                f"{ip} (block {b.spec.cidr}) is held by {who} but IPReservation {names}"
                f" reserves it; it stays until released: recreate the pod (or tabby ipam"
                f" release --ip {ip}) to move it off the reserved range")))
    return out


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} in {c}" for c, n in sorted(counts.items())) or "nothing"


# -- rendering ------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(c) for c in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]


def render_report(report: IPAMReport) -> str:
    lines = ["POOLS"]
    lines += _table(("NAME", "CIDR", "SIZE", "USED", "RESERVED", "FREE", "BLOCKS", "DISABLED"),
                    [(p.name, p.cidr, p.size, p.used, p.reserved, p.free, p.blocks,
                      "yes" if p.disabled else "no") for p in report.pools])
    lines += ["", "BLOCKS"]
    lines += _table(("CIDR", "POOL", "NODE", "USED", "RESERVED", "FREE"),
                    [(b.cidr, b.pool or "-", b.node or "-", b.used, b.reserved, b.free)
                     for b in report.blocks])
    lines += ["", "AFFINITIES"]
    lines += _table(("NODE", "CIDR", "STATE"),
                    [(a.node, a.cidr, a.state) for a in report.affinities])
    return "\n".join(lines)


def report_to_dict(report: IPAMReport) -> dict[str, Any]:
    return {
        "pools": [{"name": p.name, "cidr": str(p.cidr), "size": p.size, "used": p.used,
                   "reserved": p.reserved, "free": p.free, "blocks": p.blocks,
                   "disabled": p.disabled} for p in report.pools],
        "blocks": [{"cidr": str(b.cidr), "pool": b.pool, "node": b.node, "used": b.used,
                    "reserved": b.reserved, "free": b.free} for b in report.blocks],
        "affinities": [{"node": a.node, "cidr": str(a.cidr), "state": a.state}
                       for a in report.affinities],
    }


def render_problems(problems: Sequence[Problem]) -> str:
    if not problems:
        return "IPAM is consistent: no problems found."
    lines = [f"{len(problems)} problem(s):"]
    lines += [f"- [{p.kind}] {p.detail}" for p in problems]
    return "\n".join(lines)


def problems_to_dict(problems: Sequence[Problem]) -> dict[str, Any]:
    return {"ok": not problems,
            "problems": [{"kind": p.kind, "subject": p.subject, "detail": p.detail}
                         for p in problems]}
