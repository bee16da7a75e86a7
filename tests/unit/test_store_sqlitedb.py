"""tabby.store.sqlitedb: opening without writes, the WAL's trim, the exec queue."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

import pytest

from tabby.errors import StoreError
from tabby.store import sqlitedb
from tabby.store.sqlite import SQLiteStore


def test_opening_an_existing_file_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    first = sqlitedb.connect(path, 5)
    assert first.total_changes > 0  # the schema, once
    first.close()
    again = sqlitedb.connect(path, 5)
    try:
        assert again.total_changes == 0
        assert sqlitedb.meta(again, "schema") == sqlitedb.SCHEMA_VERSION
    finally:
        again.close()


def test_another_schema_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    conn = sqlitedb.connect(path, 5)
    conn.execute("UPDATE meta SET v = 99 WHERE k = 'schema'")
    conn.close()
    with pytest.raises(StoreError, match="schema 99"):
        sqlitedb.connect(path, 5)


def _fill(conn: sqlite3.Connection, path: str, rows: int) -> None:
    for i in range(rows):
        sqlitedb.begin(conn, path, "IMMEDIATE")
        sqlitedb.put_row(conn, "things", "", f"t{i}", "x" * 3000, create=True)
        sqlitedb.commit(conn, path)


def test_trim_wal_truncates_a_long_wal(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    conn = sqlitedb.connect(path, 5)
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # as processes that never close
    try:
        _fill(conn, path, 100)
        assert os.stat(path + "-wal").st_size > 256 * 1024
        assert not sqlitedb.trim_wal(conn, path, limit=1 << 30)  # short enough: left alone
        assert sqlitedb.trim_wal(conn, path, limit=256 * 1024)
        assert os.stat(path + "-wal").st_size == 0
        assert len(sqlitedb.list_rows(conn, "things")) == 100
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        conn.close()


def test_trim_wal_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    conn, other = sqlitedb.connect(path, 5), sqlitedb.connect(path, 5)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        _fill(conn, path, 100)
        sqlitedb.begin(other, path, "IMMEDIATE")
        assert not sqlitedb.trim_wal(conn, path, limit=1024)  # busy: later, no waiting
        assert os.stat(path + "-wal").st_size > 0
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        sqlitedb.rollback(other)
        assert sqlitedb.trim_wal(conn, path, limit=1024)
    finally:
        conn.close()
        other.close()


def test_exec_queue_admits_one_at_a_time(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    probe = os.open(path + "-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with sqlitedb.ExecQueue(path) as queue:
            assert queue.held
            assert oct(os.stat(path + "-lock").st_mode & 0o777) == "0o600"
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert not queue.held
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    finally:
        os.close(probe)


def test_exec_queue_is_skipped_where_it_cannot_be(tmp_path: Path) -> None:
    queue = sqlitedb.ExecQueue(str(tmp_path / "missing" / "s.db"))
    with queue:
        assert not queue.held


def test_the_store_still_checkpoints_when_it_closes(tmp_path: Path) -> None:
    """Long-lived users (the agent, the CLI) close: the WAL goes with the last one."""
    path = str(tmp_path / "s.db")
    store = SQLiteStore(path)
    store.close()
    assert not Path(path + "-wal").exists()
