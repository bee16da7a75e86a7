"""Pod-to-pod TCP throughput across two nodes: tabby's wiring beside the same path by hand.

tabby: a two-node lab (``tabby.lab``: ToR bridge, agents, routes to the other
node's block written by the agents), one pod per node wired through
tabby-cni. By hand, in namespaces of its own with the same shape and MTU
(1500)::

    tb-hp-a  eth0 198.18.10.2/30 ─veth─ tb-hp-n1 (routes 198.18.20.0/30 via n2)
                                          eth0 198.18.0.11/24 ─veth─ tb-hp-tor (bridge)
    tb-hp-b  eth0 198.18.20.2/30 ─veth─ tb-hp-n2 (routes 198.18.10.0/30 via n1)
                                          eth0 198.18.0.12/24 ─veth─ tb-hp-tor

iperf3, one TCP stream, ``-t 5 -J``, the client on the second node's pod, the
server on the first's; the two paths take turns (which goes first alternates)
and the median of the repetitions is reported. Servers are stopped by PID;
the lab and the hand-built namespaces are removed, also after a failure.

The cost per hook. In the same turns, the lab runs again with its agents
paused (SIGSTOP, so nothing reconciles the table back) and tabby's nftables
table changed on both nodes (``bench.nfthooks``): removed, cut down to its
forward chain, without its NAT base chains, without the raw prerouting chain
(anti-spoofing), with conntrack off (``notrack`` ahead of it: policy is then
bypassed, so this only prices conntrack), with established flows accepted first
in the forward chain. Each is compared with the lab without any table. The
original table is loaded back and the agents resumed after the runs.
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from bench import netns, nfthooks
from bench.netns import BenchError
from bench.report import Row
from bench.session import Session

SECTION = "Pod-to-pod TCP throughput"
LAB = "tb-tp"
HAND = "tb-hp-"
TOR, N1, N2, POD_A, POD_B = (f"{HAND}{n}" for n in ("tor", "n1", "n2", "a", "b"))
MTU = 1500
PORT = 5201
PEER_NAME = "hand-built veths + routes"


@dataclass(frozen=True, slots=True)
class Wiring:
    """One way from a client pod to a server pod."""

    name: str
    server_netns: str
    server_ip: str
    client_netns: str


def hand_built() -> Wiring:
    """Build the hand-made path (its namespaces must not exist yet)."""
    netns.add([TOR, N1, N2, POD_A, POD_B])
    for node in (N1, N2):
        netns.sysctl(node, {"net.ipv4.ip_forward": "1"})
    netns.ip_batch(["link set lo up", f"link add br0 mtu {MTU} type bridge", "link set br0 up",
                    f"link add n1 mtu {MTU} type veth peer name eth0 netns {N1}",
                    f"link add n2 mtu {MTU} type veth peer name eth0 netns {N2}",
                    "link set n1 master br0 up", "link set n2 master br0 up"], TOR)
    for node, pod, me, other, mine, theirs in (
            (N1, POD_A, "198.18.0.11", "198.18.0.12", "198.18.10", "198.18.20"),
            (N2, POD_B, "198.18.0.12", "198.18.0.11", "198.18.20", "198.18.10")):
        netns.ip_batch(["link set lo up", "link set eth0 up", f"addr add {me}/24 dev eth0",
                        f"link add pod mtu {MTU} type veth peer name eth0 netns {pod}",
                        f"addr add {mine}.1/30 dev pod", "link set pod up",
                        f"route add {theirs}.0/30 via {other} dev eth0"], node)
        netns.ip_batch(["link set lo up", "link set eth0 up", f"addr add {mine}.2/30 dev eth0",
                        f"route add default via {mine}.1 dev eth0"], pod)
    return Wiring(PEER_NAME, POD_A, "198.18.10.2", POD_B)


def tabby_path() -> Wiring:
    """A two-node lab with a pod on each node."""
    from tabby.lab import builder
    from tabby.lab.pods import LabPods
    from tabby.lab.state import require
    from tabby.lab.topology import plan
    from tabby.model import Pod

    builder.Lab(plan(LAB, nodes=2)).up()
    with LabPods.open(LAB) as pods:
        for name, node in (("tp-server", "node-1"), ("tp-client", "node-2")):
            pods.apply_pod(Pod.from_manifest({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node, "containers": [{"name": "main", "image": "iperf3"}]}}))
    state = require(LAB)
    server, client = state.pod("default", "tp-server"), state.pod("default", "tp-client")
    if server is None or client is None or server.ip(4) is None:
        raise BenchError(f"lab {LAB}: the pods were not wired")
    return Wiring("tabby", server.netns, str(server.ip(4)), client.netns)


def cleanup() -> None:
    from tabby.lab import builder
    from tabby.lab.state import load

    try:
        if load(LAB) is not None:
            builder.down(LAB)
    finally:
        netns.sweep([HAND])


def mtu(ns: str, ifname: str = "eth0") -> int:
    links = json.loads(netns.run(["ip", "-n", ns, "-j", "link", "show", ifname]))
    return int(links[0]["mtu"])


@contextlib.contextmanager
def iperf3_server(path: Wiring) -> Iterator[None]:
    """An iperf3 server in the server pod, listening before this yields; stopped by PID."""
    proc = subprocess.Popen(["ip", "netns", "exec", path.server_netns, "iperf3", "-s",
                             "-B", path.server_ip, "-p", str(PORT)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise BenchError(f"iperf3 server in {path.server_netns} exited: {err.strip()}")
            out = netns.run(["ss", "-N", path.server_netns, "-Htln", f"sport = :{PORT}"])
            return bool(out.strip())
        netns.wait_for(f"iperf3 listening in {path.server_netns}", listening, 10.0)
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # proc.pid is iperf3's: ip netns exec execs it
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


@dataclass(frozen=True, slots=True)
class Sample:
    """One iperf3 run: Gbit/s received, and the CPU both ends' processes took per GB moved.

    The CPU figure holds up on a busy machine where throughput does not: a process is
    charged only while it runs, and the kernel's forwarding along the veths (softirqs
    run on the sender's way out; this kernel accounts them to the task it interrupts,
    CONFIG_IRQ_TIME_ACCOUNTING is off) is charged to iperf3 itself."""

    gbits: float
    cpu_ms_per_gb: float


def run_iperf3(path: Wiring, seconds: int) -> Sample:
    """One single-stream iperf3 run, client in the client pod."""
    argv = ["ip", "netns", "exec", path.client_netns, "iperf3", "-c", path.server_ip,
            "-p", str(PORT), "-t", str(seconds), "-J"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                          check=False)
    try:
        report = json.loads(done.stdout)
    except ValueError as exc:
        raise BenchError(f"iperf3 ({path.name}): no JSON report: {done.stderr.strip()}") from exc
    if done.returncode != 0 or "error" in report:
        raise BenchError(f"iperf3 ({path.name}): {report.get('error') or done.stderr.strip()}")
    end = report["end"]
    received = end["sum_received"]
    cpu = end["cpu_utilization_percent"]
    cpu_seconds = (cpu["host_total"] + cpu["remote_total"]) / 100 * received["seconds"]
    return Sample(float(received["bits_per_second"]) / 1e9,
                  1000 * cpu_seconds / (received["bytes"] / 1e9))


def measure(path: Wiring, seconds: int) -> float:
    """Gbit/s received by the server in one single-stream iperf3 run."""
    return run_iperf3(path, seconds).gbits


def shown(samples: dict[str, list[Sample]], field: str) -> str:
    return "; ".join(f"{name}: {', '.join(f'{getattr(v, field):.2f}' for v in vals)}"
                     for name, vals in samples.items())


def median(samples: list[Sample], field: str) -> float:
    return float(statistics.median(getattr(v, field) for v in samples))


def run(session: Session) -> None:
    reps, seconds = (1, 2) if session.quick else (5, 5)
    cleanup()
    try:
        session.log("two-node lab with a pod per node; the hand-built twin")
        paths = [tabby_path(), hand_built()]
        mtus = {p.name: (mtu(p.server_netns), mtu(p.client_netns)) for p in paths}
        if len({m for pair in mtus.values() for m in pair}) != 1:
            raise BenchError(f"pod MTUs differ: {mtus}")
        samples: dict[str, list[Sample]] = {p.name: [] for p in paths}
        for rep in range(reps):
            for path in paths if rep % 2 == 0 else paths[::-1]:
                with iperf3_server(path):
                    samples[path.name].append(run_iperf3(path, seconds))
                got = samples[path.name][-1]
                session.log(f"{path.name}: {got.gbits:.2f} Gbit/s,"
                            f" {got.cpu_ms_per_gb:.0f} CPU ms/GB")
        tabby, hand = (samples[p.name] for p in paths)
        what = f"iperf3, 1 TCP stream, node-2 pod to node-1 pod, median of {reps} runs of"
        session.add(
            Row(SECTION, f"{what} {seconds} s", median(tabby, "gbits"), PEER_NAME,
                median(hand, "gbits"), "Gbit/s", True,
                f"MTU {MTU} both; runs (Gbit/s) {shown(samples, 'gbits')}", goal=0.97),
            Row(SECTION, f"{what} {seconds} s: CPU per GB moved (both iperf3 processes, the"
                " forwarding softirqs charged to them)", median(tabby, "cpu_ms_per_gb"),
                PEER_NAME, median(hand, "cpu_ms_per_gb"), "CPU ms/GB", False,
                "holds up under load where Gbit/s does not; runs"
                f" {shown(samples, 'cpu_ms_per_gb')}"))
        with session.part("the nft table's cost per hook"):
            hooks(session, LAB, paths[0], paths[1], 1 if session.quick else 3, seconds)
    finally:
        cleanup()


def hooks(session: Session, lab: str, tabby: Wiring, hand: Wiring, reps: int, seconds: int,
          section: str = nfthooks.SECTION) -> None:
    """The lab with variants of its table (agents paused), the twin in the same turns."""
    from tabby.lab.state import require

    nodes = [n.netns for n in require(lab).nodes]
    agents = [n.agent.pid for n in require(lab).nodes if n.agent is not None]
    runs = nfthooks.Variants(nodes)
    samples: dict[str, list[Sample]] = {name: [] for name in (*runs.names, hand.name)}
    with nfthooks.paused(agents), runs:
        order = [*runs.names, hand.name]
        for rep in range(reps):
            for name in order if rep % 2 == 0 else order[::-1]:
                path = hand if name == hand.name else tabby
                if name != hand.name:
                    runs.load(name)
                with iperf3_server(path):
                    samples[name].append(run_iperf3(path, seconds))
                got = samples[name][-1]
                session.log(f"{name}: {got.gbits:.2f} Gbit/s, {got.cpu_ms_per_gb:.0f} CPU ms/GB")
    base = samples[nfthooks.NONE]
    for name in (*runs.names, hand.name):
        if name == nfthooks.NONE:
            continue
        vals = samples[name]
        gbits = ", ".join(f"{v.gbits:.2f}" for v in vals)
        session.add(Row(section, f"{name}: CPU per GB moved, median of {reps} runs of"
                        f" {seconds} s", median(vals, "cpu_ms_per_gb"),
                        f"tabby, {nfthooks.NONE}", median(base, "cpu_ms_per_gb"), "CPU ms/GB",
                        False, f"agents paused, the variant on both nodes; runs (CPU ms/GB)"
                        f" {', '.join(f'{v.cpu_ms_per_gb:.0f}' for v in vals)} vs"
                        f" {', '.join(f'{v.cpu_ms_per_gb:.0f}' for v in base)}; Gbit/s"
                        f" {gbits} (median {median(vals, 'gbits'):.2f}) vs"
                        f" {median(base, 'gbits'):.2f}"))
