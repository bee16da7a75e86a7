"""tabby-ipam's exec path (tabby.ipam.fastpath) against the engine it stands in for.

Two SQLite stores get the same requests: one through the fast path (the engine only
where it declines, as the plugin does), one through the engine alone. After every
step the answers and the stored IPAM records must be equal, and the fast path must
really have done the steady-state work.
"""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabby.cni.install import import_root
from tabby.errors import TabbyError
from tabby.ipam import IPAM, cidrtext, fastpath, rawrecords
from tabby.ipam import blocks as blk
from tabby.ipam.plugin import BUSY_TIMEOUT, RESERVE, _open
from tabby.ipam.pools import USE
from tabby.model import (
    BlockAffinity,
    IPAMBlock,
    IPAMHandle,
    IPPool,
    IPReservation,
    ObjectMeta,
    affinity_name,
    block_name,
    parse_manifest,
)
from tabby.model.base import TABBY_API
from tabby.model.ipam import BlockAffinitySpec
from tabby.model.names import name_prefix, object_name
from tabby.store import open_store, sqlitedb
from tabby.store.client import Client
from tabby.store.sqlite import SQLiteStore

NODE = "n1"
PLUGIN = Path(sys.executable).parent / "tabby-ipam"
RECORDS = (IPAMBlock, IPAMHandle, BlockAffinity)
V4 = {"apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "v4"},
      "spec": {"cidr": "198.19.0.0/24", "blockSize": 26}}
V6 = {"apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "v6"},
      "spec": {"cidr": "fd7a:bb1e::/120", "blockSize": 122}}


class Twins:
    """The same store twice: ``fast`` driven as the plugin drives it, ``engine`` by the
    engine alone."""

    def __init__(self, tmp: Path, *pools: dict[str, Any]) -> None:
        self.paths = {side: str(tmp / f"{side}.db") for side in ("fast", "engine")}
        for path in self.paths.values():
            client = Client(open_store(f"sqlite://{path}"))
            for pool in pools:
                client.create(parse_manifest(pool))
            client.store.close()
        self.conn = sqlitedb.connect(self.paths["fast"], BUSY_TIMEOUT)
        self.fast_done = 0  # requests the fast path did itself

    def engine(self, side: str) -> tuple[Client, IPAM]:
        client, ipam = _open(_Cfg(f"sqlite://{self.paths[side]}"))  # type: ignore[arg-type]
        return client, ipam

    def add(self, cid: str, v4: int = 1, v6: int = 0, pools: tuple[str, ...] = (),
            node: str = NODE) -> None:
        handle = f"net1.{cid}.eth0"
        attrs = {"node": node, "containerID": cid, "ifname": "eth0", "network": "net1"}
        got = fastpath.add(self.conn, self.paths["fast"], handle, node, {4: v4, 6: v6},
                           {4: pools, 6: ()}, attrs, RESERVE)
        if isinstance(got, str):  # declined: the engine's case
            fast = self._assign("fast", handle, node, v4, v6, pools, attrs)
        else:
            self.fast_done += 1
            fast = [iface for iface, _, _ in got]
        assert fast == self._assign("engine", handle, node, v4, v6, pools, attrs)
        self.check()

    def _assign(self, side: str, handle: str, node: str, v4: int, v6: int,
                pools: tuple[str, ...], attrs: dict[str, str]) -> list[str]:
        client, ipam = self.engine(side)
        try:
            got = ipam.assign(handle, node, num_v4=v4, num_v6=v6, attrs=attrs, pools_v4=pools)
            return [f"{ip}/{cidr.prefixlen}" for ip, cidr in zip(got.addresses, got.blocks,
                                                                  strict=True)]
        except TabbyError as e:
            return [type(e).__name__]
        finally:
            client.store.close()

    def delete(self, cid: str) -> None:
        handle = f"net1.{cid}.eth0"
        if fastpath.release(self.conn, self.paths["fast"], handle):
            self.fast_done += 1
        else:
            self._release("fast", handle)
        self._release("engine", handle)
        self.check()

    def _release(self, side: str, handle: str) -> None:
        client, ipam = self.engine(side)
        try:
            ipam.release_handle(handle)
        finally:
            client.store.close()

    def records(self, side: str) -> dict[tuple[str, str], Any]:
        store = open_store(f"sqlite://{self.paths[side]}")
        try:
            out = {}
            for cls in RECORDS:
                for item in store.list(cls.KIND.resource):
                    value = json.loads(json.dumps(item.value))
                    for volatile in ("uid", "creationTimestamp"):
                        value["metadata"].pop(volatile, None)
                    out[(cls.KIND.resource, item.key.name)] = value
            return out
        finally:
            store.close()

    def check(self) -> None:
        assert self.records("fast") == self.records("engine")

    def close(self) -> None:
        self.conn.close()


class _Cfg:
    def __init__(self, datastore: str) -> None:
        self.datastore = datastore


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Twins]:
    t = Twins(tmp_path, V4, V6)
    yield t
    t.close()


# -- the same records as the engine -------------------------------------------------------


def test_steady_state_adds_and_dels_match_the_engine(twins: Twins) -> None:
    """70 ADDs fill the first /26 (61 usable addresses) and spill into a second block;
    DELs free addresses that later ADDs reuse in the engine's order."""
    rng = random.Random(15)
    live: list[str] = []
    for i in range(70):
        twins.add(f"c{i}")
        live.append(f"c{i}")
        if i % 10 == 9:
            twins.delete(live.pop(rng.randrange(len(live))))
    for cid in live[:10]:
        twins.delete(cid)
    blocks = [k for k in twins.records("fast") if k[0] == IPAMBlock.KIND.resource]
    assert len(blocks) == 2
    assert twins.fast_done == 87  # block claims included: nothing went to the engine


def test_dual_stack_and_requested_pools_match_the_engine(twins: Twins) -> None:
    for i in range(5):
        twins.add(f"d{i}", v4=1, v6=1)
    twins.add("p1", pools=("198.19.0.0/24",))
    twins.add("p2", pools=("v4",))
    twins.delete("d2")
    twins.add("d5", v4=0, v6=1)
    assert twins.fast_done == 9


def test_repeated_add_and_unknown_del_match_the_engine(twins: Twins) -> None:
    twins.add("r1")
    twins.add("r1")  # the handle exists: the engine answers (idempotent)
    twins.delete("nobody")
    twins.delete("r1")
    twins.delete("r1")
    assert twins.fast_done == 4  # all but the repeated ADD (the engine's idempotent answer)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=40))
@settings(max_examples=15, deadline=None)
def test_any_sequence_matches_the_engine(tmp_path_factory: pytest.TempPathFactory,
                                         ops: list[tuple[bool, int]]) -> None:
    t = Twins(tmp_path_factory.mktemp("seq"), V4, V6)
    try:
        for is_add, n in ops:
            if is_add:
                t.add(f"s{n}", v4=1, v6=n % 3 == 0)
            else:
                t.delete(f"s{n}")
    finally:
        t.close()


@pytest.mark.parametrize("config", [{}, {"strictAffinity": True}, {"maxBlocksPerHost": 2},
                                    {"autoAllocateBlocks": False}])
def test_block_claims_match_the_engine(tmp_path: Path, config: dict[str, Any]) -> None:
    """Two nodes claim blocks of a small pool in turn until it is exhausted: claims in
    the fast path, borrowing and exhaustion in the engine, under each IPAM setting."""
    small = {**V4, "metadata": {"name": "small"},
             "spec": {"cidr": "198.19.8.0/28", "blockSize": 30}}
    t = Twins(tmp_path, small, V6)
    try:
        if config:
            _prepare(t, lambda client: client.create(parse_manifest({
                "apiVersion": "tabby.dev/v1", "kind": "IPAMConfiguration",
                "metadata": {"name": "default"}, "spec": config})))
        for i in range(10):
            t.add(f"k{i}", v4=1, v6=i % 2, node=("n1", "n2")[i % 3 == 2])
        assert t.fast_done >= (0 if config.get("autoAllocateBlocks") is False else 4)
    finally:
        t.close()


# -- what it leaves to the engine ----------------------------------------------------------


def _prepare(twins: Twins, change: Any) -> None:
    for side in twins.paths:
        client = Client(open_store(f"sqlite://{twins.paths[side]}"))
        try:
            change(client)
        finally:
            client.store.close()


@pytest.mark.parametrize("case", ["selector", "reservation", "pending", "disabled"])
def test_declines_what_only_the_engine_knows(twins: Twins, case: str) -> None:
    twins.add("first")  # a block with room, for the fast path to use
    def change(client: Client) -> None:
        if case == "selector":
            pool = client.get(IPPool, "v4")
            client.update(type(pool)(pool.meta, type(pool.spec)(
                pool.spec.cidr, pool.spec.block_size, node_selector="!has(rack)")), pool)
        elif case == "reservation":
            client.create(IPReservation(ObjectMeta("hold"), (
                ipaddress.ip_network("198.19.0.3/32"),)))
        elif case == "pending":
            cidr = ipaddress.ip_network("198.19.0.64/26")
            client.create(BlockAffinity(ObjectMeta(affinity_name(NODE, cidr)),
                                        BlockAffinitySpec(NODE, cidr, "pending")))
        else:
            pool = client.get(IPPool, "v4")
            client.update(type(pool)(pool.meta, type(pool.spec)(
                pool.spec.cidr, pool.spec.block_size, disabled=True)), pool)
    _prepare(twins, change)
    done = twins.fast_done
    if case == "disabled":  # no usable pool: the engine's error, nothing written
        before = twins.records("fast")
        got = fastpath.add(twins.conn, twins.paths["fast"], "net1.x.eth0", NODE, {4: 1},
                           {}, {}, RESERVE)
        assert isinstance(got, str) and twins.records("fast") == before
        return
    twins.add("second")
    assert twins.fast_done == done


def test_declines_handle_ids_that_are_not_plain_names(twins: Twins) -> None:
    twins.add("first")
    done = twins.fast_done
    twins.add("Upper_Case")  # hashed handle name
    twins.delete("Upper_Case")
    assert twins.fast_done == done


# -- encodings, names and constants as the model has them -------------------------------


def test_writes_values_as_sqlitestore_encodes_them(twins: Twins) -> None:
    for i in range(3):
        twins.add(f"e{i}", v4=1, v6=1)
    twins.delete("e1")
    for row in sqlitedb.list_rows(twins.conn, rawrecords.BLOCKS) + \
            sqlitedb.list_rows(twins.conn, rawrecords.HANDLES):
        assert row[3] == json.dumps(json.loads(row[3]), separators=(",", ":"),
                                    ensure_ascii=False)
    assert rawrecords.make_dumps(compact=False)({"a": [1, "é"], "b": None}) == \
        json.dumps({"a": [1, "é"], "b": None})


def test_constants_are_the_models() -> None:
    assert rawrecords.API_VERSION == TABBY_API
    assert IPPool.KIND.resource == rawrecords.POOLS
    assert IPAMBlock.KIND.resource == rawrecords.BLOCKS
    assert BlockAffinity.KIND.resource == rawrecords.AFFINITIES
    assert IPAMHandle.KIND.resource == rawrecords.HANDLES
    assert IPReservation.KIND.resource == rawrecords.RESERVATIONS
    assert rawrecords.RESERVED_HANDLE == blk.RESERVED_HANDLE
    assert rawrecords.WORKLOAD == USE
    assert IPPool.from_manifest(V4).selects({})  # "all()" (the default) selects any node


@given(st.text(max_size=300) | st.from_regex(r"[a-z0-9][-a-z0-9.]{0,30}[a-z0-9]", fullmatch=True))
def test_names_are_the_models(text: str) -> None:
    assert rawrecords.is_plain_name(text) == (object_name(text) == text)
    assert rawrecords.name_prefix(text) == name_prefix(text)


@given(st.ip_addresses(), st.integers(0, 128))
def test_block_names_are_the_models(ip: Any, prefix: int) -> None:
    cidr = ipaddress.ip_network((ip, min(prefix, ip.max_prefixlen)), strict=False)
    net = cidrtext.network(str(cidr))
    if net is None:  # IPv4-mapped: the fast path never reads it
        return
    ours = rawrecords.block_name(net)
    assert ours == block_name(cidr) if ours is not None else block_name(cidr) != str(
        cidr).replace(".", "-").replace(":", "-").replace("/", "-")


def test_transaction_groups_engine_calls(tmp_path: Path) -> None:
    """SQLiteStore.transaction(): one commit for many calls; an error undoes them all."""
    store = SQLiteStore(str(tmp_path / "t.db"))
    client = Client(store)
    try:
        rev = store.revision()
        with store.transaction():
            client.create(parse_manifest(V4))
            client.create(parse_manifest(V6))
        assert store.revision() == rev + 2
        with pytest.raises(RuntimeError), store.transaction():
            client.delete(IPPool, "v4")
            raise RuntimeError("boom")
        assert client.try_get(IPPool, "v4") is not None
    finally:
        store.close()


# -- the exec path as a runtime meets it -----------------------------------------------------


def _env(cid: str, command: str) -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": "/usr/bin:/bin"}


def test_steady_state_imports_no_model(twins: Twins) -> None:
    """ADD and DEL in the steady state, under -I -S as the launchers run it: none of
    the modules that made tabby-ipam's start-up 10x Python's own."""
    twins.add("warm")  # the node's block exists
    conf = json.dumps({"cniVersion": "1.0.0", "name": "net1", "type": "bridge", "ipam": {
        "type": "tabby-ipam", "datastore": f"sqlite://{twins.paths['fast']}", "node": NODE}})
    probe = ("import os, sys; sys.path.insert(0, sys.argv[1]); from tabby.ipam import plugin\n"
             "for command in ('ADD', 'DEL'):\n"
             "    env = {**os.environ, 'CNI_COMMAND': command}\n"
             "    code, out = plugin.run(env, sys.argv[2].encode())\n"
             "    assert code == 0, out\n"
             "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(import_root()), conf],
                         env=_env("light", "ADD"), capture_output=True, text=True,
                         check=True).stdout.split()
    heavy = {"tabby.model", "tabby.ipam.engine", "tabby.store.base", "tabby.cni.protocol",
             "re", "enum", "typing", "dataclasses", "socket", "uuid", "datetime", "pathlib",
             "contextlib", "sqlite3", "ipaddress", "json"}  # (_sqlite3 imports functools)
    assert heavy.isdisjoint(out), sorted(heavy & set(out))
    assert "tabby.ipam.fastpath" in out


def test_the_command_leaves_its_commit_in_the_wal(twins: Twins) -> None:
    """The installed command ends with os._exit: no checkpoint when it closes (the WAL
    stays, with the commit in it), and the next reader sees the allocation."""
    twins.add("warm")
    twins.conn.close()
    path = twins.paths["fast"]
    conf = json.dumps({"cniVersion": "1.0.0", "name": "net1", "type": "bridge", "ipam": {
        "type": "tabby-ipam", "datastore": f"sqlite://{path}", "node": NODE}})
    sqlitedb.connect(path, BUSY_TIMEOUT).close()  # the last close: WAL checkpointed away
    assert not Path(path + "-wal").exists()
    done = subprocess.run([str(PLUGIN)], input=conf.encode(), env=_env("walled", "ADD"),
                          capture_output=True, check=False)
    assert done.returncode == 0, done
    assert Path(path + "-wal").stat().st_size > 0
    twins.conn = sqlitedb.connect(path, BUSY_TIMEOUT)
    assert sqlitedb.get_row(twins.conn, rawrecords.HANDLES, "", "net1.walled.eth0") is not None
