"""Flow logs' overhead: the same two-node lab with flow logging on and off, same run.

Two labs side by side, ``tb-flon`` (agents with flow logs on, the default) and
``tb-floff`` (``TABBY_FLOW_LOGS=off`` in the agents' environment), each with a
server pod on node-1 (iperf3, TCP 80 listener) and a client pod on node-2, and
one policy on the server so the log rules sit in the path: allow TCP 5201 and
80 (rule 0), deny UDP 9 (rule 1). In alternating turns:

- throughput: iperf3, one TCP stream client -> server (goal: on >= 0.98x off);
- first-packet latency: ``connect()`` time of sequential TCP connections to port
  80, p50 (goal: on <= 1.05x off: the first packet is where the log rules run);
- agent CPU: node-1's agent process (utime + stime) while the client opens
  connections at a fixed rate (``RATE`` a second for ``SECONDS``);
- a denied flood: the client sends UDP to port 9 as fast as one process can for
  a few seconds while connections to port 80 go on; reported: packets sent, the
  records the agent got, the packets the kernel's rate limit kept from the log
  (``tabby_flow_log_dropped_total{reason="ratelimit"}``), and whether the allowed
  connections all succeeded (the node kept forwarding).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.netns import BenchError
from bench.report import Row
from bench.session import Session
from bench.throughput import Wiring, iperf3_server, run_iperf3

SECTION = "Flow logs: overhead (on vs off, same run)"
LABS = {"on": "tb-flon", "off": "tb-floff"}
PEER = "flow logs off"
RATE, SECONDS = 200, 10
POLICY = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-in, namespace: default}
spec:
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, destination: {ports: [80, 5201]}}
  - {action: Deny, protocol: UDP, destination: {ports: [9]}}
"""
CONNECT = """
import socket, sys, time
ip, port, n, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ':' in ip else socket.AF_INET
out, fails, start = [], 0, time.monotonic()
for i in range(n):
    if rate:
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    t = time.perf_counter()
    try:
        s.connect((ip, port))
        out.append(time.perf_counter() - t)
    except OSError:
        fails += 1
    s.close()
print(__import__('json').dumps({'times': out, 'fails': fails}))
"""
FLOOD = """
import socket, sys, time
ip, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(100):
        try:
            s.sendto(b'x' * 64, (ip, 9)); n += 1
        except OSError:
            pass
print(n)
"""


@dataclass(frozen=True, slots=True)
class LabPair:
    mode: str
    lab: str
    path: Wiring
    agent_pid: int  # node-1's (the server's) agent
    node_netns: str


def build(mode: str) -> LabPair:
    from tabby.lab import builder
    from tabby.lab.pods import LabPods
    from tabby.lab.state import require
    from tabby.lab.topology import plan
    from tabby.model import Pod

    lab = LABS[mode]
    old = os.environ.get("TABBY_FLOW_LOGS")
    os.environ["TABBY_FLOW_LOGS"] = mode  # the agents the lab starts inherit it
    try:
        builder.Lab(plan(lab, nodes=2)).up()
    finally:
        if old is None:
            os.environ.pop("TABBY_FLOW_LOGS", None)
        else:
            os.environ["TABBY_FLOW_LOGS"] = old
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
    pair = LabPair(mode, lab, Wiring(f"flow logs {mode}", server.netns, str(server.ip(4)),
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


@dataclass(frozen=True, slots=True)
class Connects:
    times: list[float]  # seconds each successful connect() took
    fails: int


def connects(p: LabPair, n: int, rate: float) -> Connects:
    done = subprocess.run(["ip", "netns", "exec", p.path.client_netns, sys.executable, "-c",
                           CONNECT, p.path.server_ip, "80", str(n), str(rate)],
                          capture_output=True, text=True, timeout=n / max(rate, 50) + 120,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"connect loop in {p.lab}: {done.stderr.strip()[-300:]}")
    got = json.loads(done.stdout)
    return Connects([float(t) for t in got["times"]], int(got["fails"]))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(p: LabPair, name: str) -> float:
    done = subprocess.run(["ip", "netns", "exec", p.node_netns, "curl", "-s",
                           "http://127.0.0.1:9099/metrics"], capture_output=True, text=True,
                          timeout=30, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def run(session: Session) -> None:
    reps, seconds = (1, 2) if session.quick else (5, 5)
    cleanup()
    try:
        session.log("two labs, flow logs on and off, a server and a client pod each")
        pairs = [build("on"), build("off")]
        _throughput(session, pairs, reps, seconds)
        _latency(session, pairs, 200 if session.quick else 1000)
        _cpu(session, pairs, RATE, 3 if session.quick else SECONDS)
        with session.part("a denied flood"):
            _flood(session, pairs[0], 2.0 if session.quick else 5.0)
    finally:
        cleanup()


def _throughput(session: Session, pairs: list[LabPair], reps: int, seconds: int) -> None:
    got: dict[str, list[float]] = {p.mode: [] for p in pairs}
    for rep in range(reps):
        for p in pairs if rep % 2 == 0 else pairs[::-1]:
            with iperf3_server(p.path):
                got[p.mode].append(run_iperf3(p.path, seconds).gbits)
            session.log(f"{p.mode}: {got[p.mode][-1]:.2f} Gbit/s")
    runs = "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in vals)}" for k, vals in got.items())
    session.add(Row(SECTION, f"iperf3, 1 TCP stream pod to pod across nodes, median of {reps}"
                    f" runs of {seconds} s", statistics.median(got["on"]), PEER,
                    statistics.median(got["off"]), "Gbit/s", True, f"runs {runs}",
                    goal=0.98))


def _latency(session: Session, pairs: list[LabPair], n: int) -> None:
    times: dict[str, list[float]] = {p.mode: [] for p in pairs}
    for rep in range(4):
        for p in pairs if rep % 2 == 0 else pairs[::-1]:
            got = connects(p, n // 4, 0)
            times[p.mode] += got.times
    on, off = (statistics.median(times[m]) * 1e6 for m in ("on", "off"))
    session.add(Row(SECTION, f"TCP connect() to a pod on the other node, p50 of {n}"
                    " sequential connections (the first packet meets the log rules)", on, PEER,
                    off, "µs", False, "allowed by the server's policy, rule 0; logged on",
                    goal=1 / 1.05))


def _cpu(session: Session, pairs: list[LabPair], rate: int, seconds: int) -> None:
    used: dict[str, float] = {}
    for p in pairs:
        before = cpu_seconds(p.agent_pid)
        started = time.monotonic()
        got = connects(p, rate * seconds, rate)
        elapsed = time.monotonic() - started
        time.sleep(3)  # the flows end (conntrack) and are written
        used[p.mode] = 100 * (cpu_seconds(p.agent_pid) - before) / (elapsed + 3)
        session.log(f"{p.mode}: agent {used[p.mode]:.1f}% of a core, fails {got.fails}")
    session.add(Row(SECTION, f"node-1's agent CPU while node-2's pod opens {rate} connections"
                    f" a second to it for {seconds} s", used["on"], PEER, used["off"],
                    "% of a core", False, "utime + stime of the agent process, the 3 s after"
                    " the connections included"))


def _flood(session: Session, p: LabPair, seconds: float) -> None:
    rec0 = metric(p, "tabby_flow_log_records_total")
    lim0 = metric(p, 'tabby_flow_log_dropped_total{reason="ratelimit"}')
    flood = subprocess.Popen(["ip", "netns", "exec", p.path.client_netns, sys.executable, "-c",
                              FLOOD, p.path.server_ip, str(seconds)], stdout=subprocess.PIPE,
                             text=True)
    try:
        got = connects(p, int(seconds * 50), 50)
        out, _ = flood.communicate(timeout=seconds + 60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    time.sleep(6)  # the agent reads the gate's counter every 5 s
    sent = int(out.strip() or 0)
    records = metric(p, "tabby_flow_log_records_total") - rec0
    limited = metric(p, 'tabby_flow_log_dropped_total{reason="ratelimit"}') - lim0
    ok = len(got.times)
    session.add(Row(SECTION, f"denied UDP flood for {seconds:g} s ({sent} packets sent):"
                    " allowed connections that succeeded meanwhile", ok, "connections tried",
                    ok + got.fails, "connections", True,
                    f"log records {records:.0f} (rate limit 1000/s, burst 200), kept from the"
                    f" log by the kernel's limit {limited:.0f}"
                    " (tabby_flow_log_dropped_total{reason=\"ratelimit\"})", goal=1.0))
