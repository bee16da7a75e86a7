"""The node agent: one synchronous reconcile loop, a CNI socket, health and metrics.

::

    store --list/watch--> StoreCache --snapshot--> NodeCalculator --> DesiredState
                           ^      ^                  (tabby.calc.node, pure)   |
                           |      |                                            v
                           |      NodePublisher: VTEPs, endpoint   NodeApplier: one reconciler
                           |      labels (store writes, cache.put)  per kernel object (links,
    CNI socket --> AgentPodHandler (ADD/DEL: wire,                  nft, BIRD, routes, sysctls)
                   write endpoint, cache.put)

The loop: list every kind, then follow one watch of the whole store (from
the listed revision + 1), folding bursts of events together (a short quiet
period, bounded). Two steps run on their own triggers: the publisher (the
node's writes to the store, ``tabby.agent.publisher``) after a relist, an
event or a failed run of its own (and, when it keeps the Node's addresses,
every ``resync_interval``: a host's address changes unseen by the store), and
the pass (calculate, apply) after a relist, an event, a write of the
publisher's, or a failed pass. The pass never
writes to the store. ``Compacted`` or a store error means list again. A
pass is also forced every ``resync_interval`` seconds (so a route removed
behind the agent's back comes back) and, after a failed pass, retried with
backoff. Passes hold the dataplane lock the CNI handler
holds while it wires a pod.

With the datastore unreachable the agent fails static: no pass runs, so the
routes and the nft table stay as they are and pods keep talking; the loop
retries with backoff (each attempt first waits out the store's own retries,
outside the dataplane lock) and lists afresh once the store answers. The CNI
socket keeps serving meanwhile (``AgentPodHandler``: DEL unwires at once).
No failure ends the loop, only ``stop()``.

Stopping (``stop()``, SIGTERM in the CLI) closes the CNI socket and the HTTP
server and leaves the dataplane as it is: pods keep working, and the next
agent adopts the routes in place.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass

from tabby.agent import collector
from tabby.agent.apply import NodeApplier
from tabby.agent.autodetect import AddressPlan, HostAddresses, node_internal_ips
from tabby.agent.cache import StoreCache
from tabby.agent.cniserver import CNIServer
from tabby.agent.flows import FlowCollector, FlowSettings, read_gate_overflow
from tabby.agent.handler import AgentPodHandler
from tabby.agent.http import HealthServer
from tabby.agent.metrics import AgentMetrics
from tabby.agent.policymetrics import PolicyMetrics
from tabby.agent.publisher import NodePublisher, Published
from tabby.agent.staged import StagedAnnotator
from tabby.bgp.controller import BirdController
from tabby.calc.node import NodeCalculator, NodeSettings
from tabby.cni.wire import DEFAULT_SOCKET
from tabby.dataplane.netlink import CallCounts
from tabby.dataplane.nft import default_runner
from tabby.dataplane.pods import PodWirer
from tabby.errors import Compacted, TabbyError
from tabby.store.base import Event, Store, Watch
from tabby.store.client import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node: str
    cni_socket: str = DEFAULT_SOCKET
    metrics_addr: tuple[str, int] = ("127.0.0.1", 9099)
    mtu: int = 1500
    resync_interval: float = 30.0  # seconds between forced passes (0: never)
    quiet: float = 0.05  # a burst of events ends after this long without one
    max_burst: float = 0.5  # ... or after this long in any case
    max_backoff: float = 10.0
    bgp: str = "none"  # "bird": BIRD spreads the routes (remote routes are its, not ours)
    bgp_dir: str = "/run/tabby/bird"  # BIRD's config, control socket, pid file and log
    # The Node's BGP addresses per family (--ip, --ip6): none of them (the default) leaves
    # the Node as stored; else the publisher registers the Node and keeps them current.
    addresses: tuple[AddressPlan, ...] = ()
    # CNI ADD returns once a pass has programmed the new pod (its routes and policy), or
    # after this many seconds; until then the pod is fail-closed (0: do not wait).
    policy_setup_timeout: float = 2.0
    # Flow logs (tabby.agent.flows): None turns them off (no log rules, no collector).
    flows: FlowSettings | None = None
    # Per-rule nft counters, exported in /metrics (tabby.agent.policymetrics).
    policy_counters: bool = True


class Agent:
    def __init__(self, config: AgentConfig, store: Store) -> None:
        self.config = config
        self.node = config.node
        self.store = store
        self.client = Client(store)
        self.counts = CallCounts()
        self.metrics = AgentMetrics(self.counts.snapshot)
        self.cache = StoreCache(store, config.node)
        self.lock = threading.Lock()  # the dataplane: passes vs CNI ADD/DEL
        self.calculator = NodeCalculator(NodeSettings(
            config.node, mtu=config.mtu, bgp=config.bgp == "bird",
            flowlog=config.flows.log if config.flows is not None else None,
            counters=config.policy_counters))
        # Metric scrapes and the flow log's overflow read nft in-process (libnftables:
        # no fork per scrape), through one reader of their own.
        nft_read = default_runner().read
        self.flows = FlowCollector(
            config.node, config.flows, self.metrics.registry,
            overflow=functools.partial(read_gate_overflow, nft_read)) \
            if config.flows is not None else None
        self.applier = NodeApplier(self.counts, bird=_bird(config))
        # Rule counters, nft, BGP and IPAM metrics; staged policies' verdicts on new flow
        # records (tabby.agent.policymetrics, tabby.agent.staged).
        self.policy_metrics = PolicyMetrics(
            self.metrics.registry, nft_read=nft_read,
            ids=lambda: self.calculator.policy.flow_ids,
            bird_socket=self.applier.bird.bird.socket if self.applier.bird else None)
        self.staged = StagedAnnotator(config.node)
        if self.flows is not None:
            self.flows.annotate = lambda r: self.policy_metrics.flow(self.staged.annotate(r))
        self.publisher = NodePublisher(config.node, self.client, self.cache,
                                       addresses=_address_source(config, self.client,
                                                                 self.counts))
        self.handler = AgentPodHandler(
            node=config.node, client=self.client, cache=self.cache,
            wirer=PodWirer(self.counts), lock=self.lock, ready=self.is_ready, mtu=config.mtu,
            programmer=self if config.policy_setup_timeout > 0 else None)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.passes = 0
        self._sync_lock = threading.Lock()  # one pass at a time (the loop's, or an ADD's)
        self._pass_state = threading.Condition()
        # Passes count the snapshots they calculate from (taken under the dataplane lock);
        # ``_covered`` is the number of the last completed pass's snapshot.
        self._snapshots = self._covered = self._pass_snapshot = 0
        self._running = False
        self._last_full = 0.0  # monotonic time of the last full (kernel read-back) pass
        self._publish_full = True  # the next publisher run checks IPAM too

    # -- lifecycle -------------------------------------------------------------
    def is_ready(self) -> bool:
        return self._ready.is_set()

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._stop.set()

    def run(self) -> None:
        """Serve until ``stop()``: HTTP, the CNI socket, and the reconcile loop here."""
        http = HealthServer(self.config.metrics_addr, self.metrics.registry.render, self._health,
                            {"/flows": self.flows.serve} if self.flows is not None else None)
        http.start()
        try:
            cni = CNIServer(self.config.cni_socket, self.handler, self.metrics)
        except BaseException:
            http.close()
            raise
        cni.start()
        self.handler.start()  # deletes retired pod veths, an earlier agent's at once
        log.info("agent for node %s: CNI on %s, metrics on %s:%d", self.node,
                 self.config.cni_socket, *http.address)
        try:
            if self.flows is not None:
                try:  # flow logs are never a reason not to run the dataplane
                    self.flows.start()
                except TabbyError as exc:
                    log.error("flow logs: %s; no flows are recorded", exc)
            self.loop()
        finally:
            cni.close()
            self.handler.close()
            http.close()
            if self.flows is not None:
                self.flows.close()
            self.applier.close()
            log.info("agent for node %s stopped; the dataplane is left as it is", self.node)

    def _health(self) -> tuple[bool, str]:
        if self._ready.is_set():
            return True, "\n".join(["ok", *self.applier.health_notes()])
        return False, "waiting for the first full sync with the datastore"

    # -- the loop ----------------------------------------------------------------
    def loop(self) -> None:
        watch: Watch | None = None
        backoff = 0.0
        next_pass = 0.0  # monotonic time a pass is due (0: now)
        publish_backoff = 0.0
        next_publish = 0.0  # monotonic time the publisher is due (inf: on the next event)
        failures = 0  # store attempts failed in a row (logged once it answers again)
        down_since = 0.0
        try:
            while not self._stop.is_set():
                try:
                    if watch is None:
                        watch = self._relist()
                        next_pass = next_publish = 0.0
                        if failures:
                            log.info("datastore answering again after %d failed attempts"
                                     " (%.1fs); listed afresh", failures,
                                     time.monotonic() - down_since)
                            failures = 0
                    if time.monotonic() >= next_publish:
                        published = self.publish()
                        ok = not published.problems
                        publish_backoff = 0.0 if ok else min(max(publish_backoff * 2, 0.5),
                                                             self.config.max_backoff)
                        next_publish = time.monotonic() + (
                            publish_backoff if not ok else self._publish_period())
                        if published.wrote:  # in the cache already: the pass is due
                            next_pass = time.monotonic()
                    if time.monotonic() >= next_pass:
                        ok = self.sync()
                        backoff = 0.0 if ok else min(max(backoff * 2, 0.5),
                                                     self.config.max_backoff)
                        next_pass = time.monotonic() + (backoff or self._resync_interval())
                    due = min(next_pass, next_publish)
                    wait = max(0.0, min(0.5, due - time.monotonic()))
                    if self._follow(watch, wait):
                        next_pass = next_publish = min(next_pass, time.monotonic())
                except Compacted:
                    log.warning("store history compacted under the watch; listing again")
                    _closed(watch)
                    watch = None
                except Exception as exc:  # the agent outlives any failure: fail static
                    backoff = min(max(backoff * 2, 0.5), self.config.max_backoff)
                    if not failures:
                        down_since = time.monotonic()
                    failures += 1
                    if isinstance(exc, TabbyError):
                        log.error("reconcile loop: %s; retrying in %.1fs", exc, backoff)
                    else:  # a bug, or an error the store did not map: keep its traceback
                        log.exception("reconcile loop failed; retrying in %.1fs", backoff)
                    _closed(watch)
                    watch = None
                    self._stop.wait(backoff)
        finally:
            _closed(watch)

    def _publish_period(self) -> float:
        """After a clean run: the next on an event only, or also with time (a host's
        address changes without the store hearing of it)."""
        return self._resync_interval() if self.publisher.periodic else _NEVER

    def _resync_interval(self) -> float:
        return self.config.resync_interval if self.config.resync_interval > 0 else 1e9

    def _relist(self) -> Watch:
        # Reach the store first, outside the dataplane lock: while it is down each
        # attempt waits out the store's retries, and CNI DEL must not wait behind it.
        self.store.revision()
        # Under the dataplane lock: an ADD's cache.put cannot fall between the
        # listing and the swap, where the fresh listing would drop it.
        with self.lock:
            start = self.cache.load()
        self.metrics.store_relists.inc()
        self._last_full = 0.0  # after a relist, read the kernel back too
        return self.store.watch_many(self.cache.resources(), start + 1)

    def _follow(self, watch: Watch, wait: float) -> bool:
        """Take one burst of events (waiting up to ``wait`` for it); True if that matters."""
        events = watch.next(timeout=wait)
        if not events:
            return False
        burst_end = time.monotonic() + self.config.max_burst
        while not self._stop.is_set():
            remaining = burst_end - time.monotonic()
            if remaining <= 0:
                break
            more = watch.next(timeout=min(self.config.quiet, remaining))
            if not more:
                break
            events.extend(more)
        self._count(events)
        return bool(self.cache.apply(events))

    def _count(self, events: list[Event]) -> None:
        for event in events:
            self.metrics.store_events.inc(event.key.resource)

    # -- the node's writes to the store ---------------------------------------------
    def publish(self) -> Published:
        """Run the publisher once (outside the dataplane lock: it waits on the store)."""
        full, self._publish_full = self._publish_full, False
        published = self.publisher.run(self.cache.snapshot(), full=full)
        for problem in published.problems:
            log.error("publishing: %s", problem)
        if published.problems:
            self._publish_full = True
        self.metrics.endpoint_updates.inc(amount=published.endpoints)
        return published

    # -- one pass ----------------------------------------------------------------
    def running(self) -> bool:
        """Is a pass under way (perhaps still waiting for the dataplane lock)?"""
        with self._pass_state:
            return self._running

    def ticket(self) -> int:
        """Called under the dataplane lock, right after a change to the cache: every pass
        whose snapshot number is above this one calculates with that change."""
        return self._snapshots

    def programmed(self, ticket: int) -> bool:
        """Make sure a pass that calculates with what the cache held at ``ticket`` has
        completed: join the running one if it snapshots after the ticket, else run one here
        (the CNI handler calls this after writing a new endpoint, so that ADD returns with
        the pod programmed). An ADD storm shares passes: a pass that was waiting for the
        dataplane lock while ADDs wired their pods covers all of them, and of ADDs waiting
        for a pass that does not cover them, one runs the next and the others find it done
        (was one pass per ADD and more: 112 passes for 100 ADDs from 8 workers). False if
        that took longer than the policy setup timeout."""
        if not self.is_ready():
            return False
        deadline = time.monotonic() + self.config.policy_setup_timeout
        with self._pass_state:
            while self._covered <= ticket:
                if not self._running:
                    break  # nobody is on it: run it here
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._pass_state.wait(remaining)
            else:
                return True
        self.sync(unless_covered=ticket)
        return True

    def sync(self, unless_covered: int | None = None) -> bool:
        """Calculate and apply everything once; True if nothing failed. With
        ``unless_covered`` (a ``ticket``), nothing is run if a pass that covers it has
        completed by the time this one could start."""
        with self._sync_lock:
            with self._pass_state:
                if unless_covered is not None and self._covered > unless_covered:
                    return True
                self._running = True
            try:
                return self._sync()
            finally:
                with self._pass_state:
                    self._running = False
                    self._covered = self._pass_snapshot
                    self._pass_state.notify_all()

    def _sync(self) -> bool:
        started = time.monotonic()
        full = not self._last_full or started - self._last_full >= self._resync_interval()
        with self.lock, collector.paused():
            snapshot = self.cache.snapshot()
            self._snapshots += 1  # under the dataplane lock: see ticket()
            self._pass_snapshot = self._snapshots
            state = self.calculator.calculate(snapshot)
            applied = self.applier.apply(state, full=full)
        if self.flows is not None:  # what the flow ids in the rules just applied mean
            self.flows.update(self.calculator.policy.flow_ids, snapshot.endpoints)
        self.staged.update(snapshot)
        self.policy_metrics.observe(applied.nft_mode, applied.nft_seconds, applied.nft_failed,
                                    snapshot)
        if full:
            self._last_full = started
            self._publish_full = True  # the publisher's periodic IPAM check rides along
        self.passes += 1
        result, desired = applied.routes, state.routes
        problems = applied.problems
        if problems:
            self._last_full = 0.0  # retry with a full pass
        for problem in problems:
            log.error("dataplane: %s", problem)
        for route in result.conflicts:
            log.warning("route %s: destination held by another protocol; left alone", route)
        m = self.metrics
        m.route_changes.inc("replace", amount=len(result.replaced))
        m.route_changes.inc("delete", amount=len(result.deleted))
        m.routes_desired.set(len(desired))
        m.route_conflicts.set(len(result.conflicts))
        m.routes_unresolved.set(len(result.unresolved))
        m.endpoints.set(len(snapshot.local_endpoints(self.node)))
        m.syncs.inc("ok" if not problems else "error")
        m.sync_seconds.observe(time.monotonic() - started)
        if result.changes:
            log.info("routes: %d replaced, %d deleted (%d desired)", len(result.replaced),
                     len(result.deleted), len(desired))
        if not self._ready.is_set():
            self._ready.set()
            m.ready.set(1)
            log.info("first sync done: %d routes desired, %d endpoints", len(desired),
                     len(snapshot.local_endpoints(self.node)))
        if full:
            # The cache and the computed state are long-lived: out of the cyclic
            # collector's reach (tabby.agent.collector says why), after every full pass:
            # a relist brings a whole new cache.
            collector.settle()
        return not problems


_NEVER = float("inf")


def _bird(config: AgentConfig) -> BirdController | None:
    if config.bgp != "bird":
        return None
    return BirdController.in_directory(config.node, config.bgp_dir)


def _address_source(config: AgentConfig, client: Client, counts: CallCounts
                    ) -> HostAddresses | None:
    plans = tuple(p for p in config.addresses if p.mode != "none")
    if not plans:
        return None
    return HostAddresses(plans, counts=counts,
                         internal_ips=functools.partial(node_internal_ips, client, config.node))


def _closed(watch: Watch | None) -> None:
    if watch is not None:
        watch.close()
