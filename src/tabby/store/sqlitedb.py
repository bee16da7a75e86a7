"""The SQLite file behind ``SQLiteStore``, cheap to import: schema, connection, rows.

``SQLiteStore`` (:mod:`tabby.store.sqlite`) keeps the Store contract on top of
this module. ``tabby-ipam``'s exec path (:mod:`tabby.ipam.fastpath`) writes
IPAM's records through it directly, because that path is paid on every pod: so
this module imports only ``_sqlite3`` (the C half of ``sqlite3``), ``os``,
``time`` and :mod:`tabby.errors` (no json, dataclasses, typing or pathlib).
Values are JSON text here; callers encode and decode them.

Layout (one file, WAL journal, so readers never block the writer)::

    meta    (k, v)                               'rev': the global revision,
                                                 'compacted': events <= v are gone,
                                                 'schema': SCHEMA_VERSION
    items   (resource, namespace, name) -> value, rev, create_rev
    events  rev -> type, resource, namespace, name, value   (DELETE: last value)

Every write bumps the revision, writes its item and records its event, all in
the caller's ``BEGIN IMMEDIATE`` transaction, so revisions are gap-free across
every process sharing the file. Only the newest ``history`` events are kept.

Durability: WAL with ``synchronous = NORMAL``. A commit survives a crash of the
process that made it (it is in the WAL, which the next opener reads), not a
crash of the machine (the last commits before a power cut may be lost; the
file is never corrupted). Commits do not fsync; checkpoints do.

Opening costs no write once the file exists: the journal mode is already WAL
(it is persistent) and the schema is only read, never rewritten.
"""

from __future__ import annotations

import os
import time

from tabby.errors import StoreError, Unavailable

try:  # the C half alone: the sqlite3 package adds datetime adapters tabby never uses
    import _sqlite3 as sqlite3  # and that cost tabby-ipam ~1 ms a pod to import
except ImportError:  # an interpreter without it (its connections are the same type)
    import sqlite3  # type: ignore[no-redef]

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: tabby-ipam imports this on every pod
if TYPE_CHECKING:
    from typing import Any

    Row = tuple[str, str, str, str, int, int]  # resource, namespace, name, value, rev, create_rev

__all__ = ["HISTORY", "ITEM_COLUMNS", "SCHEMA_VERSION", "ExecQueue", "begin", "commit",
           "connect", "delete_row", "get_row", "list_rows", "meta", "put_row", "rollback",
           "trim_wal"]

SCHEMA_VERSION = 1
HISTORY = 100_000  # events kept
RETRY_INTERVAL = 0.02
WAL_LIMIT = 1 << 20  # bytes of WAL trim_wal lets stand (see there)
ITEM_COLUMNS = "resource, namespace, name, value, rev, create_rev"

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


def _private_file(path: str) -> None:
    """The store holds secrets (BGP passwords): a new store's directory and file
    (and SQLite's -wal and -shm beside it, which take the file's mode) are
    owner-only. An existing file keeps the mode its owner gave it."""
    # Several processes may open a new store at once: whoever creates the directory
    # or the file first wins, and the others find it there.
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    try:  # noqa: SIM105 (contextlib costs the exec path ~1 ms to import)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the store file ``path`` (created owner-only if missing), in WAL
    mode with the schema in place. Unavailable if it cannot be opened; StoreError if
    the file is another tabby's (schema) or refuses WAL."""
    try:
        _private_file(path)
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise Unavailable(f"sqlite store {path}: cannot open ({e}); check the directory"
                          " exists and is writable") from e
    try:
        _setup(conn, path, busy_timeout)
    except sqlite3.Error as e:
        conn.close()
        raise Unavailable(f"sqlite store {path}: cannot open ({e}); check the directory"
                          " exists and is writable") from e
    except StoreError:
        conn.close()
        raise
    return conn


def _setup(conn: sqlite3.Connection, path: str, busy_timeout: float) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    # Switching to WAL needs a moment alone with the file; several processes
    # opening a new file at once may race for it, so retry within the timeout.
    # (A file already in WAL mode answers at once: the mode is kept in the file.)
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(RETRY_INTERVAL)
    if str(mode).lower() != "wal":
        raise StoreError(f"sqlite store {path}: cannot use WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")  # see the module's docstring
    schema = _schema(conn)
    if schema is None:  # a new file: create the tables (idempotent, so racing is fine)
        begin(conn, path, "IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            schema = _schema(conn)
        except BaseException:
            rollback(conn)
            raise
        commit(conn, path)
    if schema != SCHEMA_VERSION:
        raise StoreError(f"sqlite store {path}: schema {schema}, this tabby reads"
                         f" {SCHEMA_VERSION}; use a new file")


def _schema(conn: sqlite3.Connection) -> int | None:
    """The file's schema version; None if its tables are not there yet."""
    try:
        row = conn.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise
    return None if row is None else int(row[0])


# -- transactions -------------------------------------------------------------------------


def begin(conn: sqlite3.Connection, path: str, mode: str = "DEFERRED") -> None:
    """BEGIN ``mode``; Unavailable if the write lock stayed taken past the busy timeout."""
    try:
        conn.execute(f"BEGIN {mode}")
    except sqlite3.OperationalError as e:
        raise Unavailable(f"sqlite store {path}: {e} (another process holds the write"
                          " lock too long)") from e


def commit(conn: sqlite3.Connection, path: str) -> None:
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        rollback(conn)
        raise Unavailable(f"sqlite store {path}: commit failed: {e}") from e


def rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if any; a failure here keeps the caller's error."""
    try:  # noqa: SIM105 (see _private_file)
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


# -- rows (inside the caller's transaction) ---------------------------------------------


def meta(c: sqlite3.Connection, name: str) -> int:
    return int(c.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()[0])


def get_row(c: sqlite3.Connection, resource: str, namespace: str, name: str) -> Row | None:
    row: Row | None = c.execute(
        f"SELECT {ITEM_COLUMNS} FROM items WHERE resource = ? AND namespace = ?"
        " AND name = ?", (resource, namespace, name)).fetchone()
    return row


def list_rows(c: sqlite3.Connection, resource: str, namespace: str | None = None,
              prefix: str = "") -> list[Row]:
    """Items of ``resource`` (in ``namespace``; None: all), names starting with ``prefix``,
    ordered by namespace and name."""
    sql = f"SELECT {ITEM_COLUMNS} FROM items WHERE resource = ?"
    args: list[Any] = [resource]
    if namespace is not None:
        sql += " AND namespace = ?"
        args.append(namespace)
    if prefix:
        sql += " AND substr(name, 1, ?) = ?"
        args += [len(prefix), prefix]
    rows: list[Row] = c.execute(sql + " ORDER BY resource, namespace, name", args).fetchall()
    return rows


def put_row(c: sqlite3.Connection, resource: str, namespace: str, name: str, text: str,
            *, create: bool, history: int = HISTORY) -> int:
    """Write the item (a new one if ``create``, else over the existing one) under the next
    revision, with its event; the revision. The caller checked existence (and its CAS)."""
    rev = _bump(c)
    if create:
        c.execute(f"INSERT INTO items ({ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                  (resource, namespace, name, text, rev, rev))
    else:
        c.execute("UPDATE items SET value = ?, rev = ? WHERE resource = ? AND namespace = ?"
                  " AND name = ?", (text, rev, resource, namespace, name))
    _record(c, rev, "PUT", resource, namespace, name, text, history)
    return rev


def delete_row(c: sqlite3.Connection, resource: str, namespace: str, name: str,
               last_text: str, *, history: int = HISTORY) -> int:
    """Delete the item under the next revision (its event carries ``last_text``)."""
    rev = _bump(c)
    c.execute("DELETE FROM items WHERE resource = ? AND namespace = ? AND name = ?",
              (resource, namespace, name))
    _record(c, rev, "DELETE", resource, namespace, name, last_text, history)
    return rev


def _bump(c: sqlite3.Connection) -> int:
    rev = meta(c, "rev") + 1
    c.execute("UPDATE meta SET v = ? WHERE k = 'rev'", (rev,))
    return rev


def _record(c: sqlite3.Connection, rev: int, kind: str, resource: str, namespace: str,
            name: str, text: str, history: int) -> None:
    c.execute("INSERT INTO events (rev, type, resource, namespace, name, value)"
              " VALUES (?, ?, ?, ?, ?, ?)", (rev, kind, resource, namespace, name, text))
    floor = rev - history
    if floor > 0:
        c.execute("DELETE FROM events WHERE rev <= ?", (floor,))
        c.execute("UPDATE meta SET v = max(v, ?) WHERE k = 'compacted'", (floor,))


# -- the WAL of processes that exit without closing ---------------------------------------


def trim_wal(conn: sqlite3.Connection, path: str, limit: int = WAL_LIMIT) -> bool:
    """Checkpoint the WAL into the file and truncate it, if it outgrew ``limit`` bytes and
    nobody is reading or writing right now (else leave it to a later call); True if done.

    For processes that end without closing their connection (tabby-ipam's exec): the
    first connection to open the file rebuilds the WAL's index by reading the whole WAL,
    and it cannot tell what an earlier process checkpointed, so the WAL would never
    restart and every open would read more of it (14 MiB after 400 tabby-ipam ADDs,
    measured). This keeps it short: a checkpoint (three fsyncs, with the new WAL's
    header) every ``limit`` bytes of commits, about 40 ADDs, instead of on every exit."""
    try:
        if os.stat(path + "-wal").st_size <= limit:
            return False
    except FileNotFoundError:
        return False
    try:
        timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute("PRAGMA busy_timeout = 0")  # someone busy: not now, no waiting
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout)}")
    except sqlite3.Error:  # busy, or anything else: the next call tries again
        return False
    return not busy


class ExecQueue:
    """``with ExecQueue(path):`` one process at a time, among those that ask, works on the
    store file ``path``: an exclusive ``flock`` on ``path + "-lock"`` (created owner-only).

    For short-lived processes (tabby-ipam's exec) that would otherwise meet on SQLite's
    own locks, whose busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries: eight
    concurrent execs then spend more time asleep than working. The kernel hands a
    released flock to a waiter at once. Other writers (the agent, the CLI) do not ask;
    they and the queue's holder meet on SQLite's locks as before. The wait has no
    timeout of its own: a holder only does SQLite work, each step bounded by the busy
    timeout, and the kernel drops the lock of a process that dies. Where the lock file
    cannot be made (a read-only directory), the queue is skipped."""

    __slots__ = ("_fd", "db", "path")

    def __init__(self, path: str) -> None:
        self.db = path  # the store file
        self.path = path + "-lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Wait for the queue (no-op if held, or if the lock file cannot be made)."""
        import fcntl

        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            return
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> ExecQueue:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
