"""Pure operations on one IPAMBlock's spec: new, allocate, release, inspect.

No I/O here: the engine (``tabby.ipam.engine``) reads a block, calls these to
compute the next version, and writes it back with compare-and-swap.

Ordinal ``i`` of a block is the address ``cidr.network_address + i``.
``allocations[i]`` indexes ``attributes`` (the owner) or is None (free);
``unallocated`` is the hand-out order: new blocks list ordinals ascending,
released ordinals go to the back so an address is not reused at once.

A block may be born with reserved ordinals (``Reservation``: Calico's
HostReservedAttr): the first ``start`` and last ``end`` addresses are held by
``RESERVED_HANDLE`` and never handed out, e.g. a bridge's network, gateway
and broadcast addresses. A block whose only allocations are reserved counts
as empty.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tabby.model.ipam import AllocationAttribute, IPAMBlockSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RESERVED_HANDLE = "tabby-reserved-ipam-handle"


@dataclass(frozen=True, slots=True)
class Reservation:
    """Ordinals held back at both ends of every block an IPAM creates."""

    start: int = 0
    end: int = 0
    note: str = "reserved"

    def ordinals(self, size: int) -> tuple[int, ...]:
        """The reserved ordinals of a block of ``size`` addresses; none if that
        would leave no address to hand out (tiny blocks stay fully usable)."""
        if self.start < 0 or self.end < 0 or self.start + self.end >= size:
            return ()
        return (*range(self.start), *range(size - self.end, size))


def new_block(cidr: IPNetwork, node: str | None, *, strict_affinity: bool = False,
              reservation: Reservation | None = None) -> IPAMBlockSpec:
    size = cidr.num_addresses
    reserved = set(reservation.ordinals(size)) if reservation else set()
    attributes: tuple[AllocationAttribute, ...] = ()
    if reserved:
        assert reservation is not None
        attributes = (AllocationAttribute(RESERVED_HANDLE, (("note", reservation.note),)),)
    return IPAMBlockSpec(
        cidr=cidr,
        affinity=f"host:{node}" if node else None,
        allocations=tuple(0 if i in reserved else None for i in range(size)),
        unallocated=tuple(i for i in range(size) if i not in reserved),
        attributes=attributes,
        strict_affinity=strict_affinity,
    )


def address(spec: IPAMBlockSpec, ordinal: int) -> IPAddress:
    return spec.cidr.network_address + ordinal


def ordinal_of(spec: IPAMBlockSpec, ip: IPAddress) -> int | None:
    """The ordinal of ``ip`` in this block, or None if the block does not hold it."""
    if ip.version != spec.cidr.version or ip not in spec.cidr:
        return None
    return int(ip) - int(spec.cidr.network_address)


def allocate(spec: IPAMBlockSpec, count: int, handle_id: str, attrs: Mapping[str, str],
             skip: Callable[[int], bool] | None = None
             ) -> tuple[IPAMBlockSpec, tuple[int, ...]]:
    """Hand out up to ``count`` ordinals, in ``unallocated`` order, to one new attribute.
    Ordinals ``skip`` names (IPReservations) stay unallocated, in their place."""
    if skip is None:
        take = spec.unallocated[:count]
    else:
        take = tuple(itertools.islice((o for o in spec.unallocated if not skip(o)), count))
    if not take:
        return spec, ()
    index = len(spec.attributes)
    attribute = AllocationAttribute(handle_id, tuple(sorted(attrs.items())))
    allocations = list(spec.allocations)
    for o in take:
        allocations[o] = index
    new = dataclasses.replace(
        spec, allocations=tuple(allocations), unallocated=_without(spec.unallocated, take),
        attributes=(*spec.attributes, attribute))
    return new, tuple(take)


def _without(unallocated: tuple[int, ...], taken: tuple[int, ...]) -> tuple[int, ...]:
    if unallocated[:len(taken)] == taken:  # the usual case: taken from the front
        return unallocated[len(taken):]
    gone = set(taken)
    return tuple(o for o in unallocated if o not in gone)


def release(spec: IPAMBlockSpec, ordinals: Iterable[int]) -> IPAMBlockSpec:
    """Free ``ordinals`` (those allocated), append them to ``unallocated``, and drop
    attributes nobody references any more (renumbering the rest)."""
    allocations = list(spec.allocations)
    freed = [o for o in dict.fromkeys(ordinals) if allocations[o] is not None]
    for o in freed:
        allocations[o] = None
    used = sorted({a for a in allocations if a is not None})
    renumber = {old: new for new, old in enumerate(used)}
    return dataclasses.replace(
        spec,
        allocations=tuple(None if a is None else renumber[a] for a in allocations),
        unallocated=(*spec.unallocated, *freed),
        attributes=tuple(spec.attributes[i] for i in used),
    )


def owner(spec: IPAMBlockSpec, ordinal: int) -> AllocationAttribute | None:
    index = spec.allocations[ordinal]
    return None if index is None else spec.attributes[index]


def ordinals_of(spec: IPAMBlockSpec, handle_id: str) -> tuple[int, ...]:
    owned = {i for i, a in enumerate(spec.attributes) if a.handle_id == handle_id}
    return tuple(o for o, a in enumerate(spec.allocations) if a is not None and a in owned)


def allocated(spec: IPAMBlockSpec) -> list[tuple[int, AllocationAttribute]]:
    """Every allocated ordinal with its owner, reserved ones included."""
    return [(o, spec.attributes[a]) for o, a in enumerate(spec.allocations) if a is not None]


def reserved_count(spec: IPAMBlockSpec) -> int:
    return len(ordinals_of(spec, RESERVED_HANDLE))


def used_count(spec: IPAMBlockSpec) -> int:
    """Addresses held by real owners (reserved ones excluded)."""
    return sum(1 for a in spec.allocations if a is not None) - reserved_count(spec)


def is_empty(spec: IPAMBlockSpec) -> bool:
    return used_count(spec) == 0


def handle_counts(spec: IPAMBlockSpec) -> dict[str, int]:
    """How many addresses each handle holds here (reserved handle excluded)."""
    counts: dict[str, int] = {}
    for _, attr in allocated(spec):
        if attr.handle_id != RESERVED_HANDLE:
            counts[attr.handle_id] = counts.get(attr.handle_id, 0) + 1
    return counts
