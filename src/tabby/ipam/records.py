"""Compare-and-swap operations on IPAM's records, each retried a bounded number of times.

Every write here is conditional: create-if-absent, or update/delete at the
revision last read. On a lost race the record is read again and the change
recomputed; after ``attempts`` losses the operation raises ``Conflict``.
The engine (``tabby.ipam.engine``) composes these into assign and release.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from collections.abc import Callable, Mapping

from tabby.errors import Conflict, IPAMError, NotFound
from tabby.ipam import blocks as blk
from tabby.ipam.blocks import Reservation
from tabby.model import (
    BlockAffinity,
    IPAMBlock,
    IPAMHandle,
    ObjectMeta,
    affinity_name,
    block_name,
    handle_name,
)
from tabby.model.ipam import (
    BlockAffinitySpec,
    IPAMBlockSpec,
    IPAMHandleSpec,
    legacy_handle_name,
)
from tabby.store.client import Client

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Held = tuple[IPAddress, IPNetwork]  # an address and the block it lives in
Select = Callable[[IPAMBlockSpec], tuple[int, ...]]  # picks ordinals to release
Accept = Callable[[IPAMBlock], bool]  # may this block serve the request?

UNKNOWN = object()  # "the handle's current state was not read yet"


class Records:
    def __init__(self, client: Client, attempts: int) -> None:
        self.client = client
        self.attempts = attempts

    # -- reads ------------------------------------------------------------------
    def block(self, cidr: IPNetwork) -> IPAMBlock | None:
        return self.client.try_get(IPAMBlock, block_name(cidr))

    def handle(self, handle_id: str) -> IPAMHandle | None:
        """The handle, under its name or (written by an older tabby) its legacy name."""
        name = handle_name(handle_id)
        handle = self.client.try_get(IPAMHandle, name)
        if handle is not None and handle.spec.handle_id != handle_id:
            raise IPAMError(f"handle ids {handle_id!r} and {handle.spec.handle_id!r} map to one"
                            f" IPAMHandle name {name!r}; use another id")
        legacy = legacy_handle_name(handle_id)
        if handle is None and legacy != name:  # only ids that are not valid names pay this
            old = self.client.try_get(IPAMHandle, legacy)
            handle = old if old is not None and old.spec.handle_id == handle_id else None
        return handle

    # -- handles -------------------------------------------------------------------
    def count(self, handle_id: str, cidr: IPNetwork, delta: int,
              known: IPAMHandle | object | None = UNKNOWN) -> IPAMHandle | None:
        """Add ``delta`` to the handle's count for ``cidr``; the handle is created on first
        use and deleted when it holds nothing. ``known`` (the handle as last read) saves a
        read when it is still current. Returns the handle as written (None: deleted)."""
        name = handle_name(handle_id)
        for _ in range(self.attempts):
            handle = self.handle(handle_id) if known is UNKNOWN else known
            known = UNKNOWN
            assert handle is None or isinstance(handle, IPAMHandle)
            counts = dict(handle.spec.blocks) if handle else {}
            counts[str(cidr)] = counts.get(str(cidr), 0) + delta
            spec = IPAMHandleSpec(handle_id, tuple(sorted(
                (k, v) for k, v in counts.items() if v > 0)))
            try:
                if handle is None:
                    if not spec.blocks:
                        return None
                    return self.client.create(IPAMHandle(ObjectMeta(name), spec))
                if not spec.blocks:
                    self.client.delete(IPAMHandle, handle.meta.name,
                                       resource_version=handle.meta.resource_version)
                    return None
                return self.client.update(dataclasses.replace(handle, spec=spec), handle)
            except (Conflict, NotFound):
                continue
        raise Conflict(f"IPAMHandle/{name}: kept changing; try again")

    def delete_handle(self, handle: IPAMHandle) -> None:
        """CAS delete; Conflict if it changed since read (NotFound is fine)."""
        with contextlib.suppress(NotFound):
            self.client.delete(IPAMHandle, handle.meta.name,
                               resource_version=handle.meta.resource_version)

    # -- blocks ----------------------------------------------------------------------
    def allocate(self, block: IPAMBlock | None, handle_id: str, count: int,
                 attrs: Mapping[str, str], accept: Accept,
                 skip: Callable[[int], bool] | None = None) -> tuple[int, ...]:
        """Allocate up to ``count`` ordinals of ``block`` (re-read on each lost race),
        never one ``skip`` names (reserved by an IPReservation).

        A write whose reply was lost and that the store retried reports Conflict
        although it landed (``tabby.store.etcd``): the re-read block then holds
        ordinals of ``handle_id`` it did not hold before, and those are the answer,
        not a second allocation."""
        name = block.meta.name if block is not None else ""
        before = set(blk.ordinals_of(block.spec, handle_id)) if block is not None else set()
        for _ in range(self.attempts):
            if block is None:
                return ()
            landed = tuple(o for o in blk.ordinals_of(block.spec, handle_id) if o not in before)
            if landed:
                return landed[:count]
            if not accept(block):
                return ()
            spec, got = blk.allocate(block.spec, count, handle_id, attrs, skip)
            if not got:
                return ()
            try:
                self.client.update(dataclasses.replace(block, spec=spec), block)
                return got
            except NotFound:
                return ()
            except Conflict:
                block = self.client.try_get(IPAMBlock, name)
        raise Conflict(f"IPAMBlock/{name}: kept changing while allocating; try again")

    def release(self, cidr: IPNetwork, select: Select, *, fix_handles: bool = True,
                known: IPAMBlock | None = None) -> list[Held]:
        """Free the ordinals ``select`` picks in ``cidr``; then (unless the caller deals
        with the handle itself) lower the owners' handle counts. ``known`` (the block as
        just read) saves the first read."""
        name = block_name(cidr)
        for _ in range(self.attempts):
            block, known = known or self.client.try_get(IPAMBlock, name), None
            ordinals = select(block.spec) if block is not None else ()
            if block is None or not ordinals:
                return []
            owners = [blk.owner(block.spec, o) for o in ordinals]
            try:
                self.client.update(dataclasses.replace(
                    block, spec=blk.release(block.spec, ordinals)), block)
            except (Conflict, NotFound):
                continue
            per_handle: dict[str, int] = {}
            for attr in owners:
                if attr is not None and attr.handle_id != blk.RESERVED_HANDLE:
                    per_handle[attr.handle_id] = per_handle.get(attr.handle_id, 0) + 1
            for handle_id, n in per_handle.items() if fix_handles else ():
                self.count(handle_id, cidr, -n)
            return [(blk.address(block.spec, o), cidr) for o in ordinals]
        raise Conflict(f"IPAMBlock/{name}: kept changing while releasing; try again")

    def release_block(self, node: str, cidr: IPNetwork, *, keep_nonempty: bool) -> bool:
        """Delete ``node``'s block if empty (else, unless ``keep_nonempty``, clear its
        affinity). True if the node no longer owns the block because of this call."""
        name = block_name(cidr)
        for _ in range(self.attempts):
            block = self.client.try_get(IPAMBlock, name)
            if block is None or block.node != node:
                return False
            try:
                if blk.is_empty(block.spec):
                    self.client.delete(IPAMBlock, name,
                                       resource_version=block.meta.resource_version)
                elif keep_nonempty:
                    return False
                else:
                    spec = dataclasses.replace(block.spec, affinity=None)
                    self.client.update(dataclasses.replace(block, spec=spec), block)
                return True
            except (Conflict, NotFound):
                continue  # someone allocated or released meanwhile: look again
        raise Conflict(f"IPAMBlock/{name}: kept changing while releasing; try again")

    # -- affinities ---------------------------------------------------------------------
    def claim(self, node: str, cidr: IPNetwork, *, strict_affinity: bool,
              reservation: Reservation | None) -> bool:
        """Claim ``cidr`` for ``node``: affinity pending -> block created (the arbiter)
        -> affinity confirmed. False if another node won the block."""
        pending = BlockAffinity(ObjectMeta(affinity_name(node, cidr)),
                                BlockAffinitySpec(node, cidr, "pending"))
        created: BlockAffinity | None = None
        try:
            created = self.client.create(pending)
        except Conflict:  # ours already (an earlier try, or a sibling), or a name that
            if not _names(self.client.try_get(BlockAffinity, pending.meta.name), node, cidr):
                return False  # reads two ways and is another node's: leave this block
        spec = blk.new_block(cidr, node, strict_affinity=strict_affinity,
                             reservation=reservation)
        try:
            self.client.create(IPAMBlock(ObjectMeta(block_name(cidr)), spec))
        except Conflict:
            winner = self.block(cidr)
            if winner is None or winner.node != node:
                self.delete_affinity(node, cidr)
                return False
            # a sibling process of this node won the block: it is ours all the same
        if created is not None:  # confirm what we wrote, without reading it back
            confirmed = dataclasses.replace(created.spec, state="confirmed")
            try:
                self.client.update(dataclasses.replace(created, spec=confirmed), created)
                return True
            except (Conflict, NotFound):
                pass  # a sibling moved it: confirm from a fresh read
        self.confirm(node, cidr)
        return True

    def confirm(self, node: str, cidr: IPNetwork) -> None:
        name = affinity_name(node, cidr)
        for _ in range(self.attempts):
            aff = self.client.try_get(BlockAffinity, name)
            if aff is not None and not _names(aff, node, cidr):
                raise IPAMError(f"BlockAffinity/{name} is node {aff.spec.node!r}'s claim of"
                                f" {aff.spec.cidr}, not {node!r}'s of {cidr}: the two share a"
                                " name; rename one of the nodes")
            try:
                if aff is None:
                    self.client.create(BlockAffinity(ObjectMeta(name),
                                                     BlockAffinitySpec(node, cidr, "confirmed")))
                elif aff.spec.state != "confirmed":
                    spec = dataclasses.replace(aff.spec, state="confirmed")
                    self.client.update(dataclasses.replace(aff, spec=spec), aff)
                return
            except (Conflict, NotFound):
                continue
        raise Conflict(f"BlockAffinity/{name}: kept changing while confirming; try again")

    def delete_affinity(self, node: str, cidr: IPNetwork) -> None:
        name = affinity_name(node, cidr)
        for _ in range(self.attempts):
            aff = self.client.try_get(BlockAffinity, name)
            if aff is None or not _names(aff, node, cidr):
                return
            try:
                self.client.delete(BlockAffinity, name, resource_version=aff.meta.resource_version)
                return
            except NotFound:
                return
            except Conflict:
                continue
        raise Conflict(f"BlockAffinity/{name}: kept changing while deleting; try again")


def _names(aff: BlockAffinity | None, node: str, cidr: IPNetwork) -> bool:
    """Is ``aff`` (None: gone) node's claim of cidr? Affinity names kept from before can
    read two ways (see ``affinity_name``); the spec says whose claim it is."""
    return aff is None or (aff.spec.node == node and aff.spec.cidr == cidr)
