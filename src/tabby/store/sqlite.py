"""SQLite backend: the embedded default, one file shared by processes.

Layout (one file, WAL journal, so readers never block the writer)::

    meta    (k, v)                               'rev': the global revision,
                                                 'compacted': events <= v are gone
    items   (resource, namespace, name) -> value, rev, create_rev
    events  rev -> type, resource, namespace, name, value   (DELETE: last value)

Every write runs in one ``BEGIN IMMEDIATE`` transaction: it takes the file's
write lock, reads the revision, checks the compare-and-swap, writes the item
and its event and bumps the revision, so revisions are gap-free across every
process sharing the file. Writers queue on SQLite's lock (``busy_timeout``);
one that waits longer than that gets ``Unavailable``. Only the newest
``history`` events are kept; a watch starting before them raises
``Compacted``.

Within a process one connection, guarded by a lock, serves every thread.
Watches poll the events table (an indexed range on ``rev``) every 20 ms and
are woken at once by writes made through the same ``SQLiteStore``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tabby.errors import Compacted, Conflict, NotFound, StoreError, Unavailable
from tabby.store.base import Event, Item, Key, ListResult, Store, Value, Watch

__all__ = ["SQLiteStore"]

POLL_INTERVAL = 0.02
BATCH = 1000
SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS items (resource TEXT NOT NULL, namespace TEXT NOT NULL,"
    " name TEXT NOT NULL, value TEXT NOT NULL, rev INTEGER NOT NULL,"
    " create_rev INTEGER NOT NULL, PRIMARY KEY (resource, namespace, name)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS events (rev INTEGER PRIMARY KEY, type TEXT NOT NULL,"
    " resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL)",
    "INSERT OR IGNORE INTO meta (k, v) VALUES ('rev', 0), ('compacted', 0),"
    f" ('schema', {SCHEMA_VERSION})",
)
_ITEM_COLUMNS = "resource, namespace, name, value, rev, create_rev"
Events = list[Event]  # (inside the class, ``list`` is the method)


def _private_file(path: Path) -> None:
    """The store holds secrets (BGP passwords): a new store's directory and file
    (and SQLite's -wal and -shm beside it, which take the file's mode) are
    owner-only. An existing file keeps the mode its owner gave it."""
    # Several processes may open a new store at once: whoever creates the directory
    # or the file first wins, and the others find it there.
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class SQLiteStore(Store):
    def __init__(self, path: str, history: int = 100_000, busy_timeout: float = 30.0) -> None:
        if history < 1:
            raise StoreError(f"sqlite store {path}: history must be at least 1, not {history}")
        self.url = "sqlite://" + path
        self.path = path
        self._history = history
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        try:
            _private_file(Path(path))
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._setup(self._conn, busy_timeout)
        except (OSError, sqlite3.Error) as e:
            raise Unavailable(f"sqlite store {path}: cannot open ({e}); check the directory"
                              " exists and is writable") from e

    def _setup(self, conn: sqlite3.Connection, busy_timeout: float) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # Switching to WAL needs a moment alone with the file; several processes
        # opening a new file at once may race for it, so retry within the timeout.
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL_INTERVAL)
        if str(mode).lower() != "wal":
            raise StoreError(f"sqlite store {self.path}: cannot use WAL mode (got {mode!r})")
        # WAL + NORMAL: a commit survives a crash of the process, not of the machine.
        conn.execute("PRAGMA synchronous = NORMAL")
        with self._tx("IMMEDIATE") as c:
            for statement in _SCHEMA:
                c.execute(statement)
            schema = c.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()[0]
        if schema != SCHEMA_VERSION:
            raise StoreError(f"sqlite store {self.path}: schema {schema}, this tabby reads"
                             f" {SCHEMA_VERSION}; use a new file")

    @contextlib.contextmanager
    def _tx(self, mode: str = "DEFERRED") -> Iterator[sqlite3.Connection]:
        """One transaction on the shared connection, holding the thread lock."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"sqlite store {self.path}: closed")
            try:
                conn.execute(f"BEGIN {mode}")
            except sqlite3.OperationalError as e:
                raise Unavailable(f"sqlite store {self.path}: {e} (another process holds"
                                  " the write lock too long)") from e
            try:
                yield conn
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):  # keep the original error
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise Unavailable(f"sqlite store {self.path}: {e}") from e
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise Unavailable(f"sqlite store {self.path}: commit failed: {e}") from e

    # -- reads ----------------------------------------------------------------

    def get(self, key: Key) -> Item:
        with self._tx() as c:
            row = c.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE resource = ? AND"
                            " namespace = ? AND name = ?",
                            (key.resource, key.namespace, key.name)).fetchone()
        if row is None:
            raise NotFound(f"{key} not found")
        return _item(row)

    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        sql = f"SELECT {_ITEM_COLUMNS} FROM items WHERE resource = ?"
        args: list[Any] = [resource]
        if namespace is not None:
            sql += " AND namespace = ?"
            args.append(namespace)
        if prefix:
            sql += " AND substr(name, 1, ?) = ?"
            args += [len(prefix), prefix]
        sql += " ORDER BY resource, namespace, name"
        with self._tx() as c:
            rows = c.execute(sql, args).fetchall()
            rev = _meta(c, "rev")
        return ListResult(tuple(_item(r) for r in rows), rev)

    def revision(self) -> int:
        with self._tx() as c:
            return _meta(c, "rev")

    # -- writes ---------------------------------------------------------------

    def create(self, key: Key, value: Value) -> Item:
        text = _dump(key, value)
        with self._tx("IMMEDIATE") as c:
            if _current(c, key) is not None:
                raise Conflict(f"{key} already exists")
            rev = self._bump(c)
            c.execute(f"INSERT INTO items ({_ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                      (key.resource, key.namespace, key.name, text, rev, rev))
            self._record(c, rev, "PUT", key, text)
        self._notify()
        return Item(key, json.loads(text), rev, rev)

    def update(self, key: Key, value: Value, revision: int) -> Item:
        text = _dump(key, value)
        with self._tx("IMMEDIATE") as c:
            old = _checked(_current(c, key), key, revision)
            rev = self._bump(c)
            c.execute("UPDATE items SET value = ?, rev = ? WHERE resource = ? AND namespace = ?"
                      " AND name = ?", (text, rev, key.resource, key.namespace, key.name))
            self._record(c, rev, "PUT", key, text)
        self._notify()
        return Item(key, json.loads(text), rev, old.create_revision)

    def delete(self, key: Key, revision: int | None = None) -> Item:
        with self._tx("IMMEDIATE") as c:
            old = _checked(_current(c, key), key, revision)
            rev = self._bump(c)
            c.execute("DELETE FROM items WHERE resource = ? AND namespace = ? AND name = ?",
                      (key.resource, key.namespace, key.name))
            text = json.dumps(old.value, separators=(",", ":"), ensure_ascii=False)
            self._record(c, rev, "DELETE", key, text)
        self._notify()
        return Item(key, old.value, rev, old.create_revision)

    def _bump(self, c: sqlite3.Connection) -> int:
        rev = _meta(c, "rev") + 1
        c.execute("UPDATE meta SET v = ? WHERE k = 'rev'", (rev,))
        return rev

    def _record(self, c: sqlite3.Connection, rev: int, kind: str, key: Key, text: str) -> None:
        c.execute("INSERT INTO events (rev, type, resource, namespace, name, value)"
                  " VALUES (?, ?, ?, ?, ?, ?)", (rev, kind, key.resource, key.namespace,
                                                 key.name, text))
        floor = rev - self._history
        if floor > 0:
            c.execute("DELETE FROM events WHERE rev <= ?", (floor,))
            c.execute("UPDATE meta SET v = max(v, ?) WHERE k = 'compacted'", (floor,))

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- watch ----------------------------------------------------------------

    def watch(self, resource: str | None, start_revision: int) -> Watch:
        return _SQLiteWatch(self, resource, max(start_revision, 1))

    def _poll(self, resource: str | None, start: int) -> tuple[Events, int]:
        """Events from ``start`` (at most BATCH) and the revision to poll from next."""
        with self._tx() as c:
            rev = _meta(c, "rev")
            if rev < start:
                return [], start
            compacted = _meta(c, "compacted")
            if start <= compacted:
                raise Compacted(f"{self.url}: revision {start} is compacted (oldest kept:"
                                f" {compacted + 1}); list again and watch from its revision")
            sql = "SELECT rev, type, resource, namespace, name, value FROM events WHERE rev >= ?"
            args: list[Any] = [start]
            if resource is not None:
                sql += " AND resource = ?"
                args.append(resource)
            rows = c.execute(sql + " ORDER BY rev LIMIT ?", [*args, BATCH]).fetchall()
        events = [Event(t, Key(res, ns, name), json.loads(v), r)
                  for r, t, res, ns, name, v in rows]
        # Fewer than a batch means everything up to ``rev`` was seen (filtered or not).
        return events, (events[-1].revision + 1 if len(rows) == BATCH else rev + 1)

    def _wait(self, seconds: float) -> None:
        with self._changed:
            self._changed.wait(seconds)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _SQLiteWatch(Watch):
    def __init__(self, store: SQLiteStore, resource: str | None, start: int) -> None:
        self._store = store
        self._resource = resource
        self._next = start
        self._closed = False

    def next(self, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        while not self._closed:
            events, self._next = self._store._poll(self._resource, self._next)
            if events:
                return events
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._store._wait(min(POLL_INTERVAL, remaining))
        return []

    def close(self) -> None:
        self._closed = True


def _meta(c: sqlite3.Connection, name: str) -> int:
    return int(c.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()[0])


def _current(c: sqlite3.Connection, key: Key) -> Item | None:
    row = c.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE resource = ? AND namespace = ?"
                    " AND name = ?", (key.resource, key.namespace, key.name)).fetchone()
    return None if row is None else _item(row)


def _checked(old: Item | None, key: Key, revision: int | None) -> Item:
    if old is None:
        raise NotFound(f"{key} not found")
    if revision is not None and old.revision != revision:
        raise Conflict(f"{key} changed (revision {old.revision}, expected {revision})")
    return old


def _item(row: tuple[Any, ...]) -> Item:
    resource, namespace, name, value, rev, create_rev = row
    return Item(Key(resource, namespace, name), json.loads(value), rev, create_rev)


def _dump(key: Key, value: Value) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{key}: the value is not JSON-serialisable ({e})") from e
