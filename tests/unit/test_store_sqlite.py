"""The store contract on SQLite, plus what only a shared file can show:
several processes writing one file, reopening, compaction."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.errors import Conflict
from tabby.store import open_store
from tabby.store.base import Key
from tabby.store.sqlite import SQLiteStore
from tests.store_contract import POD_A, StoreContract, check_compaction, collect, value

COUNTER = Key("counters", "", "hits")


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        with SQLiteStore(str(tmp_path / "tabby.db")) as store:
            assert isinstance(store, SQLiteStore)
            yield store


def _join(procs: list[Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not alive, f"workers {alive} did not finish"
    assert [p.exitcode for p in procs] == [0] * len(procs)


def _increment(path: str, times: int, go: Any) -> None:
    """Child process: add one to the counter ``times`` times, by CAS with retries."""
    go.wait(30)
    with SQLiteStore(path) as store:
        for _ in range(times):
            while True:
                item = store.get(COUNTER)
                try:
                    store.update(COUNTER, {"n": item.value["n"] + 1}, item.revision)
                    break
                except Conflict:
                    continue


def _create_one(path: str, index: int, go: Any) -> None:
    """Child process: open a (possibly brand-new) file at once with the others."""
    go.wait(30)
    with SQLiteStore(path) as store:
        store.create(Key("pods", "p", f"p{index}"), value(index))


def test_processes_sharing_one_file_lose_no_increment(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    procs_n, times = 4, 40
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    with SQLiteStore(path) as store:
        start = store.create(COUNTER, {"n": 0}).revision
        with store.watch("counters", start + 1) as w:
            procs = [ctx.Process(target=_increment, args=(path, times, go))
                     for _ in range(procs_n)]
            for p in procs:
                p.start()
            go.set()
            total = procs_n * times
            events = collect(w, total, timeout=60)
            _join(procs)
            assert w.next(0.1) == []
        assert store.get(COUNTER).value == {"n": total}
        assert store.revision() == start + total
    assert [e.revision for e in events] == list(range(start + 1, start + total + 1))
    assert [e.value for e in events] == [{"n": n} for n in range(1, total + 1)]


def test_processes_opening_a_new_file_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "new" / "sub" / "fresh.db")  # parents created by the store
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_create_one, args=(path, i, go)) for i in range(5)]
    for p in procs:
        p.start()
    go.set()
    _join(procs)
    with SQLiteStore(path) as store:
        listing = store.list("pods")
        assert sorted(i.key.name for i in listing) == [f"p{i}" for i in range(5)]
        assert sorted(i.revision for i in listing) == [1, 2, 3, 4, 5]
        assert listing.revision == 5


def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    path = str(tmp_path / "tabby.db")
    with SQLiteStore(path) as one, SQLiteStore(path) as two:
        with two.watch(None, 1) as w:  # woken by polling, not by its own writes
            item = one.create(POD_A, value(1))
            assert [(e.type, e.value) for e in collect(w, 1)] == [("PUT", value(1))]
        assert two.get(POD_A) == item
        with pytest.raises(Conflict):
            two.update(POD_A, value(2), item.revision - 1)
        two.update(POD_A, value(2), item.revision)
        assert one.get(POD_A).value == value(2)
        assert one.revision() == two.revision() == 2


def test_reopen_keeps_items_revision_and_history(tmp_path: Path) -> None:
    path = str(tmp_path / "tabby.db")
    with SQLiteStore(path) as store:
        a = store.create(POD_A, value(1))
        store.update(POD_A, value(2), a.revision)
    with SQLiteStore(path) as store:
        assert store.revision() == 2
        assert store.get(POD_A).value == value(2)
        with store.watch(None, 1) as w:
            assert [e.revision for e in collect(w, 2)] == [1, 2]
        assert store.create(Key("pods", "a", "other"), value(3)).revision == 3
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_compaction(tmp_path: Path) -> None:
    with SQLiteStore(str(tmp_path / "tabby.db"), history=5) as store:
        check_compaction(store, history=5)


def test_url_and_open_store(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    store = open_store("sqlite://" + path)
    try:
        assert isinstance(store, SQLiteStore)
        assert store.url == "sqlite://" + path
    finally:
        store.close()


def test_a_new_store_is_owner_only(tmp_path: Path) -> None:
    """The store holds BGP passwords: a new store's directory and file are 0700 and
    0600 (they were 0755 and 0644, readable by any local user)."""
    import os
    import stat
    path = tmp_path / "new-dir" / "tabby.db"
    with SQLiteStore(str(path)) as store:
        store.create(COUNTER, value(1))
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    for f in path.parent.iterdir():  # the db and SQLite's -wal / -shm
        assert stat.S_IMODE(os.stat(f).st_mode) & 0o077 == 0, f
