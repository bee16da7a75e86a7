"""Who reaches whom: every selected pod against every selected pod's ports.

``plan_probes`` (pure) decides the probes: sources x targets (a pod is probed
from itself only when it is named in both ``--from`` and ``--to``), the
target's address of the chosen family (default: the lab's first), and per
target either the given port/protocol or each declared port over its declared
protocol (TCP or UDP; the pod's listener answers both on every port).
``run_probes`` starts one prober process per source pod, inside that pod's
namespace, which probes all of its targets concurrently; a probe counts as
connected only if the answer is the target pod's name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tabby.errors import LabError
from tabby.lab import prober, system
from tabby.lab.pods import resolve
from tabby.lab.state import LabState, PodRecord

FAMILIES = {"ipv4": 4, "ipv6": 6}
PROTOCOLS = ("tcp", "udp")
PROBERS = 8  # prober processes at a time
DEFAULT_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Probe:
    source: PodRecord
    target: PodRecord
    family: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class ProbeResult:
    probe: Probe
    connected: bool
    answer: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        p = self.probe
        return {"from": p.source.ref, "to": p.target.ref, "family": p.family,
                "protocol": p.protocol, "port": p.port, "connected": self.connected}


def plan_probes(state: LabState, sources: Sequence[str] = (), targets: Sequence[str] = (),
                port: int | None = None, protocol: str | None = None,
                family: str | None = None) -> list[Probe]:
    fam = family or f"ipv{state.topology.families[0]}"
    if fam not in FAMILIES:
        raise LabError(f"--family {fam!r}: choose ipv4 or ipv6")
    if protocol is not None and protocol not in PROTOCOLS:
        raise LabError(f"--protocol {protocol!r}: choose tcp or udp")
    if port is not None and not 0 < port < 65536:
        raise LabError(f"--port {port}: outside 1..65535")
    src = [resolve(state, r) for r in sources] if sources else list(state.pods)
    dst = [resolve(state, r) for r in targets] if targets else list(state.pods)
    both = {r.ref for r in src} & {r.ref for r in dst} if sources and targets else set()
    probes = []
    for s in sorted(set(src), key=_order):
        for t in sorted(set(dst), key=_order):
            if s.ref == t.ref and s.ref not in both:
                continue
            if t.ip(FAMILIES[fam]) is None:
                continue
            probes += [Probe(s, t, fam, proto, p) for p, proto in _ports(t, port, protocol)]
    return probes


def _order(record: PodRecord) -> tuple[str, str]:
    return record.namespace, record.name


def _ports(target: PodRecord, port: int | None,
           protocol: str | None) -> list[tuple[int, str]]:
    """(port, protocol) pairs to probe on ``target``."""
    declared = [(p, proto.lower()) for p, proto in target.ports if proto.lower() in PROTOCOLS]
    numbers = [port] if port is not None else sorted({p for p, _ in target.ports})
    out = []
    for number in numbers:
        if protocol is not None:
            out.append((number, protocol))
            continue
        protos = sorted({proto for p, proto in declared if p == number}) or ["tcp"]
        out += [(number, proto) for proto in protos]
    return out


def run_probes(probes: Sequence[Probe], timeout: float = DEFAULT_TIMEOUT) -> list[ProbeResult]:
    """Run ``probes`` (one prober process per source pod); results in the same order."""
    by_source: dict[str, list[int]] = {}
    for index, p in enumerate(probes):
        by_source.setdefault(p.source.netns, []).append(index)
    results: list[ProbeResult | None] = [None] * len(probes)

    def one(indexes: list[int]) -> None:
        answers = _run_prober([probes[i] for i in indexes], timeout)
        for i, (connected, answer, error) in zip(indexes, answers, strict=True):
            results[i] = ProbeResult(probes[i], connected, answer, error)

    with ThreadPoolExecutor(max_workers=PROBERS) as pool:
        futures = [pool.submit(one, indexes) for indexes in by_source.values()]
    for f in futures:
        f.result()
    return [r for r in results if r is not None]


def _run_prober(probes: list[Probe], timeout: float) -> list[tuple[bool, str, str]]:
    source = probes[0].source
    request = {"timeout": timeout, "probes": [
        {"id": i, "address": str(p.target.ip(FAMILIES[p.family])), "port": p.port,
         "protocol": p.protocol, "expect": p.target.name} for i, p in enumerate(probes)]}
    argv = system.in_netns(source.netns, [sys.executable, "-I", "-S", prober.__file__])
    try:
        done = subprocess.run(argv, input=json.dumps(request), capture_output=True, text=True,
                              timeout=timeout * (1 + len(probes) // prober.MAX_IN_FLIGHT) + 30,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"probing from {source.ref}: the prober hung") from exc
    if done.returncode != 0:
        raise LabError(f"probing from {source.ref} failed: {done.stderr.strip()[-500:]}")
    answers = {r["id"]: r for r in json.loads(done.stdout)["results"]}
    return [(bool(answers[i]["connected"]), str(answers[i]["answer"]), str(answers[i]["error"]))
            for i in range(len(probes))]


def probe(state: LabState, sources: Sequence[str] = (), targets: Sequence[str] = (),
          port: int | None = None, protocol: str | None = None, family: str | None = None,
          timeout: float = DEFAULT_TIMEOUT) -> list[ProbeResult]:
    return run_probes(plan_probes(state, sources, targets, port, protocol, family), timeout)
