"""IPReservations as IPAM reads them: which addresses automatic assignment skips (pure).

``Reserved`` holds the reserved CIDRs of every IPReservation, merged per IP
family into disjoint, sorted integer ranges, so that each question is a
binary search, never a walk over addresses:

    reserved = Reserved.of(client.list(IPReservation))  # once per assign call
    reserved.covers(block_cidr)          # the whole block is reserved: never claim it
    reserved.skip(block_cidr)            # ordinal -> reserved? (None: nothing in it is)
    reserved.free_count(spec)            # unallocated addresses left to hand out
    reserved.next_block(pool, cidr)      # where block claiming resumes after a reserved run

Calico's semantics (libcalico-go ``ipam``): a reserved address is never
given out automatically, and a block inside the reserved space is not
claimed; a reservation does not take addresses from their holders.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from tabby.model.ipam import IPAMBlockSpec
from tabby.model.ipreservation import IPReservation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Skip = Callable[[int], bool]  # block ordinal -> reserved?


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Disjoint, sorted, inclusive ranges covering the same addresses."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


@dataclass(frozen=True, slots=True)
class Reserved:
    """Reserved address ranges per IP version (inclusive integer bounds, disjoint)."""

    v4: tuple[tuple[int, int], ...] = ()
    v6: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, reservations: Iterable[IPReservation]) -> Reserved:
        return cls.of_cidrs(c for r in reservations for c in r.reserved_cidrs)

    @classmethod
    def of_cidrs(cls, cidrs: Iterable[IPNetwork]) -> Reserved:
        by_version: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for c in cidrs:
            by_version[c.version].append((int(c.network_address), int(c.broadcast_address)))
        return cls(_merge(by_version[4]), _merge(by_version[6]))

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def _ranges(self, version: int) -> tuple[tuple[int, int], ...]:
        return self.v4 if version == 4 else self.v6

    def _range_at(self, version: int, value: int) -> tuple[int, int] | None:
        """The reserved range holding ``value``, or None."""
        ranges = self._ranges(version)
        i = bisect.bisect_right(ranges, (value, 1 << 129)) - 1
        if i >= 0 and ranges[i][0] <= value <= ranges[i][1]:
            return ranges[i]
        return None

    def contains(self, ip: IPAddress) -> bool:
        return self._range_at(ip.version, int(ip)) is not None

    def covers(self, cidr: IPNetwork) -> bool:
        """Is every address of ``cidr`` reserved?"""
        found = self._range_at(cidr.version, int(cidr.network_address))
        return found is not None and found[1] >= int(cidr.broadcast_address)

    def overlapping(self, cidr: IPNetwork) -> tuple[tuple[int, int], ...]:
        """The reserved ranges meeting ``cidr``, clipped to it, as block ordinals."""
        base, last = int(cidr.network_address), int(cidr.broadcast_address)
        ranges = self._ranges(cidr.version)
        i = max(bisect.bisect_right(ranges, (base, 1 << 129)) - 1, 0)
        out = []
        for lo, hi in ranges[i:]:
            if lo > last:
                break
            if hi >= base:
                out.append((max(lo, base) - base, min(hi, last) - base))
        return tuple(out)

    def skip(self, cidr: IPNetwork) -> Skip | None:
        """A test for the block's reserved ordinals; None when none of them is."""
        inside = self.overlapping(cidr)
        if not inside:
            return None
        if len(inside) == 1:
            lo, hi = inside[0]
            return lambda o: lo <= o <= hi
        return lambda o: any(lo <= o <= hi for lo, hi in inside)

    def free_count(self, spec: IPAMBlockSpec) -> int:
        """How many of the block's unallocated addresses may be handed out."""
        skip = self.skip(spec.cidr)
        if skip is None:
            return len(spec.unallocated)
        return sum(1 for o in spec.unallocated if not skip(o))

    def blocks(self, pool: IPNetwork, prefix: int) -> Iterator[IPNetwork]:
        """The pool's blocks of size ``/prefix``, lowest first, without the wholly reserved
        ones; a reserved run (e.g. a /64 of an IPv6 pool) is jumped over, not walked."""
        size = 1 << (pool.max_prefixlen - prefix)
        start, end = int(pool.network_address), int(pool.broadcast_address)
        cls = type(pool)
        at = start
        while at <= end:
            found = self._range_at(pool.version, at)
            if found is not None and found[1] >= at + size - 1:
                # skip every block wholly inside this range: resume at the first block
                # whose last address lies past it
                at += ((found[1] - at + 1) // size) * size
                continue
            yield cls((at, prefix))
            at += size


NONE = Reserved()

__all__ = ["NONE", "Reserved", "Skip"]
