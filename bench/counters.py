"""Per-rule counters' cost: the same two-node lab with counters on and off, same run.

Two labs side by side, ``tb-cton`` (agents with per-rule counters, the default) and
``tb-ctoff`` (``TABBY_POLICY_COUNTERS=off`` in the agents' environment), each with a
server pod on node-1 and a client pod on node-2 and the same policy on the server as
``bench.flows`` (allow TCP 80 and 5201, rule 0; deny UDP 9, rule 1); flow logs as the
lab has them, the same in both. In alternating turns:

- throughput: iperf3, one TCP stream client -> server (goal: on >= 0.98x off; the
  counters sit in the policy chains, which only a connection's first packet meets);
- first-packet latency: ``connect()`` time of sequential TCP connections, p50 (goal:
  on <= 1.05x off: that first packet is the one that is counted);
- and what the counter saw: node-1's ``tabby_policy_rule_packets_total`` of rule 0
  grows by the connections made, not by the packets iperf3 moves (read from /metrics
  before and after each part).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time

from bench.flows import POLICY, LabPair, connects
from bench.netns import BenchError
from bench.report import Row
from bench.session import Session
from bench.throughput import Wiring, iperf3_server, run_iperf3

SECTION = "Per-rule counters: cost (on vs off, same run)"
LABS = {"on": "tb-cton", "off": "tb-ctoff"}
PEER = "counters off"
ENV = "TABBY_POLICY_COUNTERS"


def build(mode: str) -> LabPair:
    from tabby.lab import builder
    from tabby.lab.pods import LabPods
    from tabby.lab.state import require
    from tabby.lab.topology import plan
    from tabby.model import Pod

    lab = LABS[mode]
    old = os.environ.get(ENV)
    os.environ[ENV] = mode  # the agents the lab starts inherit it
    try:
        builder.Lab(plan(lab, nodes=2)).up()
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
    with LabPods.open(lab) as pods:
        for name, node in (("server", "node-1"), ("client", "node-2")):
            pods.apply_pod(Pod.from_manifest({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [
                    {"name": "main", "image": "iperf3", "ports": [{"containerPort": 80}]}]}}))
    subprocess.run([sys.executable, "-m", "tabby.cli.main", "--lab", lab, "apply", "-f", "-"],
                   input=POLICY, text=True, check=True, capture_output=True, timeout=120)
    state = require(lab)
    server, client = state.pod("default", "server"), state.pod("default", "client")
    rec = next(n for n in state.nodes if n.name == "node-1")
    if server is None or client is None or server.ip(4) is None or rec.agent is None:
        raise BenchError(f"lab {lab}: the pods were not wired")
    pair = LabPair(mode, lab, Wiring(f"counters {mode}", server.netns, str(server.ip(4)),
                                     client.netns), rec.agent.pid, rec.netns)
    deadline = time.monotonic() + 30
    while connects(pair, 1, 0).fails:  # the policy is programmed
        if time.monotonic() > deadline:
            raise BenchError(f"lab {lab}: port 80 of the server never answered")
    return pair


def cleanup() -> None:
    from tabby.lab import builder
    from tabby.lab.state import load
    for lab in LABS.values():
        if load(lab) is not None:
            builder.down(lab)


def rule0_packets(p: LabPair) -> float:
    done = subprocess.run(["ip", "netns", "exec", p.node_netns, sys.executable, "-c",
                           "import urllib.request as u; print(u.urlopen("
                           "'http://127.0.0.1:9099/metrics', timeout=10).read().decode())"],
                          capture_output=True, text=True, timeout=30, check=False)
    m = re.search(r'^tabby_policy_rule_packets_total\{[^}]*name="server-in"[^}]*rule="0",'
                  r'action="allow"\} (\d+)', done.stdout, re.M)
    return float(m.group(1)) if m else 0.0


def run(session: Session) -> None:
    reps, seconds, n = (1, 2, 200) if session.quick else (7, 5, 1000)
    cleanup()
    try:
        session.log("two labs, per-rule counters on and off, a server and a client pod each")
        pairs = [build("on"), build("off")]
        got: dict[str, list[float]] = {p.mode: [] for p in pairs}
        start = rule0_packets(pairs[0])
        for rep in range(reps):
            for p in pairs if rep % 2 == 0 else pairs[::-1]:
                with iperf3_server(p.path):
                    got[p.mode].append(run_iperf3(p.path, seconds).gbits)
                session.log(f"{p.mode}: {got[p.mode][-1]:.2f} Gbit/s")
        during = rule0_packets(pairs[0]) - start
        runs = "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in vals)}" for k, vals in got.items())
        session.add(Row(SECTION, f"iperf3, 1 TCP stream pod to pod across nodes, median of"
                        f" {reps} runs of {seconds} s", statistics.median(got["on"]), PEER,
                        statistics.median(got["off"]), "Gbit/s", True,
                        f"runs {runs}; best on {max(got['on']):.2f}, off"
                        f" {max(got['off']):.2f}; rule 0's counter grew by {during:.0f} in the"
                        f" {reps} runs (a connection's first packets only)", goal=0.98))
        before = rule0_packets(pairs[0])
        times: dict[str, list[float]] = {p.mode: [] for p in pairs}
        for rep in range(4):
            for p in pairs if rep % 2 == 0 else pairs[::-1]:
                times[p.mode] += connects(p, n // 4, 0).times
        counted = rule0_packets(pairs[0]) - before
        on, off = (statistics.median(times[m]) * 1e6 for m in ("on", "off"))
        session.add(Row(SECTION, f"TCP connect() to a pod on the other node, p50 of {n}"
                        " sequential connections (the first packet is counted)", on, PEER, off,
                        "µs", False, f"rule 0's counter grew by {counted:.0f} over"
                        f" {len(times['on'])} connections", goal=1 / 1.05))
    finally:
        cleanup()
