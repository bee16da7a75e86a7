"""The IPAM engine: Calico's block-and-affinity address management over a Store.

Records (``tabby.model.ipam``): IPAMBlock (one block, its allocations),
BlockAffinity (``<node>-<block>``: node N claimed block B), IPAMHandle (an
allocation owner -> blocks and counts), IPAMConfiguration ``default``.

assign(handle, node, ...), per IP version::

    usable pools (enabled, allowedUses has Workload, nodeSelector matches the
    node's labels; requested pools only, in the order given)
      1. the node's affine blocks in those pools (listed by name prefix
         ``<node>-``, no scan of all blocks), pool order then lowest CIDR
      2. claim the lowest free block, pool by pool, unless autoAllocateBlocks
         is off or the node holds maxBlocksPerHost blocks:
           BlockAffinity pending -> create IPAMBlock (create-if-absent: the
           arbiter, two writers never own one block) -> affinity confirmed;
           on losing: drop the pending affinity, try the next free block
      3. borrow from other blocks with room, unless strictAffinity
         (then only from blocks nobody is affine to)
      4. PoolExhausted

IPReservations (``tabby.ipam.reserved``) are read once per call that has
something to assign (one list, not a read per address or block): reserved
addresses inside a block are skipped, and a block reserved whole is neither
claimed (a reserved run of blocks is jumped over) nor borrowed. Addresses
held before a reservation appeared stay held (``ipam check`` reports them).

Inside a block: handle count += n (CAS) *before* the block update (CAS), so a
crash between leaves a handle that over-counts (release repairs it), never an
allocation nobody can find. A block update that failed without an answer
(``Unavailable``) counts as such a crash: it may land later, so its count
stays. Every write is compare-and-swap, retried a
bounded number of times (``tabby.ipam.records``). assign is idempotent per
handle and all-or-nothing across families: what one call took is released
if any family fails. Steady state (an affine block has room) costs three
reads (the handle, the pools, the node's affinities), one read per affine
block tried (lowest first), and two writes (handle, then block).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tabby.errors import AddressNotFound, Conflict, PoolExhausted, TabbyError
from tabby.ipam import blocks as blk
from tabby.ipam.blocks import Reservation
from tabby.ipam.pools import block_cidrs, block_for, pool_of, usable_pools
from tabby.ipam.records import UNKNOWN, Held, Records, Select
from tabby.ipam.reserved import NONE, Reserved
from tabby.model import (
    BlockAffinity,
    IPAMBlock,
    IPAMConfiguration,
    IPAMHandle,
    IPPool,
    IPReservation,
    Node,
    block_name,
)
from tabby.model.ipam import IPAMBlockSpec, IPAMConfigSpec, affinity_prefix, handle_prefix
from tabby.store.client import Client

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ATTEMPTS = 100  # compare-and-swap retries per record before giving up with Conflict
CONFIG_NAME = "default"
_ANY_NODE = ("", "all()")


def _sort_key(ip: IPAddress) -> tuple[int, int]:
    return ip.version, int(ip)


def _net_key(net: IPNetwork) -> tuple[int, int]:
    return net.version, int(net.network_address)


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a handle holds: addresses (IPv4 first, ascending) and their blocks."""

    handle_id: str
    addresses: tuple[IPAddress, ...]
    blocks: tuple[IPNetwork, ...]

    @classmethod
    def of(cls, handle_id: str, held: Iterable[Held]) -> Assignment:
        pairs = sorted(set(held), key=lambda h: _sort_key(h[0]))
        return cls(handle_id, tuple(a for a, _ in pairs), tuple(b for _, b in pairs))

    def of_version(self, version: int) -> tuple[Held, ...]:
        return tuple((a, b) for a, b in zip(self.addresses, self.blocks, strict=True)
                     if a.version == version)


@dataclass(slots=True)
class _Request:
    """One assign call: who asks, and what it has taken so far (for undo)."""

    handle_id: str
    node: str
    attrs: dict[str, str]
    handle: IPAMHandle | object | None  # as last written/read, or UNKNOWN
    taken: list[Held] = field(default_factory=list)
    reserved: Reserved = NONE
    _config: IPAMConfigSpec | None = None


class IPAM:
    """Address management on a typed store client (thread-safe: holds no state)."""

    def __init__(self, client: Client, *, reservations: Mapping[int, Reservation] | None = None,
                 attempts: int = ATTEMPTS,
                 known_blocks: Callable[[], Iterable[IPNetwork]] | None = None) -> None:
        self.client = client
        # Where blocks already exist, as far as the caller knows (the agent: its
        # cache); without it a claim lists every block. A stale answer costs a
        # lost create race (blocks are created by compare-and-swap), never a block.
        self.known_blocks = known_blocks
        self.reservations = dict(reservations or {})  # IP version -> reservation for new blocks
        self.records = Records(client, attempts)
        self.attempts = attempts

    # -- assign ----------------------------------------------------------------
    def assign(self, handle_id: str, node: str, num_v4: int = 1, num_v6: int = 1,
               attrs: Mapping[str, str] | None = None, pools_v4: Sequence[str] = (),
               pools_v6: Sequence[str] = (), *, pools: Sequence[IPPool] | None = None,
               labels: Mapping[str, str] | None = None,
               handle: IPAMHandle | object | None = UNKNOWN,
               reserved: Reserved | None = None) -> Assignment:
        """Give ``handle_id`` ``num_v4`` IPv4 and ``num_v6`` IPv6 addresses (idempotent:
        what the handle already holds counts; all of it is returned).

        A caller that already holds the pools, the node's labels or the handle as
        just read (the agent: from its cache, and its own read) passes them, saving
        the round trips; every write is still compare-and-swap, so a stale view
        costs a retry, never a duplicate. ``reserved`` (the IPReservations) is
        listed here when not given."""
        if handle is UNKNOWN:
            handle = self.records.handle(handle_id)
        assert handle is None or isinstance(handle, IPAMHandle)
        held = self._held(handle_id, handle)
        want = {4: (num_v4, tuple(pools_v4)), 6: (num_v6, tuple(pools_v6))}
        need = {v: n - sum(1 for a, _ in held if a.version == v) for v, (n, _) in want.items()}
        if all(n <= 0 for n in need.values()):
            return Assignment.of(handle_id, held)
        pools_all = list(pools) if pools is not None else self.client.list(IPPool)
        labels = dict(labels) if labels is not None else self._labels(node, pools_all)
        chosen = {v: usable_pools(pools_all, v, node, labels, want[v][1])
                  for v in (4, 6) if need[v] > 0}  # fails before anything is taken
        if reserved is None:
            reserved = Reserved.of(self.client.list(IPReservation))
        req = _Request(handle_id, node, dict(attrs or {}), handle, reserved=reserved)
        try:
            for version, pools in chosen.items():
                self._assign_family(req, version, need[version], pools)
        except BaseException as failure:
            try:
                self._undo(req)
            except TabbyError as e:  # keep the first error; say what is left behind
                failure.add_note(f"giving back {_texts(req.taken)} also failed: {e}")
            raise
        return Assignment.of(handle_id, [*held, *req.taken])

    def _assign_family(self, req: _Request, version: int, need: int,
                       pools: list[IPPool]) -> None:
        mine = [a for a in self.affinities(req.node) if a.spec.cidr.version == version]
        order = {p.meta.name: i for i, p in enumerate(pools)}

        def rank(cidr: IPNetwork) -> tuple[int, int]:
            pool = pool_of(pools, cidr)
            return order[pool.meta.name] if pool else len(order), int(cidr.network_address)

        affine = sorted((a.spec.cidr for a in mine if pool_of(pools, a.spec.cidr)), key=rank)
        self._repair_pending(req.node, [a for a in mine if a.spec.state == "pending"])
        for cidr in affine:
            need -= self._take(req, cidr, need, "affine")
            if need == 0:
                return
        tried = set(affine)
        config = self._config(req)
        claimed = len(mine)
        for _ in range(self.attempts):  # each round claims a block nobody held a moment ago
            if need <= 0 or not config.auto_allocate_blocks or (
                    config.max_blocks_per_host and claimed >= config.max_blocks_per_host):
                break
            new = self._claim(req.node, pools, config, req.reserved)
            if new is None:
                break
            claimed += 1
            tried.add(new)
            need -= self._take(req, new, need, "affine")
        mode = "strict" if config.strict_affinity else "borrow"
        if need > 0:  # borrow: blocks of other nodes (or of nobody, under strictAffinity)
            others = [b for b in self.client.list(IPAMBlock)
                      if b.spec.cidr not in tried and req.reserved.free_count(b.spec)
                      and pool_of(pools, b.spec.cidr) and _accepts(b, req.node, mode)]
            for block in sorted(others, key=lambda b: rank(b.spec.cidr)):
                need -= self._take(req, block.spec.cidr, need, mode, block)
                if need == 0:
                    break
        if need > 0:
            raise PoolExhausted(_exhausted(req.node, version, pools, config, req.reserved))

    def _take(self, req: _Request, cidr: IPNetwork, want: int, mode: str,
              block: IPAMBlock | None = None) -> int:
        """Allocate up to ``want`` addresses of ``cidr`` to the request; returns how many.
        mode: ``affine`` (still the node's block), ``borrow`` (any block), ``strict``
        (the node's own, or nobody's)."""
        block = block or self.records.block(cidr)
        if block is None or not _accepts(block, req.node, mode):
            return 0
        skip = req.reserved.skip(cidr)
        promised = min(want, req.reserved.free_count(block.spec))
        if promised == 0:
            return 0
        # the handle first, so an allocation is never without its handle
        req.handle = self.records.count(req.handle_id, cidr, promised, req.handle)
        # Only an allocate that answered gives the unused count back. One that raised
        # (the store unavailable) may still land: etcd commits a write whose reply was
        # lost once it has a quorum again. Its count then stays, so that releasing the
        # handle (the runtime's DEL) finds that allocation; an over-count is repaired
        # by release, while an allocation without its handle would leak for good.
        got = self.records.allocate(block, req.handle_id, promised, req.attrs,
                                    lambda b: _accepts(b, req.node, mode), skip)
        if len(got) < promised:
            req.handle = self.records.count(req.handle_id, cidr, len(got) - promised)
        req.taken.extend((blk.address(block.spec, o), cidr) for o in got)
        return len(got)

    def _repair_pending(self, node: str, pending: list[BlockAffinity]) -> None:
        """Confirm pending affinities whose block the node owns (a claim that stopped
        between creating the block and confirming); others are a claim in progress."""
        for aff in pending:
            block = self.records.block(aff.spec.cidr)
            if block is not None and block.node == node:
                self.records.confirm(node, aff.spec.cidr)

    def _claim(self, node: str, pools: list[IPPool], config: IPAMConfigSpec,
               reserved: Reserved = NONE) -> IPNetwork | None:
        """Claim the lowest free block of the first pool that has one (not reserved whole);
        None if none has."""
        if self.known_blocks is not None:
            existing = {str(cidr) for cidr in self.known_blocks()}
        else:
            existing = {str(i.value.get("spec", {}).get("cidr", "")) for i in
                        self.client.store.list(IPAMBlock.KIND.resource)}
        for pool in pools:
            cidrs = reserved.blocks(pool.spec.cidr, pool.spec.block_size) if reserved \
                else block_cidrs(pool)
            for cidr in cidrs:
                if str(cidr) not in existing and self.records.claim(
                        node, cidr, strict_affinity=config.strict_affinity,
                        reservation=self.reservations.get(cidr.version)):
                    return cidr
        return None

    def _undo(self, req: _Request) -> None:
        """Give back what one assign call took (all-or-nothing)."""
        by_block: dict[IPNetwork, list[int]] = {}
        for ip, cidr in req.taken:
            by_block.setdefault(cidr, []).append(int(ip) - int(cidr.network_address))
        for cidr, ordinals in by_block.items():
            self.records.release(cidr, _owned_among(ordinals, req.handle_id))

    # -- lookups ----------------------------------------------------------------------
    def addresses_of(self, handle_id: str) -> tuple[IPAddress, ...]:
        held = self._held(handle_id, self.records.handle(handle_id))
        return Assignment.of(handle_id, held).addresses

    def affine_blocks(self, node: str) -> tuple[IPNetwork, ...]:
        """Blocks ``node`` has claimed (confirmed affinities), IPv4 first, ascending."""
        cidrs = [a.spec.cidr for a in self.affinities(node) if a.spec.state == "confirmed"]
        return tuple(sorted(cidrs, key=_net_key))

    def affinities(self, node: str) -> list[BlockAffinity]:
        return [a for a in self.client.list(BlockAffinity, prefix=affinity_prefix(node))
                if a.spec.node == node]

    def handles(self, prefix: str = "") -> tuple[str, ...]:
        """Ids of the handles whose id starts with ``prefix`` (listed by name prefix)."""
        listing = self.client.list(IPAMHandle, prefix=handle_prefix(prefix))
        return tuple(h.spec.handle_id for h in listing if h.spec.handle_id.startswith(prefix))

    def attributes_of(self, handle_id: str) -> dict[str, str]:
        """The attributes ``handle_id``'s allocations were made with ({} if none)."""
        handle = self.records.handle(handle_id)
        for cidr_text, _ in handle.spec.blocks if handle is not None else ():
            block = self.records.block(ipaddress.ip_network(cidr_text))
            attrs = [a for a in (block.spec.attributes if block else ())
                     if a.handle_id == handle_id]
            if attrs:
                return dict(attrs[0].secondary)
        return {}

    def config(self) -> IPAMConfigSpec:
        cfg = self.client.try_get(IPAMConfiguration, CONFIG_NAME)
        return cfg.spec if cfg is not None else IPAMConfigSpec()

    def _config(self, req: _Request) -> IPAMConfigSpec:
        if req._config is None:
            req._config = self.config()
        return req._config

    def _held(self, handle_id: str, handle: IPAMHandle | None) -> list[Held]:
        held: list[Held] = []
        for cidr_text, _ in handle.spec.blocks if handle is not None else ():
            block = self.records.block(ipaddress.ip_network(cidr_text))
            if block is not None:
                held.extend((blk.address(block.spec, o), block.spec.cidr)
                            for o in blk.ordinals_of(block.spec, handle_id))
        return held

    def _labels(self, node: str, pools: Sequence[IPPool]) -> dict[str, str]:
        if all(p.spec.node_selector.strip() in _ANY_NODE for p in pools):
            return {}  # no pool looks at labels: skip the read
        obj = self.client.try_get(Node, node)
        return dict(obj.meta.labels) if obj is not None else {}

    # -- release ------------------------------------------------------------------------
    def release_handle(self, handle_id: str) -> tuple[IPAddress, ...]:
        """Free everything ``handle_id`` holds; () if nothing (idempotent)."""
        released: list[Held] = []
        for _ in range(self.attempts):
            handle = self.records.handle(handle_id)
            if handle is None:
                break
            for cidr_text, _ in handle.spec.blocks:
                released += self.records.release(
                    ipaddress.ip_network(cidr_text), _owned_by(handle_id), fix_handles=False)
            try:
                self.records.delete_handle(handle)
                break
            except Conflict:
                continue  # the handle grew meanwhile: release that too
        else:
            raise Conflict(f"IPAMHandle {handle_id!r}: kept changing while releasing; try again")
        return Assignment.of(handle_id, released).addresses

    def release_ips(self, ips: Iterable[IPAddress | str]) -> tuple[IPAddress, ...]:
        """Free these addresses; AddressNotFound (and nothing freed) if any is not allocated."""
        by_block: dict[IPNetwork, tuple[IPAMBlock, list[int]]] = {}
        missing = []
        pools = self.client.list(IPPool)
        for ip in sorted({ipaddress.ip_address(ip) for ip in ips}, key=_sort_key):
            known = next((b for b, _ in by_block.values()
                          if blk.ordinal_of(b.spec, ip) is not None), None)
            block = known or self._block_holding(ip, pools)
            ordinal = blk.ordinal_of(block.spec, ip) if block else None
            owner = blk.owner(block.spec, ordinal) if block and ordinal is not None else None
            if block is None or ordinal is None or owner is None:
                missing.append(str(ip))
                continue
            if owner.handle_id == blk.RESERVED_HANDLE:
                missing.append(f"{ip} (reserved in block {block.spec.cidr})")
                continue
            by_block.setdefault(block.spec.cidr, (block, []))[1].append(ordinal)
        if missing:
            raise AddressNotFound(f"not allocated: {', '.join(missing)} (nothing was released;"
                                  " see tabby ipam show)")
        released: list[Held] = []
        for cidr, (block, ordinals) in by_block.items():
            released += self.records.release(cidr, _allocated_among(ordinals), known=block)
        return Assignment.of("", released).addresses

    def release_empty_blocks(self, node: str) -> tuple[IPNetwork, ...]:
        """Give back ``node``'s blocks that hold no address (block CAS-deleted, then affinity)."""
        return self._release_affinities(node, keep_nonempty=True)

    def release_node(self, node: str) -> tuple[IPNetwork, ...]:
        """For a node that is gone: release all its affinities. Empty blocks are deleted;
        blocks still holding addresses keep them but lose the affinity (Calico's rule), so
        they stop counting as the node's and other nodes may use them."""
        return self._release_affinities(node, keep_nonempty=False)

    def _release_affinities(self, node: str, *, keep_nonempty: bool) -> tuple[IPNetwork, ...]:
        released = []
        for aff in self.affinities(node):
            cidr = aff.spec.cidr
            if self.records.release_block(node, cidr, keep_nonempty=keep_nonempty):
                released.append(cidr)
            block = self.records.block(cidr)
            if block is None or block.node != node:  # stale, or just released
                self.records.delete_affinity(node, cidr)
        return tuple(sorted(released, key=_net_key))

    def _block_holding(self, ip: IPAddress, pools: Sequence[IPPool]) -> IPAMBlock | None:
        for pool in pools:
            if pool.version == ip.version and ip in pool.spec.cidr:
                block = self.client.try_get(IPAMBlock, block_name(block_for(pool, ip)))
                if block is not None:
                    return block
        for block in self.client.list(IPAMBlock):  # its pool may be gone
            if blk.ordinal_of(block.spec, ip) is not None:
                return block
        return None


def _accepts(block: IPAMBlock, node: str, mode: str) -> bool:
    if block.node == node:
        return True
    if mode == "affine":
        return False
    return block.spec.affinity is None if mode == "strict" else True


def _exhausted(node: str, version: int, pools: list[IPPool], config: IPAMConfigSpec,
               reserved: Reserved = NONE) -> str:
    names = ", ".join(f"{p.meta.name} ({p.spec.cidr})" for p in pools)
    hints = []
    if any(reserved.overlapping(p.spec.cidr) for p in pools):
        hints.append("IPReservations hold back part of these pools (tabby get ipreservations)")
    if config.strict_affinity:
        hints.append("strictAffinity forbids borrowing from other nodes' blocks")
    if config.max_blocks_per_host:
        hints.append(f"maxBlocksPerHost is {config.max_blocks_per_host}")
    if not config.auto_allocate_blocks:
        hints.append("autoAllocateBlocks is off")
    hint = f" ({'; '.join(hints)})" if hints else "; add a pool or release addresses"
    return f"no free IPv{version} address for node {node!r} in {names}{hint}"


def _texts(held: Iterable[Held]) -> str:
    return ", ".join(str(a) for a, _ in held) or "nothing"


def _owned_by(handle_id: str) -> Select:
    return lambda spec: blk.ordinals_of(spec, handle_id)


def _allocated_among(ordinals: Iterable[int]) -> Select:
    chosen = sorted(set(ordinals))
    return lambda spec: tuple(o for o in chosen if spec.allocations[o] is not None)


def _owned_among(ordinals: Iterable[int], handle_id: str) -> Select:
    chosen = sorted(set(ordinals))

    def select(spec: IPAMBlockSpec) -> tuple[int, ...]:
        return tuple(o for o in chosen
                     if (a := blk.owner(spec, o)) is not None and a.handle_id == handle_id)
    return select


__all__ = ["ATTEMPTS", "IPAM", "Assignment"]
