"""Driving a CNI plugin binary exactly as a runtime does, for timing.

Each call is one exec with the CNI_* environment and the network config on
stdin, from a thread standing in the runtime's network namespace (a node's,
entered with setns, so the plugin is born there as under containerd).

    tabby = Target("tabby", "/path/tabby-cni", config, cni_path, runtime_netns="tb-node")
    seq = sequential([tabby, peer], "ADD", [ids_a, ids_b])   # one call at a time, interleaved
    par = concurrent(tabby, "ADD", ids, workers=8)           # 8 calls in flight

``sequential`` alternates the targets call by call (and which goes first), so
a machine that gets busier half-way through slows both alike. A ``Run`` keeps
every latency; its rate is calls per second of wall time (for an interleaved
run: of the target's own calls).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.netns import BenchError, entered


def _no_netns(container_id: str) -> str:
    return "/var/run/netns/none"


def _no_args(container_id: str) -> str:
    return ""


@dataclass(frozen=True, slots=True)
class Target:
    """One plugin as a runtime calls it."""

    name: str
    binary: str
    config: Mapping[str, Any]
    cni_path: str
    runtime_netns: str | None = None  # where the runtime runs (a node); None: here
    pod_netns: Callable[[str], str] = _no_netns  # container id -> CNI_NETNS
    cni_args: Callable[[str], str] = _no_args  # container id -> CNI_ARGS
    ifname: str = "eth0"

    def env(self, command: str, container_id: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": self.pod_netns(container_id),
            "CNI_IFNAME": self.ifname,
            "CNI_PATH": self.cni_path,
        }
        args = self.cni_args(container_id)
        if args:
            env["CNI_ARGS"] = args
        return env


@dataclass(frozen=True, slots=True)
class Run:
    latencies: tuple[float, ...]  # seconds, one per call
    wall: float  # seconds

    @property
    def ops_per_sec(self) -> float:
        return len(self.latencies) / self.wall if self.wall > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000


def call(target: Target, command: str, container_id: str, timeout: float = 60.0
         ) -> tuple[float, dict[str, Any]]:
    """Exec the plugin once (in the calling thread's namespace); (seconds, parsed stdout).
    BenchError with the plugin's answer if it exits non-zero."""
    data = json.dumps(target.config).encode()
    start = time.perf_counter()
    try:
        out = subprocess.run([target.binary], input=data, env=target.env(command, container_id),
                             capture_output=True, check=False, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{target.name} {command} {container_id}: {exc}") from exc
    took = time.perf_counter() - start
    text = out.stdout.decode(errors="replace")
    if out.returncode != 0:
        raise BenchError(f"{target.name} {command} {container_id}: exit {out.returncode}:"
                         f" {text.strip()} {out.stderr.decode(errors='replace').strip()}")
    result: dict[str, Any] = json.loads(text) if text.strip() else {}
    return took, result


def _in_thread(work: Callable[[], None]) -> None:
    """Run ``work`` on a thread of its own (setns must never move the main thread)."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    thread = threading.Thread(target=body, name="cnidrive")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def sequential(targets: Sequence[Target], command: str, ids: Sequence[Sequence[str]]
               ) -> list[Run]:
    """One call at a time: call i of every target, then call i+1; the target that goes
    first rotates. ``ids[k]`` are the container ids of ``targets[k]`` (equal lengths)."""
    if len({len(x) for x in ids}) > 1 or len(ids) != len(targets):
        raise BenchError("sequential: one list of container ids per target, of equal length")
    latencies: list[list[float]] = [[] for _ in targets]

    def work() -> None:
        for i in range(len(ids[0]) if ids else 0):
            for shift in range(len(targets)):
                k = (i + shift) % len(targets)
                with entered(targets[k].runtime_netns):
                    took, _ = call(targets[k], command, ids[k][i])
                latencies[k].append(took)

    _in_thread(work)
    return [Run(tuple(lat), sum(lat)) for lat in latencies]


def concurrent(target: Target, command: str, ids: Sequence[str], workers: int = 8) -> Run:
    """``workers`` threads take the next container id as soon as they are free (as a
    runtime starting many pods at once); wall time from first start to last finish."""
    pending: Iterator[str] = iter(list(ids))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with entered(target.runtime_netns):
                while not errors:
                    with lock:
                        cid = next(pending, None)
                    if cid is None:
                        return
                    took, _ = call(target, command, cid)
                    with lock:
                        latencies.append(took)
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=work, name=f"cnidrive-{n}") for n in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise BenchError(f"{target.name} {command}: {len(errors)} worker(s) failed;"
                         f" first: {errors[0]}") from errors[0]
    return Run(tuple(latencies), wall)


def drive(target: Target, command: str, ids: Sequence[str], workers: int = 1) -> Run:
    """``ids`` through one target: one at a time, or from ``workers`` threads."""
    if workers == 1:
        return sequential([target], command, [ids])[0]
    return concurrent(target, command, ids, workers)


def best_effort(target: Target, command: str, ids: Sequence[str]) -> int:
    """Call ``command`` for every id, ignoring failures (cleanup); how many failed."""
    failed = 0

    def work() -> None:
        nonlocal failed
        with entered(target.runtime_netns):
            for cid in ids:
                try:
                    call(target, command, cid, timeout=30.0)
                except BenchError:
                    failed += 1

    _in_thread(work)
    return failed
