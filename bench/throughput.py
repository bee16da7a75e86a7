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
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from bench import netns
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


def measure(path: Wiring, seconds: int) -> float:
    """Gbit/s received by the server in one single-stream iperf3 run."""
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
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9


def run(session: Session) -> None:
    reps, seconds = (1, 2) if session.quick else (5, 5)
    cleanup()
    try:
        session.log("two-node lab with a pod per node; the hand-built twin")
        paths = [tabby_path(), hand_built()]
        mtus = {p.name: (mtu(p.server_netns), mtu(p.client_netns)) for p in paths}
        if len({m for pair in mtus.values() for m in pair}) != 1:
            raise BenchError(f"pod MTUs differ: {mtus}")
        samples: dict[str, list[float]] = {p.name: [] for p in paths}
        for rep in range(reps):
            for path in paths if rep % 2 == 0 else paths[::-1]:
                with iperf3_server(path):
                    samples[path.name].append(measure(path, seconds))
                session.log(f"{path.name}: {samples[path.name][-1]:.2f} Gbit/s")
        tabby, hand = (statistics.median(samples[p.name]) for p in paths)
        shown = "; ".join(f"{name}: {', '.join(f'{v:.2f}' for v in vals)}"
                          for name, vals in samples.items())
        session.add(Row(SECTION, f"iperf3, 1 TCP stream, node-2 pod to node-1 pod, median of"
                        f" {reps} runs of {seconds} s", tabby, PEER_NAME, hand, "Gbit/s", True,
                        f"MTU {MTU} both; runs (Gbit/s) {shown}", goal=0.97))
    finally:
        cleanup()
