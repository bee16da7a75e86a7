"""Each service's share of the nft part, remembered between passes and merged by buckets.

    cache = ShareCache(compute)          compute(svc, slices) -> Part (pure)
    merged = cache.merged(inputs)        inputs: [(svc, slices), ...] in sorted order

With ten thousand services, computing every share and merging them all on
every pass costs a few hundred milliseconds of Python, while a pass usually
follows one change. So a share is remembered by the identity of its inputs
(the agent's cache hands out the same Service and EndpointSlice objects until
they change), services are spread over ``BUCKETS`` buckets by a hash of their
name, a bucket is merged again only when its members changed, and the buckets'
frozen sets are joined with set unions. The result equals merging every share
afresh: on a clash (two services claiming one map key, which the allocator
prevents) the earlier share in (bucket, sorted) order wins, on every node and
every pass alike.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tabby.model.service import EndpointSlice, Service
from tabby.nft.model import Chain

BUCKETS = 64
Inputs = tuple[Service, tuple[EndpointSlice, ...]]


@dataclass(slots=True)
class Part:
    """One service's share (or several merged): elements per map/set name and the
    chains they need. Filled while computing, then only read."""

    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    counts: set[tuple[str, int]] = field(default_factory=set)  # (chain kind, K) in use
    chains: dict[str, Chain] = field(default_factory=dict)  # affine services' own
    affinity_sets: dict[str, int] = field(default_factory=dict)  # client set -> family

    def put(self, name: str, key: str, value: str) -> None:
        self.maps.setdefault(name, {}).setdefault(key, value)  # the first writer wins

    def add(self, name: str, element: str) -> None:
        self.sets.setdefault(name, set()).add(element)


@dataclass(frozen=True, slots=True)
class Merged:
    maps: Mapping[str, frozenset[tuple[str, str]]]
    sets: Mapping[str, frozenset[str]]
    counts: frozenset[tuple[str, int]]
    chains: Mapping[str, Chain]
    affinity_sets: Mapping[str, int]
    keys: Mapping[str, frozenset[str]]  # each map's keys, to see clashes between buckets

    def elements(self, name: str) -> frozenset[tuple[str, str]]:
        return self.maps.get(name, frozenset())

    def members(self, name: str) -> frozenset[str]:
        return self.sets.get(name, frozenset())


def merge(parts: Sequence[Part]) -> Merged:
    """Shares in order; on a clash the first wins."""
    maps: dict[str, dict[str, str]] = {}
    sets: dict[str, set[str]] = {}
    counts: set[tuple[str, int]] = set()
    chains: dict[str, Chain] = {}
    affinity: dict[str, int] = {}
    for part in reversed(parts):
        for name, items in part.maps.items():
            maps.setdefault(name, {}).update(items)
        for name, elements in part.sets.items():
            sets.setdefault(name, set()).update(elements)
        counts |= part.counts
        if part.chains:
            chains.update(part.chains)
            affinity.update(part.affinity_sets)
    return Merged({n: frozenset(d.items()) for n, d in maps.items()},
                  {n: frozenset(s) for n, s in sets.items()}, frozenset(counts), chains,
                  affinity, {n: frozenset(d) for n, d in maps.items()})


def combine(buckets: Sequence[Merged]) -> Merged:
    """Merged buckets joined by set unions; a key two buckets disagree on goes to the
    earlier bucket."""
    maps: dict[str, frozenset[tuple[str, str]]] = {}
    keys: dict[str, frozenset[str]] = {}
    for name in sorted({n for b in buckets for n in b.maps}):
        held = [b for b in buckets if name in b.maps]
        union = frozenset[tuple[str, str]]().union(*(b.maps[name] for b in held))
        known = frozenset[str]().union(*(b.keys[name] for b in held))
        if len(known) != len(union):  # a clash: resolve it the slow way
            first: dict[str, str] = {}
            for b in reversed(held):
                first.update(b.maps[name])
            union = frozenset(first.items())
        maps[name], keys[name] = union, known
    sets = {name: frozenset[str]().union(*(b.sets[name] for b in buckets if name in b.sets))
            for name in sorted({n for b in buckets for n in b.sets})}
    chains: dict[str, Chain] = {}
    affinity: dict[str, int] = {}
    for b in reversed(buckets):
        chains.update(b.chains)
        affinity.update(b.affinity_sets)
    return Merged(maps, sets, frozenset[tuple[str, int]]().union(*(b.counts for b in buckets)),
                  chains, affinity, keys)


class ShareCache:
    def __init__(self, compute: Callable[[Service, tuple[EndpointSlice, ...]], Part],
                 buckets: int = BUCKETS) -> None:
        self.compute = compute
        # id(service) -> (service, its slices, its share, its bucket); ints as keys,
        # so a pass allocates few objects the garbage collector has to track
        self.shares: dict[int, tuple[Service, tuple[EndpointSlice, ...], Part, int]] = {}
        self.buckets: list[tuple[tuple[int, ...], Merged]] = [((), merge([]))] * buckets

    def merged(self, inputs: Iterable[Inputs]) -> Merged:
        shares = {}
        members: list[list[int]] = [[] for _ in self.buckets]
        dirty: set[int] = set()
        for svc, slices in inputs:
            key = id(svc)
            hit = self.shares.get(key)
            if hit is None or hit[0] is not svc or hit[1] != slices:  # tuple !=: `is` first
                bucket = zlib.crc32(f"{svc.meta.namespace}/{svc.meta.name}".encode())
                hit = (svc, slices, self.compute(svc, slices), bucket % len(self.buckets))
                dirty.add(hit[3])
            shares[key] = hit
            members[hit[3]].append(key)
        for index, keys in enumerate(members):
            if index in dirty or tuple(keys) != self.buckets[index][0]:
                self.buckets[index] = (tuple(keys), merge([shares[k][2] for k in keys]))
        self.shares = shares
        return combine([merged for _, merged in self.buckets])
