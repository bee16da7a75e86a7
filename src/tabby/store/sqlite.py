"""SQLite backend: the embedded default, one file shared by processes.

The file's layout, connection set-up and row writes are in
:mod:`tabby.store.sqlitedb` (cheap to import, shared with tabby-ipam's exec
path); this module keeps the Store contract on top of them.

Every write runs in one ``BEGIN IMMEDIATE`` transaction: it takes the file's
write lock, reads the revision, checks the compare-and-swap, writes the item
and its event and bumps the revision, so revisions are gap-free across every
process sharing the file. Writers queue on SQLite's lock (``busy_timeout``);
one that waits longer than that gets ``Unavailable``. Only the newest
``history`` events are kept; a watch starting before them raises
``Compacted``. ``transaction()`` groups many calls of one thread into one
such transaction (all or nothing; other writers wait for it).

Within a process one connection, guarded by a lock, serves every thread.
Watches poll the events table (an indexed range on ``rev``) every 20 ms and
are woken at once by writes made through the same ``SQLiteStore``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

from tabby.errors import Compacted, Conflict, NotFound, StoreError, Unavailable
from tabby.store import sqlitedb as db
from tabby.store.base import Event, Item, Key, ListResult, Store, Value, Watch

__all__ = ["SQLiteStore"]

POLL_INTERVAL = 0.02
BATCH = 1000
SCHEMA_VERSION = db.SCHEMA_VERSION
Events = list[Event]  # (inside the class, ``list`` is the method)


class SQLiteStore(Store):
    def __init__(self, path: str, history: int = db.HISTORY, busy_timeout: float = 30.0
                 ) -> None:
        if history < 1:
            raise StoreError(f"sqlite store {path}: history must be at least 1, not {history}")
        self.url = "sqlite://" + path
        self.path = path
        self._history = history
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._outer: threading.Thread | None = None  # the thread inside transaction()
        self._conn: sqlite3.Connection | None = db.connect(path, busy_timeout)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``) around many calls of this thread:
        they see each other's writes, no other writer moves anything meanwhile (so their
        compare-and-swaps hold), and all of them commit, or none. Other threads of this
        process wait for it; other processes wait on SQLite's lock. Not re-entrant."""
        with self._lock:
            if self._outer is not None:
                raise StoreError(f"sqlite store {self.path}: transaction() inside another")
            conn = self._open()
            db.begin(conn, self.path, "IMMEDIATE")
            self._outer = threading.current_thread()
            try:
                yield
            except BaseException:
                db.rollback(conn)
                raise
            finally:
                self._outer = None
            db.commit(conn, self.path)
        self._notify()

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"sqlite store {self.path}: closed")
        return self._conn

    @contextlib.contextmanager
    def _tx(self, mode: str = "DEFERRED") -> Iterator[sqlite3.Connection]:
        """One transaction on the shared connection, holding the thread lock; inside
        ``transaction()``, a savepoint of it."""
        with self._lock:
            conn = self._open()
            nested = self._outer is not None
            if nested:
                conn.execute("SAVEPOINT tx")
            else:
                db.begin(conn, self.path, mode)
            try:
                yield conn
            except BaseException as e:
                if nested:
                    with contextlib.suppress(sqlite3.Error):  # keep the original error
                        conn.execute("ROLLBACK TO tx")
                        conn.execute("RELEASE tx")
                else:
                    db.rollback(conn)
                if isinstance(e, sqlite3.Error):
                    raise Unavailable(f"sqlite store {self.path}: {e}") from e
                raise
            if nested:
                conn.execute("RELEASE tx")
            else:
                db.commit(conn, self.path)

    # -- reads ----------------------------------------------------------------

    def get(self, key: Key) -> Item:
        with self._tx() as c:
            row = db.get_row(c, key.resource, key.namespace, key.name)
        if row is None:
            raise NotFound(f"{key} not found")
        return _item(row)

    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        with self._tx() as c:
            rows = db.list_rows(c, resource, namespace, prefix)
            rev = db.meta(c, "rev")
        return ListResult(tuple(_item(r) for r in rows), rev)

    def revision(self) -> int:
        with self._tx() as c:
            return db.meta(c, "rev")

    # -- writes ---------------------------------------------------------------

    def create(self, key: Key, value: Value) -> Item:
        text = _dump(key, value)
        with self._tx("IMMEDIATE") as c:
            if db.get_row(c, key.resource, key.namespace, key.name) is not None:
                raise Conflict(f"{key} already exists")
            rev = db.put_row(c, key.resource, key.namespace, key.name, text, create=True,
                             history=self._history)
        self._notify()
        return Item(key, json.loads(text), rev, rev)

    def update(self, key: Key, value: Value, revision: int) -> Item:
        text = _dump(key, value)
        with self._tx("IMMEDIATE") as c:
            old = _checked(_current(c, key), key, revision)
            rev = db.put_row(c, key.resource, key.namespace, key.name, text, create=False,
                             history=self._history)
        self._notify()
        return Item(key, json.loads(text), rev, old.create_revision)

    def delete(self, key: Key, revision: int | None = None) -> Item:
        with self._tx("IMMEDIATE") as c:
            old = _checked(_current(c, key), key, revision)
            text = json.dumps(old.value, separators=(",", ":"), ensure_ascii=False)
            rev = db.delete_row(c, key.resource, key.namespace, key.name, text,
                                history=self._history)
        self._notify()
        return Item(key, old.value, rev, old.create_revision)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- watch ----------------------------------------------------------------

    def watch(self, resource: str | None, start_revision: int) -> Watch:
        return _SQLiteWatch(self, resource, max(start_revision, 1))

    def _poll(self, resource: str | None, start: int) -> tuple[Events, int]:
        """Events from ``start`` (at most BATCH) and the revision to poll from next."""
        with self._tx() as c:
            rev = db.meta(c, "rev")
            if rev < start:
                return [], start
            compacted = db.meta(c, "compacted")
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


def _current(c: sqlite3.Connection, key: Key) -> Item | None:
    row = db.get_row(c, key.resource, key.namespace, key.name)
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
