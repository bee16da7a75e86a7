"""The agent's flow collector: NFLOG and conntrack in, flow records in SQLite, ``/flows`` out.

::

    kernel: policy log rules --NFLOG group--> reader thread --bounded queue--> worker thread
            (rate-limited, tabby.policy.flowlog)  (NflogSocket)   (drops counted)  |
                                                                                   v
    conntrack dump every ``ct_poll`` s (counters, ended?) ---------------> FlowTable (pure)
                                                                   every ``flush`` s |
                                                                                   v
    /flows?since=..&.. (HTTP threads) <-- FlowStore.query ------------- FlowStore (SQLite)

``/flows`` is served on the agent's metrics listener (127.0.0.1 by default) and,
with ``FlowSettings.listen`` (``--flows-addr``), on a listener of its own at the
node's address that serves nothing else, so ``tabby flows`` elsewhere in the
cluster can ask every node without /metrics being exposed with it. That listener
binds in the background and retries every ``LISTEN_RETRY`` s (the address may not
be up yet when the agent starts); failing to bind never stops the collector.

The reconcile loop only calls ``update(ids, endpoints)`` after a pass: two
reference assignments, never a wait. Everything else runs in the collector's
two threads; a slow or failing disk slows only the worker, whose queue then
fills and drops (counted), and the kernel side never waits for either (NFLOG
drops what a full socket cannot take, counted as ``socket``).

Metrics (``tabby_flow_*``): records read, records dropped by reason (``queue``,
``socket``, ``ratelimit``: the kernel's gate, read from its nft counter,
``table``, ``unknown`` id, ``store`` write failures), rows stored and evicted.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tabby.agent.flowrecord import FlowFilter, FlowRecord
from tabby.agent.flowstore import DEFAULT_PATH, FlowStore
from tabby.agent.flowtable import FlowTable
from tabby.agent.http import HealthServer
from tabby.agent.metrics import Registry
from tabby.dataplane.conntrack import ConntrackDumper, CtEntry
from tabby.dataplane.nflog import LogRecord, NflogSocket
from tabby.errors import TabbyError
from tabby.marks import NFT_FAMILY, NFT_TABLE, flow_id_of_prefix
from tabby.model import WorkloadEndpoint
from tabby.policy.flowids import FlowIds, FlowLog
from tabby.policy.flowlog import GATE_CHAIN, OVER_COMMENT

log = logging.getLogger(__name__)

LISTEN_RETRY = 5.0  # seconds between attempts to bind the flows listener


@dataclass(frozen=True, slots=True)
class FlowSettings:
    path: str = DEFAULT_PATH
    retention: float = 7 * 86400.0  # seconds
    max_rows: int = 500_000
    interval: float = 15.0  # a denied 5-tuple's packets add up in one record this long
    flush: float = 0.25  # seconds between batched writes
    ct_poll: float = 2.0  # seconds between conntrack dumps (while allowed flows are open)
    queue: int = 20_000  # records between the reader and the worker
    log: FlowLog = field(default_factory=FlowLog)
    listen: tuple[str, int] | None = None  # --flows-addr: /flows alone, at the node's address


class FlowMetrics:
    """The collector's series, added to the agent's registry (docs/metrics.md)."""

    def __init__(self, r: Registry) -> None:
        self.registry = r
        self.records = r.counter("tabby_flow_log_records_total",
                                 "Packets the flow log rules sent to the agent (NFLOG).")
        self.dropped = r.counter("tabby_flow_log_dropped_total",
                                 "Flow log records lost, by where: ratelimit (the kernel's"
                                 " gate), socket, queue, table, unknown (flow id), store.",
                                 ("reason",))
        self.rows = r.gauge("tabby_flow_store_rows", "Flow records stored on this node.")
        self.evicted = r.counter("tabby_flow_store_evicted_total",
                                 "Flow records deleted to keep the store within its bounds.")


class Source(Protocol):
    overruns: int

    def read(self, timeout: float) -> list[LogRecord]: ...

    def close(self) -> None: ...


class Dumper(Protocol):
    def dump(self) -> list[CtEntry]: ...

    def close(self) -> None: ...


class FlowCollector:
    def __init__(self, node: str, settings: FlowSettings, registry: Registry, *,
                 source: Callable[[], Source] | None = None,
                 dumper: Callable[[], Dumper] = ConntrackDumper,
                 overflow: Callable[[], int | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.settings = settings
        self.clock = clock
        self._source_factory = source or (lambda: NflogSocket(settings.log.group))
        self._dumper_factory = dumper
        self._overflow = overflow or read_gate_overflow
        self.store = FlowStore.open(settings.path, max_rows=settings.max_rows,
                                    retention=settings.retention, clock=clock)
        self.table = FlowTable(node, settings.interval)
        self.queue: queue.Queue[tuple[float, LogRecord]] = queue.Queue(settings.queue)
        self.ids = FlowIds({})
        self._endpoints: tuple[WorkloadEndpoint, ...] = ()
        self._ep_map: tuple[object, dict[str, str]] = ((), {})
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listener: HealthServer | None = None  # bound by the flow-listener thread
        self.problem = self.store.fallback
        m = FlowMetrics(registry)
        self.records, self.dropped, self.rows, self.evicted = (m.records, m.dropped, m.rows,
                                                               m.evicted)
        self._seen = {"socket": 0, "ratelimit": 0, "table": 0, "store": 0, "evicted": 0}
        # hook (staged policies, tabby.agent.staged): a new record, before it is stored
        self.annotate: Callable[[FlowRecord], FlowRecord] = _same

    # -- the reconcile loop's side ------------------------------------------------
    def update(self, ids: FlowIds, endpoints: tuple[WorkloadEndpoint, ...]) -> None:
        """After a pass: what flow ids mean now, and every endpoint (never blocks)."""
        if ids is not self.ids and ids != self.ids:
            self.ids = self.ids.merged(ids)
        self._endpoints = endpoints

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Bind NFLOG (in the caller's namespace) and start the threads; a TabbyError if
        the group cannot be bound."""
        source = self._source_factory()
        self._threads = [
            threading.Thread(target=self._read, args=(source,), name="flow-reader",
                             daemon=True),
            threading.Thread(target=self._work, name="flow-writer", daemon=True)]
        if self.settings.listen is not None:
            self._threads.append(threading.Thread(target=self._listen, args=(
                self.settings.listen,), name="flow-listener", daemon=True))
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        if self.listener is not None:
            self.listener.close()
        self.store.close()

    # -- threads ----------------------------------------------------------------------
    def _read(self, source: Source) -> None:
        try:
            while not self._stop.is_set():
                try:
                    got = source.read(0.2)
                except TabbyError as exc:
                    log.warning("flow log: %s", exc)
                    self._stop.wait(1.0)
                    continue
                now = self.clock()
                for rec in got:
                    try:
                        self.queue.put_nowait((now, rec))
                    except queue.Full:
                        self.dropped.inc("queue")
                self.records.inc(amount=len(got))
                self._delta("socket", source.overruns)
        finally:
            source.close()

    def _listen(self, addr: tuple[str, int]) -> None:
        warned = False
        while not self._stop.is_set():
            try:
                server = HealthServer(addr, None, None, {"/flows": self.serve}, purpose="flows")
            except TabbyError as exc:
                if not warned:
                    log.warning("flow log: %s; trying again every %gs", exc, LISTEN_RETRY)
                    warned = True
                self._stop.wait(LISTEN_RETRY)
                continue
            server.start()
            self.listener = server
            log.info("flow log: /flows on %s:%d", *server.address)
            return

    def _work(self) -> None:
        s = self.settings
        dumper: Dumper | None = None
        next_flush = next_ct = next_bounds = 0.0
        try:
            while not self._stop.is_set():
                self._drain(min(s.flush, 0.25))
                now = self.clock()
                if now >= next_ct and self.table.open_flows():
                    dumper = self._dump(dumper, now)
                    next_ct = now + s.ct_poll
                if now >= next_flush:
                    self.table.expire(now)
                    self._write()
                    next_flush = now + s.flush
                if now >= next_bounds:
                    self.store.enforce()
                    self._delta("ratelimit", self._overflow())
                    next_bounds = now + 5.0
                self._delta("table", self.table.overflow)
                self._delta("store", self.store.write_errors)
                self._delta("evicted", self.store.evicted)
                self.rows.set(self.store.rows)
        finally:
            if dumper is not None:
                dumper.close()

    def _drain(self, wait: float) -> None:
        try:
            item = self.queue.get(timeout=wait)
        except queue.Empty:
            return
        eps = self._endpoint_map()
        ids = self.ids
        while True:
            now, rec = item
            fid = flow_id_of_prefix(rec.prefix)
            rule = ids.get(fid) if fid is not None else None
            if rule is None:
                self.dropped.inc("unknown")
            else:
                self.table.add(rec, rule, eps, now)
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return

    def _dump(self, dumper: Dumper | None, now: float) -> Dumper | None:
        try:
            dumper = dumper or self._dumper_factory()
            self.table.observe(dumper.dump(), now)
        except (TabbyError, OSError) as exc:
            log.warning("flow log: reading conntrack: %s", exc)
            if dumper is not None:
                dumper.close()
            return None
        return dumper

    def _write(self) -> None:
        batch = self.table.dirty()
        if not batch:
            return
        ids = self.store.put((row, rec if row is not None else self.annotate(rec))
                             for _, row, rec in batch)
        self.table.written((key, rid) for (key, _, _), rid in zip(batch, ids, strict=True))

    def _delta(self, what: str, total: int | None) -> None:
        """Turn a running total read elsewhere into counter increments (a total that went
        down was reset: all of it is new)."""
        if total is None:
            return
        seen = self._seen[what]
        amount = total - seen if total >= seen else total
        self._seen[what] = total
        if amount > 0:
            if what == "evicted":
                self.evicted.inc(amount=amount)
            else:
                self.dropped.inc(what, amount=amount)

    def _endpoint_map(self) -> dict[str, str]:
        eps = self._endpoints
        if self._ep_map[0] is not eps:
            out = {}
            for ep in eps:
                name = f"{ep.meta.namespace}/{ep.spec.pod or ep.spec.workload or ep.meta.name}"
                for net in ep.spec.ip_networks:
                    out[str(net.network_address)] = name
            self._ep_map = (eps, out)
        return self._ep_map[1]

    # -- reading ------------------------------------------------------------------------
    def query(self, flt: FlowFilter) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.store.query(flt)]

    def serve(self, query: str) -> tuple[int, str, str]:
        """``GET /flows?QUERY``: (status, content type, body)."""
        params: Mapping[str, str] = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        try:
            flt = FlowFilter.from_query(params)
        except TabbyError as exc:
            return 400, "text/plain; charset=utf-8", f"{exc}\n"
        body = {"node": self.node, "items": self.query(flt)}
        if self.problem:
            body["problem"] = self.problem
        return 200, "application/json", json.dumps(body) + "\n"


def _same(rec: FlowRecord) -> FlowRecord:
    return rec


def read_gate_overflow(read: Callable[[str], str] | None = None) -> int | None:
    """Packets the flow log's rate limit kept from the log (the gate chain's counter in
    this namespace's table, read with ``read``: the agent's in-process nft reader, else
    the ``nft`` binary); None if it cannot be read."""
    if read is None:
        from tabby.dataplane.nft import NftCommand
        read = NftCommand().read
    try:
        text = read(f"chain {NFT_FAMILY} {NFT_TABLE} {GATE_CHAIN}")
    except TabbyError:
        return None
    return gate_overflow(json.loads(text))


def gate_overflow(listing: Mapping[str, Any]) -> int | None:
    for item in listing.get("nftables", ()):
        rule = item.get("rule")
        if rule is None or rule.get("comment") != OVER_COMMENT:
            continue
        for expr in rule.get("expr", ()):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    return None
