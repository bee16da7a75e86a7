"""Flow records on the node: SQLite (WAL), bounded in rows and days, never in the way.

``FlowStore.open(path, ...)`` opens (creating) the database; a path that
cannot be opened or written (read-only, missing permissions, a full disk)
leaves the store in memory instead (``fallback`` says why), so flows are still
served while the problem lasts and the dataplane never waits for a disk. A
write that fails later (disk full) is counted and dropped, the store goes on.

Bounds: ``max_rows`` (the oldest rows are deleted first, counted in
``evicted``) and ``retention`` seconds (rows that ended earlier are deleted,
counted the same way), both enforced by ``enforce()`` after writes.

``put(rows)`` upserts a batch in one transaction: a row id of None inserts and
returns the new id, a known id updates the row (a flow's counters grow while it
lasts). ``query(filter)`` returns the newest matching records first.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import astuple, fields
from pathlib import Path

from tabby.agent.flowrecord import FlowFilter, FlowRecord

log = logging.getLogger(__name__)

DEFAULT_PATH = "/var/lib/tabby/flows.db"
COLUMNS = tuple(f.name for f in fields(FlowRecord))
_SCHEMA = ("CREATE TABLE IF NOT EXISTS flows (id INTEGER PRIMARY KEY, "
           + ", ".join(COLUMNS) + ")")
_INDEX = "CREATE INDEX IF NOT EXISTS flows_end ON flows(end)"
_INSERT = f"INSERT INTO flows ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_UPDATE = "UPDATE flows SET end=?, packets=?, bytes=?, state=? WHERE id=?"


class FlowStore:
    def __init__(self, db: sqlite3.Connection, *, max_rows: int, retention: float,
                 fallback: str = "", clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.max_rows = max_rows
        self.retention = retention
        self.fallback = fallback  # why the store is in memory ("" when on disk)
        self.clock = clock
        self.lock = threading.Lock()  # writes (the collector) vs reads (HTTP threads)
        self.evicted = 0
        self.write_errors = 0
        self.rows = self._count()

    @classmethod
    def open(cls, path: str, *, max_rows: int = 500_000, retention: float = 7 * 86400,
             clock: Callable[[], float] = time.time) -> FlowStore:
        try:
            db = _connect(path)
            fallback = ""
        except (OSError, sqlite3.Error) as exc:
            fallback = f"flow store {path}: {exc}; keeping flows in memory"
            log.warning("%s", fallback)
            db = _connect(":memory:")
            max_rows = min(max_rows, 50_000)
        return cls(db, max_rows=max_rows, retention=retention, fallback=fallback, clock=clock)

    def _count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM flows").fetchone()[0])

    def put(self, rows: Iterable[tuple[int | None, FlowRecord]]) -> list[int | None]:
        """Insert (id None) or update each row in one transaction; the ids (None for
        every row if the write failed: counted in ``write_errors``)."""
        batch = list(rows)
        ids: list[int | None] = []
        with self.lock:
            try:
                with self.db:
                    for rid, rec in batch:
                        if rid is None:
                            cur = self.db.execute(_INSERT, astuple(rec))
                            ids.append(cur.lastrowid)
                            self.rows += 1
                        else:
                            self.db.execute(_UPDATE, (rec.end, rec.packets, rec.bytes,
                                                      rec.state, rid))
                            ids.append(rid)
            except sqlite3.Error as exc:
                self.write_errors += 1
                self.rows = self._safe_count()
                log.warning("flow store: writing %d records: %s (dropped)", len(batch), exc)
                return [None] * len(batch)
        return ids

    def enforce(self) -> int:
        """Delete rows past the retention and beyond ``max_rows`` (oldest first)."""
        with self.lock:
            try:
                with self.db:
                    cut = self.clock() - self.retention
                    gone = self.db.execute("DELETE FROM flows WHERE end < ?", (cut,)).rowcount
                    over = self.rows - gone - self.max_rows
                    if over > 0:
                        gone += self.db.execute(
                            "DELETE FROM flows WHERE id IN (SELECT id FROM flows ORDER BY id"
                            " LIMIT ?)", (over,)).rowcount
            except sqlite3.Error as exc:
                self.write_errors += 1
                log.warning("flow store: enforcing its bounds: %s", exc)
                return 0
            self.evicted += gone
            self.rows = self._safe_count()
            return gone

    def _safe_count(self) -> int:
        try:
            return self._count()
        except sqlite3.Error:
            return self.rows

    def query(self, flt: FlowFilter) -> list[FlowRecord]:
        """Matching records, the most recently active first, at most ``flt.limit``."""
        out: list[FlowRecord] = []
        with self.lock:
            try:
                cur = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM flows WHERE end >= ?"
                                      " ORDER BY end DESC", (flt.since,))
                for row in cur:
                    rec = FlowRecord(*row)
                    if flt.matches(rec):
                        out.append(rec)
                        if len(out) >= flt.limit:
                            break
            except sqlite3.Error as exc:
                log.warning("flow store: reading: %s", exc)
        return out

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise OSError(f"{path} is not writable")
    db = sqlite3.connect(path, check_same_thread=False, timeout=1.0)
    try:
        if path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        db.execute(_INDEX)
    except sqlite3.Error:
        db.close()
        raise
    return db
