"""Network policy: first-packet latency beside a linear iptables chain; programming
time and agent memory (bench.policyprog).

First packet. Two identical routed paths, client netns -> node netns -> server
netns, wired the Calico way (/32 pod addresses, 169.254.1.1 gateway, proxy
ARP on the node's ``tab...`` veths). One node holds tabby's table, compiled by
the real calculation (``desired_ruleset``, every feature's part) from a
synthetic snapshot with N policy rules and N set members in force: the
server's policy admits ``role == client`` (the client and N remote endpoints:
a set of N+1 members), and N/10 other local endpoints carry a policy of 10
rules each (peers from 100 shared selectors). The other node holds the naive
peer: one iptables (nft backend) chain in FORWARD with ESTABLISHED first, then
one rule per admitted source (N remote ones, the client last), then DROP for
the server. Each path gets batches of fresh TCP connections in turn (new
source ports, closed with RST: no TIME_WAIT, no conntrack reuse), so the
machine's noise hits both alike. While connects are timed the process runs at
a real-time priority (SCHED_FIFO, as bench.services' client does) with its
garbage collector off (it holds every size's compiled table: a collection costs
milliseconds), so the p99 is the packet path's and not the shared machine's
scheduler's: without that, both paths' p99 sat at the same ~85 µs floor at 0
rules. Before measuring, a connect to a port no policy admits must time out on
both paths, so the rules measured are the rules in force.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import netns
from bench.netns import BenchError
from bench.policyprog import (
    CLIENT,
    MEMBERS,
    NODE,
    PORT,
    PREFIX,
    SECTION,
    SERVER,
    latency_state,
    programming,
)
from bench.report import Row
from bench.session import Session

CLOSED_PORT = 8081  # no policy admits it: a connect must time out
SIZES = (0, 1_000, 10_000, 30_000)
CONNECTS = 2000  # per size and path
ROUNDS = 4
PEER = "iptables-nft, linear chain"


def linear_peer(n: int) -> str:
    """The iptables-restore text of the naive peer with n rules before the client's."""
    lines = ["*filter", ":FORWARD ACCEPT [0:0]", ":tb-linear - [0:0]", "-A FORWARD -j tb-linear",
             "-A tb-linear -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
    rule = f"-d {SERVER}/32 -p tcp -m tcp --dport {PORT} -j ACCEPT"
    lines += [f"-A tb-linear -s {MEMBERS[i + 1]}/32 {rule}" for i in range(n)]
    lines += [f"-A tb-linear -s {CLIENT}/32 {rule}", f"-A tb-linear -d {SERVER}/32 -j DROP",
              "COMMIT", ""]
    return "\n".join(lines)


# -- two routed paths -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Path3:
    """client -> node -> server, three namespaces."""

    name: str

    @property
    def client(self) -> str:
        return f"{PREFIX}{self.name}-c"

    @property
    def node(self) -> str:
        return f"{PREFIX}{self.name}-n"

    @property
    def server(self) -> str:
        return f"{PREFIX}{self.name}-s"

    def names(self) -> list[str]:
        return [self.client, self.node, self.server]


def wire(path: Path3) -> None:
    netns.add(path.names())
    for ns in path.names():
        netns.sysctl(ns, {"net.ipv6.conf.all.accept_dad": "0",
                          "net.ipv6.conf.default.accept_dad": "0"})
    netns.sysctl(path.node, {"net.ipv4.ip_forward": "1"})
    netns.ip_batch([f"link add tabpolcli type veth peer name eth0 netns {path.client}",
                    f"link add tabpolsrv type veth peer name eth0 netns {path.server}",
                    "link set lo up", "link set tabpolcli address ee:ee:ee:ee:ee:ee up",
                    "link set tabpolsrv address ee:ee:ee:ee:ee:ee up",
                    f"route add {CLIENT}/32 dev tabpolcli", f"route add {SERVER}/32 dev tabpolsrv",
                    "route add default dev lo"], path.node)
    netns.sysctl(path.node, {"net.ipv4.conf.tabpolcli.proxy_arp": "1",
                             "net.ipv4.conf.tabpolsrv.proxy_arp": "1"})
    for ns, ip in ((path.client, CLIENT), (path.server, SERVER)):
        netns.ip_batch(["link set lo up", "link set eth0 up", f"addr add {ip}/32 dev eth0",
                        "route add 169.254.1.1 dev eth0 scope link",
                        "route add default via 169.254.1.1 dev eth0"], ns)


@contextlib.contextmanager
def listening(paths: Sequence[Path3], log: Path) -> Iterator[None]:
    """The lab's pod listener (answers and closes) on PORT in each server netns."""
    from tabby.lab import listener, system
    procs = []
    try:
        for p in paths:
            argv = ["ip", "netns", "exec", p.server, sys.executable, "-I", "-S",
                    listener.__file__, "--name", p.name, f"--port={PORT}"]
            procs.append(system.spawn_ready(argv, f"listener {p.name}", log))
        yield
    finally:
        system.stop(procs)


def sockets(path: Path3, count: int) -> list[socket.socket]:
    """``count`` TCP sockets born in the client netns, closing with RST."""
    with netns.entered(path.client):
        out = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    for s in out:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.settimeout(2.0)
    return out


def connect_times(paths: Sequence[Path3], count: int, batch: int = 50) -> dict[str, list[float]]:
    """Microseconds per TCP connect: batches of ``batch`` connects, path after path,
    the first path alternating. (Connect by connect, a slow path's leftovers, such
    as the listener answering and closing, land in the other path's next connect.)"""
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    for round_, done in enumerate(range(0, count, batch)):
        n = min(batch, count - done)
        for p in paths if round_ % 2 == 0 else list(reversed(paths)):
            for s in sockets(p, n):
                started = time.perf_counter_ns()
                s.connect((str(SERVER), PORT))
                times[p.name].append((time.perf_counter_ns() - started) / 1000)
                s.close()
    return times


def closed_port_drops(path: Path3) -> bool:
    s = sockets(path, 1)[0]
    s.settimeout(0.3)
    try:
        s.connect((str(SERVER), CLOSED_PORT))
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# -- first-packet latency ---------------------------------------------------------------

def compile_tabby(n: int) -> Any:
    """tabby's table for the size-n state, as the agent's calculation makes it."""
    from tabby.calc.node import desired_ruleset
    from tabby.snapshot import Snapshot
    nodes, namespaces, eps, policies = latency_state(n)
    snapshot = Snapshot.build(nodes=nodes, namespaces=namespaces, endpoints=eps,
                              others=policies)
    return desired_ruleset(snapshot, NODE)


def load_tabby(node_ns: str, ruleset: Any) -> float:
    """Replace the node's table with ``ruleset``; seconds nft took."""
    from tabby.dataplane.nft import NftCommand, NftReconciler
    reconciler = NftReconciler(NftCommand(prefix=("ip", "netns", "exec", node_ns)))
    result = reconciler.apply(ruleset, full=True)
    if result.errors:
        raise BenchError(f"nft refused tabby's table: {result.errors[0]}")
    return result.seconds


def load_linear(node_ns: str, n: int) -> None:
    netns.run(["ip", "netns", "exec", node_ns, "iptables-nft-restore"], stdin=linear_peer(n),
              timeout=600)


@contextlib.contextmanager
def realtime() -> Iterator[None]:
    """SCHED_FIFO (priority 10) and no garbage collection for the block."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    with contextlib.suppress(OSError):  # no CAP_SYS_NICE: measure as we are
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
        os.sched_setscheduler(0, policy, param)


def measure(paths: Sequence[Path3], count: int) -> dict[str, list[float]]:
    for p in paths:
        if not closed_port_drops(p):
            raise BenchError(f"{p.node}: a connect to port {CLOSED_PORT} was not dropped:"
                             " the policy is not in force on the measured path")
    with realtime():
        connect_times(paths, 50)  # neighbours, route caches, the listener's first accepts
        return connect_times(paths, count)


def latency(session: Session, log: Path) -> None:
    """Each size in ROUNDS rounds, in the order 0 1k 10k 30k 30k 10k 1k 0 0 1k ..., so
    drift over the run cancels out; the samples of every round together."""
    tabby, peer = Path3("t"), Path3("i")
    paths = [tabby, peer]
    sizes = SIZES[:3] if session.quick else SIZES
    count = 200 if session.quick else CONNECTS
    tables = {n: compile_tabby(n) for n in sizes}
    rules = {n: sum(len(c.rules) for c in t.all_chains().values()) for n, t in tables.items()}
    samples: dict[tuple[int, str], list[float]] = {}
    for p in paths:
        wire(p)
    with listening(paths, log):
        order = [*sizes, *reversed(sizes)] * (ROUNDS // 2)
        for n in order:
            seconds = load_tabby(tabby.node, tables[n])
            load_linear(peer.node, n)
            session.log(f"{n:,}: tabby's table {rules[n]:,} rules (nft took {seconds:.2f} s),"
                        f" the linear chain {n + 3:,} rules")
            for name, values in measure(paths, count // ROUNDS).items():
                samples.setdefault((n, name), []).extend(values)
    rows(session, sizes, rules, samples, count)


def rows(session: Session, sizes: Sequence[int], rules: dict[int, int],
         samples: dict[tuple[int, str], list[float]], count: int) -> None:
    p50 = {n: percentile(samples[n, "t"], 50) for n in sizes}
    p99 = {n: percentile(samples[n, "t"], 99) for n in sizes}
    for n in sizes:
        note = (f"{count} fresh connects per path in {ROUNDS} rounds; tabby's table {rules[n]:,}"
                f" rules + a {n + 1:,}-member set; the peer's chain {n + 1:,} source rules")
        size = f"{n:,} rules + {n:,} set members"
        session.add(
            Row(SECTION, f"first-packet TCP connect p50, {size}", p50[n], PEER,
                percentile(samples[n, "i"], 50), "µs", False, note),
            Row(SECTION, f"first-packet TCP connect p99, {size}", p99[n], PEER,
                percentile(samples[n, "i"], 99), "µs", False, note,
                goal=5.0 if n == 10_000 else None))
    top = max(sizes)
    for name, table in (("p50", p50), ("p99", p99)):
        session.add(Row(SECTION, f"first-packet {name}: {top:,} vs 0 rules in force (flatness)",
                        table[top], "tabby, 0 rules", table[0], "µs", False,
                        "the issue's goal: flat within 10%", goal=round(1 / 1.1, 2)))


# -- the benchmark ----------------------------------------------------------------------

def cleanup() -> None:
    netns.sweep([PREFIX])


def run(session: Session) -> None:
    cleanup()
    with tempfile.TemporaryDirectory(prefix="tb-pol-") as tmp:
        try:
            with session.part("first-packet latency"):
                latency(session, Path(tmp) / "listener.log")
        finally:
            cleanup()
        try:
            with session.part("programming time and agent memory"):
                programming(session, Path(tmp))
        finally:
            cleanup()
