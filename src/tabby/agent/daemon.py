"""The node agent: one synchronous reconcile loop, a CNI socket, health and metrics.

::

    store --list/watch--> StoreCache --snapshot--> calc (desired routes, endpoint labels)
                               ^                        |
    CNI socket --> AgentPodHandler (ADD/DEL: wire,      v
                   write endpoint, cache.put)   RouteReconciler, SysctlReconciler,
                                                endpoint label updates

The loop: list every kind, sync, then follow one watch of the whole store
(from the listed revision + 1), folding bursts of events together (a short
quiet period, bounded) before the next sync. ``Compacted`` or a store error
means list again. A pass is also forced every ``resync_interval`` seconds (so
a route removed behind the agent's back comes back) and, after a failed
pass, retried with backoff. Passes hold the dataplane lock the CNI handler
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

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tabby.agent.cache import StoreCache
from tabby.agent.cniserver import CNIServer
from tabby.agent.controllers import HasHealth, build_controllers
from tabby.agent.handler import AgentPodHandler
from tabby.agent.http import HealthServer
from tabby.agent.metrics import AgentMetrics
from tabby.calc.endpoints import endpoint_updates, refreshed_endpoint
from tabby.calc.routes import desired_routes
from tabby.cni.wire import DEFAULT_SOCKET
from tabby.dataplane.netlink import CallCounts
from tabby.dataplane.pods import PodWirer
from tabby.dataplane.routes import RouteReconciler
from tabby.dataplane.sysctls import SysctlReconciler, SysctlSync, desired_node_sysctls
from tabby.errors import Compacted, NotFound, TabbyError
from tabby.model import Namespace, Pod, WorkloadEndpoint
from tabby.snapshot import Snapshot
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
        self.routes = RouteReconciler(self.counts)
        self.sysctls = SysctlReconciler(self.counts)
        self.handler = AgentPodHandler(
            node=config.node, client=self.client, cache=self.cache,
            wirer=PodWirer(self.counts), lock=self.lock, ready=self.is_ready, mtu=config.mtu)
        self.controllers = build_controllers(config, self.counts, self.metrics, self.client)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.passes = 0
        self._refreshed = False  # the last pass rewrote endpoints its calculation had not seen
        self._last_full = 0.0  # monotonic time of the last full (kernel read-back) pass

    # -- lifecycle -------------------------------------------------------------
    def is_ready(self) -> bool:
        return self._ready.is_set()

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._stop.set()

    def run(self) -> None:
        """Serve until ``stop()``: HTTP, the CNI socket, and the reconcile loop here."""
        http = HealthServer(self.config.metrics_addr, self.metrics.registry.render, self._health)
        http.start()
        try:
            cni = CNIServer(self.config.cni_socket, self.handler, self.metrics)
        except BaseException:
            http.close()
            raise
        cni.start()
        log.info("agent for node %s: CNI on %s, metrics on %s:%d", self.node,
                 self.config.cni_socket, *http.address)
        try:
            self.loop()
        finally:
            cni.close()
            http.close()
            for controller in self.controllers:
                controller.close()
            log.info("agent for node %s stopped; the dataplane is left as it is", self.node)

    def _health(self) -> tuple[bool, str]:
        if self._ready.is_set():
            notes = [n for c in self.controllers if isinstance(c, HasHealth)
                     for n in c.health_notes()]
            return True, "\n".join(["ok", *notes])
        return False, "waiting for the first full sync with the datastore"

    # -- the loop ----------------------------------------------------------------
    def loop(self) -> None:
        watch: Watch | None = None
        backoff = 0.0
        next_pass = 0.0  # monotonic time a pass is due (0: now)
        failures = 0  # store attempts failed in a row (logged once it answers again)
        down_since = 0.0
        try:
            while not self._stop.is_set():
                try:
                    if watch is None:
                        watch = self._relist()
                        next_pass = 0.0
                        if failures:
                            log.info("datastore answering again after %d failed attempts"
                                     " (%.1fs); listed afresh", failures,
                                     time.monotonic() - down_since)
                            failures = 0
                    if time.monotonic() >= next_pass:
                        ok = self.sync()
                        backoff = 0.0 if ok else min(max(backoff * 2, 0.5),
                                                     self.config.max_backoff)
                        next_pass = time.monotonic() + (backoff or self._resync_interval())
                        if self._refreshed:  # our own endpoint writes come back as no event
                            next_pass = time.monotonic()
                    wait = max(0.0, min(0.5, next_pass - time.monotonic()))
                    if self._follow(watch, wait):
                        next_pass = min(next_pass, time.monotonic())
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

    # -- one pass ----------------------------------------------------------------
    def sync(self) -> bool:
        """Compute and apply everything once; True if nothing failed."""
        started = time.monotonic()
        full = not self._last_full or started - self._last_full >= self._resync_interval()
        with self.lock:
            snapshot = self.cache.snapshot()
            controlled = [f"{c.name}: {problem}" for c in self.controllers
                          for problem in c.sync(snapshot, full=full)]
            desired = desired_routes(snapshot, self.node, bgp=self.config.bgp == "bird")
            result = self.routes.apply(desired, full=full)
        if full:
            self._last_full = started
            sysctls = self.sysctls.apply(desired_node_sysctls())
        else:
            sysctls = SysctlSync()
        refreshed = self._refresh_endpoints(snapshot)
        self._refreshed = refreshed > 0
        self.passes += 1
        problems = result.errors + sysctls.errors + controlled
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
        m.endpoint_updates.inc(amount=refreshed)
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
            # The cache and the computed state are long-lived: move them out of the
            # cyclic collector's reach, or its full passes (~150 ms at 10k services,
            # measured) land on random CNI requests and incremental updates.
            gc.freeze()
        return not problems

    def _refresh_endpoints(self, snapshot: Snapshot) -> int:
        """Rewrite endpoints whose pod or namespace labels changed; returns how many."""
        count = 0
        for want in endpoint_updates(snapshot, self.node):
            change = _refresher(snapshot.pod(want.meta.namespace, want.spec.pod),
                                snapshot.namespace(want.meta.namespace))
            try:
                stored = self.client.mutate(WorkloadEndpoint, want.meta.name,
                                            want.meta.namespace, change)
            except NotFound:
                continue  # deleted meanwhile
            self.cache.put(stored)
            count += 1
        return count


def _refresher(pod: Pod | None, ns: Namespace | None
               ) -> Callable[[WorkloadEndpoint], WorkloadEndpoint]:
    def change(current: WorkloadEndpoint) -> WorkloadEndpoint:
        return refreshed_endpoint(current, pod, ns)
    return change


def _closed(watch: Watch | None) -> None:
    if watch is not None:
        watch.close()
