"""A concurrency drill: many processes allocate and release against one datastore.

    result = run_drill("sqlite:///tmp/x.db", processes=8, allocations=250)
    assert not result.problems()

Each worker process opens its own store, plays node ``drill-<i % nodes>``
(so several processes share a node and race for its blocks) and assigns
``allocations`` handles. All workers then wait (a barrier) while the parent
snapshots the store: every address must be held exactly once. Then each
worker releases its handles, alternately by handle and by IP, and reports
what it released. The parent finally checks that the blocks are empty and
the handles gone, and releases the empty blocks of every drill node.

The pool must exist before the drill (``ensure_pool``); the drill is used by
the tests against SQLite and a real etcd cluster, and by benchmarks.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from queue import Empty
from typing import TypeVar

from tabby.errors import DrillError as DrillError
from tabby.ipam import blocks as blk
from tabby.ipam.engine import IPAM
from tabby.model import IPAMBlock, IPAMHandle, IPPool, ObjectMeta
from tabby.model.ippool import IPPoolSpec
from tabby.store import open_store
from tabby.store.client import Client

PHASE_TIMEOUT = 120.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerReport:
    index: int
    assigned: tuple[str, ...]
    released: tuple[str, ...]
    error: str = ""
    assigning: tuple[float, float] = (0.0, 0.0)  # time.monotonic() (system-wide) from, to
    releasing: tuple[float, float] = (0.0, 0.0)


@dataclass(slots=True)
class DrillResult:
    reports: list[WorkerReport] = field(default_factory=list)
    held_at_barrier: list[str] = field(default_factory=list)  # every allocated address
    handles_at_barrier: int = 0
    blocks_left: list[str] = field(default_factory=list)  # non-empty blocks after release
    handles_left: list[str] = field(default_factory=list)
    blocks_after_cleanup: int = 0
    seconds: float = 0.0
    assigned_seconds: float = 0.0  # from the start until every worker held its addresses
    released_seconds: float = 0.0  # from the barrier until every worker had released

    def problems(self) -> list[str]:
        out = [f"worker {r.index}: {r.error}" for r in self.reports if r.error]
        assigned = [a for r in self.reports for a in r.assigned]
        dupes = [a for a, n in Counter(assigned).items() if n > 1]
        if dupes:
            out.append(f"{len(dupes)} address(es) handed out twice, e.g. {dupes[:5]}")
        stored = [a for a, n in Counter(self.held_at_barrier).items() if n > 1]
        if stored:
            out.append(f"{len(stored)} address(es) allocated twice in blocks: {stored[:5]}")
        if sorted(self.held_at_barrier) != sorted(assigned):
            out.append(f"blocks held {len(self.held_at_barrier)} addresses at the barrier,"
                       f" workers were given {len(assigned)}")
        if self.handles_at_barrier != len(assigned):
            out.append(f"{self.handles_at_barrier} handles at the barrier for {len(assigned)}"
                       " allocations")
        for r in self.reports:
            if sorted(r.released) != sorted(r.assigned):
                out.append(f"worker {r.index} released {len(r.released)} of"
                           f" {len(r.assigned)} addresses")
        if self.blocks_left:
            out.append(f"blocks still holding addresses: {self.blocks_left[:5]}")
        if self.handles_left:
            out.append(f"handles left: {self.handles_left[:5]}")
        if self.blocks_after_cleanup:
            out.append(f"{self.blocks_after_cleanup} block(s) left after release_empty_blocks")
        return out

    def rates(self) -> tuple[float, float]:
        """Assigns and releases per second, all workers together (first start to last end
        of each phase: process start-up and the barrier are not counted)."""
        def rate(windows: list[tuple[float, float]]) -> float:
            span = max(b for _, b in windows) - min(a for a, _ in windows)
            return len(self.held_at_barrier) / span if span > 0 else 0.0
        if not self.reports:
            return 0.0, 0.0
        return (rate([r.assigning for r in self.reports]),
                rate([r.releasing for r in self.reports]))


def ensure_pool(url: str, cidr: str, block_size: int, name: str = "drill") -> None:
    import ipaddress
    client = Client(open_store(url))
    try:
        spec = IPPoolSpec(cidr=ipaddress.ip_network(cidr), block_size=block_size)
        client.apply(IPPool(ObjectMeta(name), spec))
    finally:
        client.store.close()


def run_drill(url: str, processes: int = 8, allocations: int = 250, nodes: int = 4,
              dual_stack: bool = False,
              at_barrier: Callable[[Client], object] | None = None,
              phase_timeout: float = PHASE_TIMEOUT) -> DrillResult:
    """Run the drill; ``at_barrier(client)`` runs while every address is held (a test's
    look at the store, e.g. ``tabby.ipam.report.check``). A worker silent for
    ``phase_timeout`` seconds in one phase (assign, release) fails the drill."""
    ctx = multiprocessing.get_context("spawn")
    go_release = ctx.Event()
    allocated: multiprocessing.Queue[int] = ctx.Queue()
    reports: multiprocessing.Queue[WorkerReport] = ctx.Queue()
    started = time.monotonic()
    workers = [ctx.Process(target=_worker, args=(url, i, nodes, allocations, dual_stack,
                                                 allocated, go_release, reports, phase_timeout),
                           daemon=True)
               for i in range(processes)]
    for w in workers:
        w.start()
    result = DrillResult()
    client = Client(open_store(url))
    try:
        _collect(allocated, workers, len(workers), phase_timeout)  # all addresses held
        result.held_at_barrier = [str(blk.address(b.spec, o)) for b in client.list(IPAMBlock)
                                  for o, a in blk.allocated(b.spec)
                                  if a.handle_id != blk.RESERVED_HANDLE]
        result.handles_at_barrier = sum(
            n for h in client.list(IPAMHandle) for _, n in h.spec.blocks)
        result.assigned_seconds = time.monotonic() - started
        if at_barrier is not None:
            at_barrier(client)
        released_from = time.monotonic()
        go_release.set()
        result.reports = sorted(_collect(reports, workers, len(workers), phase_timeout),
                                key=lambda r: r.index)
        result.released_seconds = time.monotonic() - released_from
        _finish(client, result, nodes)
    finally:
        go_release.set()
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
        client.store.close()
    result.seconds = time.monotonic() - started
    return result


def _collect(queue: multiprocessing.Queue[T], workers: Sequence[BaseProcess], count: int,
             timeout: float) -> list[T]:
    """``count`` messages from the workers; DrillError if one dies or time runs out."""
    out: list[T] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        try:
            out.append(queue.get(timeout=0.2))
            continue
        except Empty:
            pass
        dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
        if dead:
            raise DrillError(f"a drill worker died (exit codes {dead})")
        if time.monotonic() > deadline:
            raise DrillError(f"drill workers silent for {timeout:.0f} s")
    return out


def _finish(client: Client, result: DrillResult, nodes: int) -> None:
    result.blocks_left = [str(b.spec.cidr) for b in client.list(IPAMBlock)
                          if not blk.is_empty(b.spec)]
    result.handles_left = [h.spec.handle_id for h in client.list(IPAMHandle)]
    ipam = IPAM(client)
    for n in range(nodes):
        ipam.release_empty_blocks(f"drill-{n}")
    result.blocks_after_cleanup = len(client.list(IPAMBlock))


def _worker(url: str, index: int, nodes: int, allocations: int, dual_stack: bool,
            allocated: multiprocessing.Queue[int], go_release: Event,
            reports: multiprocessing.Queue[WorkerReport],
            phase_timeout: float = PHASE_TIMEOUT) -> None:
    assigned: list[str] = []
    released: list[str] = []
    error = ""
    client = Client(open_store(url))
    ipam = IPAM(client)
    node = f"drill-{index % nodes}"
    held: dict[str, tuple[str, ...]] = {}
    assigning = releasing = (0.0, 0.0)
    try:
        assigning = (time.monotonic(), 0.0)
        for i in range(allocations):
            h = f"drill.{index}.{i}"
            got = ipam.assign(h, node, num_v4=1, num_v6=int(dual_stack),
                              attrs={"node": node, "pod": h})
            held[h] = tuple(str(a) for a in got.addresses)
            assigned.extend(held[h])
    except Exception as e:
        error = f"assign: {type(e).__name__}: {e}"
    assigning = (assigning[0], time.monotonic())
    allocated.put(index)
    go_release.wait(phase_timeout)
    releasing = (time.monotonic(), 0.0)
    try:
        for i, (h, addresses) in enumerate(held.items()):
            if i % 2:
                released.extend(str(a) for a in ipam.release_handle(h))
            else:
                released.extend(str(a) for a in ipam.release_ips(addresses))
    except Exception as e:
        error = error or f"release: {type(e).__name__}: {e}"
    finally:
        releasing = (releasing[0], time.monotonic())
        client.store.close()
    reports.put(WorkerReport(index, tuple(assigned), tuple(released), error, assigning,
                             releasing))
