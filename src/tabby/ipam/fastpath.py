"""tabby-ipam's exec path on SQLite: the steady state of ADD and DEL, one transaction each.

tabby-ipam is executed once per pod, so what it imports is paid on every pod;
the engine (:mod:`tabby.ipam.engine`) needs the model, which costs several
times Python's own start-up to import. Most ADDs need none of it: the node
holds an affine block with a free address, or claims the next free block of a
pool. This module does exactly that, and DEL, on the records' stored JSON
through :mod:`tabby.store.sqlitedb`, in one ``BEGIN IMMEDIATE`` transaction
(which also makes its reads and writes one atomic step: no compare-and-swap can
fail inside it). Whatever else a request needs, it declines (saying why, or
``False``; nothing written) and the plugin runs the engine::

    ADD  the handle exists (a repeated ADD)          -> engine (its idempotent answer)
         any IPReservation exists                    -> engine (it skips reserved addresses)
         the handle id is not a plain object name    -> engine (hashed names)
         a usable pool has a nodeSelector            -> engine (the selector language)
         no usable pool; a pending affinity          -> engine (its error; its repair)
         no block to claim (autoAllocateBlocks off,  -> engine (borrows from other
           maxBlocksPerHost reached, pools full)          nodes' blocks, or says why not)
         anything malformed or unusual               -> engine (which names the error)
    DEL  the handle id is not a plain object name    -> engine

What it writes is what the engine writes for the same request, as the model
renders it (:mod:`tabby.ipam.rawrecords`): the handle first, then a claimed
block's affinity (confirmed: in one transaction there is no pending state to
show), then each block; and it hands out the same addresses
(``tests/unit/test_ipam_fastpath.py`` replays requests on both, claims and
DELs included, and compares the stores after each). Imports:
:mod:`tabby.store.sqlitedb`, :mod:`tabby.cni.wire` (JSON),
:mod:`tabby.ipam.cidrtext` (CIDRs: ``ipaddress`` would cost more than the rest
together), :mod:`tabby.ipam.rawrecords` and :mod:`tabby.errors`.
"""

from __future__ import annotations

from tabby.cni import wire
from tabby.ipam.cidrtext import Net, network
from tabby.ipam.rawrecords import (
    AFFINITIES,
    ANY_NODE,
    BLOCKS,
    CONFIGS,
    HANDLES,
    POOLS,
    RESERVATIONS,
    RESERVED_HANDLE,
    WORKLOAD,
    dumps,
    is_plain_name,
    name_prefix,
    record,
)
from tabby.ipam.rawrecords import block_name as _block_name
from tabby.store import sqlitedb as db

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs every pod ~3 ms
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Mapping, Sequence
    from typing import Any

    Doc = dict[str, Any]
    # (address with its block's prefix, its IP version, gateway or None), as text: what
    # the plugin reports
    Address = tuple[str, int, str | None]
    Reserve = tuple[int, int, str]  # ordinals held back at the start, at the end; note

__all__ = ["NO_ROOM", "add", "release"]

NO_ROOM = "no affine block with room: the engine claims or borrows one"

class _Decline(Exception):
    """This request is not the steady state: leave it to the engine."""


def block_name(cidr: Net) -> str:
    """The block's object name; _Decline for the (hashed) names of ``::/n`` ranges."""
    name = _block_name(cidr)
    if name is None:
        raise _Decline(f"{cidr}: a hashed block name")
    return name


# -- ADD ---------------------------------------------------------------------------------


def add(conn: sqlite3.Connection, path: str, handle_id: str, node: str,
        want: Mapping[int, int], requested: Mapping[int, Sequence[str]],
        attrs: Mapping[str, str], reserve: Mapping[int, Reserve]) -> list[Address] | str:
    """Give ``handle_id`` ``want[v]`` addresses of IP version ``v`` from ``node``'s affine
    blocks, claiming the next free block of the first pool with one when they are full
    (new blocks hold back ``reserve[v]``: as the engine's ``Reservation``), in one
    transaction. Pools: ``requested[v]`` by name or CIDR, in that order; none: all.
    When the engine must do it: why, and nothing written."""
    if not is_plain_name(handle_id):
        return "not a plain object name: a hashed handle name"
    db.begin(conn, path, "IMMEDIATE")
    try:
        work = _Add(conn, handle_id, node, attrs, reserve)
        for version in (4, 6):
            if want.get(version, 0) > 0:
                work.family(version, want[version], requested.get(version, ()))
        taken = work.write()
    except _Decline as e:
        db.rollback(conn)
        return str(e)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        db.rollback(conn)
        return f"malformed records: {type(e).__name__}: {e}"
    except BaseException:
        db.rollback(conn)
        raise
    db.commit(conn, path)
    return taken


class _Pool:
    __slots__ = ("block_size", "cidr", "name")

    def __init__(self, name: str, cidr: Net, block_size: int) -> None:
        self.name, self.cidr, self.block_size = name, cidr, block_size


class _Add:
    """One ADD's transaction: what it read, and what it will write."""

    def __init__(self, c: sqlite3.Connection, handle_id: str, node: str,
                 attrs: Mapping[str, str], reserve: Mapping[int, Reserve]) -> None:
        if db.get_row(c, HANDLES, "", handle_id) is not None or db.list_rows(c, RESERVATIONS):
            raise _Decline("a repeated ADD, or IPReservations to skip")
        self.c, self.handle_id, self.node, self.reserve = c, handle_id, node, reserve
        self.pools = [wire.loads(row[3]) for row in db.list_rows(c, POOLS)]
        self.affinities = [wire.loads(row[3])["spec"] for row in
                           db.list_rows(c, AFFINITIES, "", name_prefix(f"{node}-"))]
        self.attribute = {"handle_id": handle_id, "secondary": dict(sorted(attrs.items()))}
        self.blocks: dict[str, Doc] = {}  # name -> block, as it will be written
        self.created: dict[str, Doc] = {}  # name -> new record (blocks and affinities)
        self.taken: list[tuple[str, int]] = []  # (block name, ordinal)

    def family(self, version: int, need: int, requested: Sequence[str]) -> None:
        """The engine's ``_assign_family`` short of borrowing: affine blocks, then claims."""
        pools = _usable(self.pools, version, requested)
        mine = [a for a in self.affinities if a["node"] == self.node
                and _net(a["cidr"]).version == version]
        if any(a.get("state", "confirmed") == "pending" for a in mine):
            raise _Decline("a pending affinity to repair")
        need = self._take(_ranked(mine, pools), need)
        if need == 0:
            return
        strict, auto, most = self._config()
        claimed = len(mine)
        while need > 0:
            if not auto or (most and claimed >= most):
                raise _Decline(NO_ROOM)
            cidr = self._claim(pools, strict)
            claimed += 1
            need = self._take([cidr], need)

    def _take(self, cidrs: list[Net], need: int) -> int:
        """Ordinals from the first blocks with room, one new attribute per block; what
        is still needed."""
        for cidr in cidrs:
            if need == 0:
                break
            name = block_name(cidr)
            block = self.blocks.get(name) or self._read(BLOCKS, name)
            if block is None:
                continue
            spec = block["spec"]
            if spec["affinity"] != f"host:{self.node}" or not spec["unallocated"]:
                continue
            allocations, free = spec["allocations"], spec["unallocated"]
            if len(allocations) != cidr.num_addresses or spec["cidr"] != str(cidr):
                raise _Decline("malformed block")
            take = free[:need]
            if any(type(o) is not int or allocations[o] is not None for o in take):
                raise _Decline("malformed block")
            for o in take:
                allocations[o] = len(spec["attributes"])
                self.taken.append((name, o))
            spec["unallocated"] = free[len(take):]
            spec["attributes"].append(self.attribute)
            self.blocks[name] = block
            need -= len(take)
        return need

    def _read(self, resource: str, name: str) -> Doc | None:
        row = db.get_row(self.c, resource, "", name)
        return None if row is None else wire.loads(row[3])

    def _config(self) -> tuple[bool, bool, int]:
        """IPAMConfiguration ``default``: (strictAffinity, autoAllocateBlocks,
        maxBlocksPerHost), the model's defaults where there is none."""
        spec = (self._read(CONFIGS, "default") or {}).get("spec") or {}
        return (spec.get("strictAffinity", False) is True,
                spec.get("autoAllocateBlocks", True) is True,
                int(spec.get("maxBlocksPerHost", 0) or 0))

    def _claim(self, pools: list[_Pool], strict: bool) -> Net:
        """The engine's ``_claim``: the lowest block of the first pool that has one no
        block exists for; its affinity (confirmed) and the new block, to be written."""
        existing = {wire.loads(row[3])["spec"]["cidr"] for row in db.list_rows(self.c, BLOCKS)}
        existing.update(b["spec"]["cidr"] for b in self.blocks.values())
        for pool in pools:
            for cidr in pool.cidr.subnets(pool.block_size):
                if str(cidr) not in existing:
                    self._new_block(cidr, strict)
                    return cidr
        raise _Decline(NO_ROOM)

    def _new_block(self, cidr: Net, strict: bool) -> None:
        """``records.claim``'s records as they end: the affinity confirmed, the block as
        ``blocks.new_block`` makes it."""
        dashed = block_name(cidr)
        affinity = f"{self.node}-{dashed}"
        if not is_plain_name(affinity) or self._read(AFFINITIES, affinity) is not None:
            raise _Decline("an affinity name to hash, or one left over")
        self.created[affinity] = record("BlockAffinity", affinity, {
            "node": self.node, "cidr": str(cidr), "state": "confirmed"})
        size = cidr.num_addresses
        start, end, note = self.reserve.get(cidr.version, (0, 0, ""))
        held = set() if start + end >= size else {*range(start), *range(size - end, size)}
        block = record("IPAMBlock", dashed, {
            "cidr": str(cidr), "affinity": f"host:{self.node}",
            "allocations": [0 if i in held else None for i in range(size)],
            "unallocated": [i for i in range(size) if i not in held],
            "attributes": [{"handle_id": RESERVED_HANDLE, "secondary": {"note": note}}]
            if held else [],
            "strictAffinity": strict, "deleted": False})
        self.created[dashed] = self.blocks[dashed] = block

    def write(self) -> list[Address]:
        """The handle first (as the engine counts before it allocates), then the claimed
        affinities, then the blocks; the addresses taken."""
        counts: dict[str, int] = {}
        for name, _ in self.taken:
            cidr = self.blocks[name]["spec"]["cidr"]
            counts[cidr] = counts.get(cidr, 0) + 1
        handle = record("IPAMHandle", self.handle_id, {
            "handleID": self.handle_id, "block": dict(sorted(counts.items()))})
        db.put_row(self.c, HANDLES, "", self.handle_id, dumps(handle), create=True)
        for name, doc in self.created.items():
            if doc["kind"] == "BlockAffinity":
                db.put_row(self.c, AFFINITIES, "", name, dumps(doc), create=True)
        for name, block in self.blocks.items():
            db.put_row(self.c, BLOCKS, "", name, dumps(block), create=name in self.created)
        taken = [(_net(self.blocks[name]["spec"]["cidr"]), name, o) for name, o in self.taken]
        taken.sort(key=lambda t: (t[0].version, t[0].value + t[2]))  # as Assignment.of
        return [_address(cidr, self.blocks[name]["spec"], o) for cidr, name, o in taken]


def _usable(pools: list[Doc], version: int, requested: Sequence[str]) -> list[_Pool]:
    """``tabby.ipam.pools.usable_pools`` for a node any pool's selector matches."""
    of_version = []
    for doc in pools:
        spec, cidr = doc["spec"], _net(doc["spec"]["cidr"])
        if cidr.version == version:
            of_version.append((_Pool(doc["metadata"]["name"], cidr, int(spec["blockSize"])),
                               spec))
    if requested:
        candidates = [(p, spec) for wanted in requested for p, spec in of_version
                      if wanted in (p.name, str(p.cidr))]
    else:
        candidates = sorted(of_version, key=lambda ps: ps[0].cidr.value)
    chosen = []
    for pool, spec in candidates:
        if spec.get("disabled", False) is True or WORKLOAD not in spec.get(
                "allowedUses", [WORKLOAD]):
            continue
        if spec.get("nodeSelector", "").strip() not in ANY_NODE:
            raise _Decline("a nodeSelector to evaluate")
        chosen.append(pool)
    if not chosen:
        raise _Decline("no usable pool: the engine says why")
    return chosen


def _ranked(affinities: list[Doc], pools: list[_Pool]) -> list[Net]:
    """The affinities' blocks in ``pools``, in the engine's order (pool order, then
    lowest CIDR)."""
    order = {pool.name: i for i, pool in enumerate(pools)}
    ranked = []
    for spec in affinities:
        cidr = _net(spec["cidr"])
        pool = next((p for p in pools if cidr.within(p.cidr)), None)
        if pool is not None:
            ranked.append(((order[pool.name], cidr.value), cidr))
    return [cidr for _, cidr in sorted(ranked, key=lambda r: r[0])]


def _address(cidr: Net, spec: Doc, ordinal: int) -> Address:
    """The address with its block's prefix, and the gateway (network + 1) when the block
    holds it back for that (tabby-ipam's reservation), as ``plugin._ips`` reports it."""
    gateway = None
    if cidr.num_addresses > 2:
        owner = spec["allocations"][1]
        if owner is not None and spec["attributes"][owner]["handle_id"] == RESERVED_HANDLE:
            gateway = cidr.address(1)
    return f"{cidr.address(ordinal)}/{cidr.prefixlen}", cidr.version, gateway


def _net(text: str) -> Net:
    """A CIDR as the model writes it; _Decline for any other text (the engine reads it)."""
    net = network(text)
    if net is None:
        raise _Decline(f"a CIDR to read with ipaddress: {text!r}")
    return net


# -- DEL ---------------------------------------------------------------------------------


def release(conn: sqlite3.Connection, path: str, handle_id: str) -> bool:
    """Free everything ``handle_id`` holds and delete its handle, in one transaction
    (nothing held: nothing written). False (and nothing written) when the engine must."""
    if not is_plain_name(handle_id):
        return False
    db.begin(conn, path, "IMMEDIATE")
    try:
        _release(conn, handle_id)
    except (_Decline, KeyError, TypeError, ValueError, IndexError, AttributeError):
        db.rollback(conn)
        return False
    except BaseException:
        db.rollback(conn)
        raise
    db.commit(conn, path)
    return True


def _release(c: sqlite3.Connection, handle_id: str) -> None:
    row = db.get_row(c, HANDLES, "", handle_id)
    if row is None:
        return
    handle = wire.loads(row[3])
    if handle["spec"]["handleID"] != handle_id:
        raise _Decline("another id under this name: the engine reports it")
    for cidr_text in sorted(handle["spec"].get("block") or {}):
        name = block_name(_net(cidr_text))
        block_row = db.get_row(c, BLOCKS, "", name)
        if block_row is None:
            continue
        block = wire.loads(block_row[3])
        if _free(block["spec"], handle_id):
            db.put_row(c, BLOCKS, "", name, dumps(block), create=False)
    db.delete_row(c, HANDLES, "", handle_id, row[3])


def _free(spec: Doc, handle_id: str) -> bool:
    """``blocks.release`` of the handle's ordinals, in place; False if it holds none."""
    attributes, allocations = spec["attributes"], spec["allocations"]
    owned = {i for i, a in enumerate(attributes) if a["handle_id"] == handle_id}
    freed = [o for o, a in enumerate(allocations) if a is not None and a in owned]
    if not freed:
        return False
    for o in freed:
        allocations[o] = None
    used = sorted({a for a in allocations if a is not None})
    renumber = {old: new for new, old in enumerate(used)}
    spec["allocations"] = [None if a is None else renumber[a] for a in allocations]
    spec["unallocated"] = [*spec["unallocated"], *freed]
    spec["attributes"] = [attributes[i] for i in used]
    return True
