"""Each service's share of the nft part, remembered between passes and merged by buckets.

    cache = ShareCache(compute)          compute(svc, slices) -> Part (pure)
    merged = cache.merged(inputs)        inputs: [(svc, slices), ...] in sorted order
    merged = cache.update(changes)       only what changed: {(ns, name): inputs or None}

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

import bisect
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


ServiceKey = tuple[str, str]  # (namespace, name)


class ShareCache:
    """Shares by service, and the buckets they merge into. ``update`` takes only the
    services whose inputs may have changed (the agent's pass finds them by difference,
    ``tabby.services.view.InputChanges``), so a pass costs what changed, not what is
    held; ``merged`` takes every input and finds the changes itself."""

    def __init__(self, compute: Callable[[Service, tuple[EndpointSlice, ...]], Part],
                 buckets: int = BUCKETS) -> None:
        self.compute = compute
        self.shares: dict[ServiceKey, tuple[Service, tuple[EndpointSlice, ...], Part]] = {}
        self.members: list[list[ServiceKey]] = [[] for _ in range(buckets)]  # sorted
        self.buckets: list[Merged] = [merge([])] * buckets
        self.last: Merged | None = None

    def merged(self, inputs: Iterable[Inputs]) -> Merged:
        given = {(svc.meta.namespace, svc.meta.name): (svc, slices) for svc, slices in inputs}
        return self.update({key: given.get(key) for key in self.shares.keys() | given.keys()})

    def update(self, changes: Mapping[ServiceKey, Inputs | None]) -> Merged:
        dirty: set[int] = set()
        for key, new in changes.items():
            held = self.shares.get(key)
            bucket = zlib.crc32(f"{key[0]}/{key[1]}".encode()) % len(self.buckets)
            if new is None:
                if held is not None:
                    del self.shares[key]
                    members = self.members[bucket]
                    del members[bisect.bisect_left(members, key)]
                    dirty.add(bucket)
                continue
            svc, slices = new
            if held is not None and held[0] is svc and held[1] == slices:  # tuple ==: `is` first
                continue
            self.shares[key] = (svc, slices, self.compute(svc, slices))
            if held is None:
                bisect.insort(self.members[bucket], key)
            dirty.add(bucket)
        if self.last is not None and not dirty:
            return self.last
        for index in dirty:
            self.buckets[index] = merge([self.shares[k][2] for k in self.members[index]])
        self.last = combine(self.buckets)
        return self.last
