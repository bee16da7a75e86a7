"""BGP: how fast routes spread, and how fast many land in a node's kernel.

Route convergence. tabby: a lab (``--bgp mesh``, IPv4) whose pool has /32
blocks, so every pod claims a block of its own and its route has to travel:
agent (IPAM claim, pass) -> bird.conf (check, ``configure``) -> BGP -> the
other node's BIRD -> its kernel. Per pod on node A (nodes 2..N in turn), the
time from the start of its CNI ADD until node-1's kernel holds the pod's
route (``ip monitor route`` in node-1's namespace). The peer: BIRD alone, two
namespaces with an iBGP session (``tb-bb-a``, ``tb-bb-b``); per route, the
time from rewriting A's bird.conf with one more static route (``configure``
over the control socket) until B's kernel holds it. p50 and p95 of each.

Remote blocks. tabby: a two-node lab with a /29 pool; node-2's agent is
paused (SIGSTOP), N blocks affine to node-2 are written to the store, the
agent resumed (SIGCONT): from then until node-1's kernel holds all N routes
(``proto bird``). The floor: ``ip -batch`` adding the same N routes into a
namespace (``tb-bk``). N = 1000 and 5000. The same with ``--bgp none`` (the
agents write the routes themselves, proto 77) is a third figure, in the note.

Every namespace is ``tb-...``; labs are torn down and BIRDs stopped by PID,
also after a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import netns
from bench.netns import BenchError
from bench.report import Row
from bench.session import Session

SECTION = "BGP"
CONV_LAB, BLOCKS_LAB, STATIC_LAB = "tb-bgp", "tb-bgk", "tb-bgs"
HAND_A, HAND_B, FLOOR = "tb-bb-a", "tb-bb-b", "tb-bk"
POOL = "198.19.0.0/16"
PEER_CONV = "BIRD alone (2 namespaces, iBGP, configure)"
PEER_FLOOR = "ip -batch (route add)"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class RouteWatcher:
    """``ip monitor route`` in one namespace: when each destination first appeared."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(["ip", "-n", ns, "monitor", "route"], text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            words = line.split()
            if not words or words[0] in ("Deleted", "blackhole", "local", "unreachable"):
                continue
            dst = words[0] if "/" in words[0] else f"{words[0]}/32"
            with self.cond:
                self.seen.setdefault(dst, now)
                self.cond.notify_all()

    def wait(self, dst: str, timeout: float = 15.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: dst in self.seen, timeout):
                raise BenchError(f"no route to {dst} within {timeout:g}s")
            return self.seen[dst]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the PID is ip's own
            self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()


def down(lab: str) -> None:
    from tabby.lab import builder
    from tabby.lab.state import load
    if load(lab) is not None:
        builder.down(lab)


def lab_client(lab: str, nodes: int, bgp: str, block_size: int) -> Any:
    """Build the lab and give its pool ``block_size`` (recreated: blockSize is immutable)."""
    from tabby.lab import builder
    from tabby.lab.topology import plan
    from tabby.model import IPPool
    from tabby.store import open_store
    from tabby.store.client import Client

    state = builder.Lab(plan(lab, nodes=nodes, bgp=bgp)).up()
    client = Client(open_store(state.datastore))
    client.delete(IPPool, "default-ipv4-ippool")
    client.create(IPPool.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "bench"},
        "spec": {"cidr": POOL, "blockSize": block_size}}))
    return client


# -- route convergence ----------------------------------------------------------------

def tabby_convergence(nodes: int, pods: int) -> tuple[list[float], list[float]]:
    """Per pod: (CNI ADD start -> route on node-1, the pod's creation alone)."""
    from tabby.lab.pods import LabPods
    from tabby.lab.state import require
    from tabby.model import Pod

    down(CONV_LAB)
    try:
        client = lab_client(CONV_LAB, nodes, "mesh", 32)
        watcher = RouteWatcher(f"{CONV_LAB}-node-1")
        samples, adds = [], []
        try:
            with LabPods(CONV_LAB, client) as driver:
                for i in range(pods):
                    node = f"node-{2 + i % (nodes - 1)}"
                    pod = Pod.from_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {
                        "name": f"c{i}"}, "spec": {"nodeName": node, "containers": [
                            {"name": "main", "image": "busybox"}]}})
                    started = time.monotonic()
                    driver.apply_pod(pod)
                    adds.append(time.monotonic() - started)
                    record = require(CONV_LAB).pod("default", f"c{i}")
                    if record is None or record.ip(4) is None:
                        raise BenchError(f"pod c{i} got no IPv4 address")
                    samples.append(watcher.wait(f"{record.ip(4)}/32") - started)
        finally:
            watcher.close()
        return samples, adds
    finally:
        down(CONV_LAB)


BIRD_ALONE = """router id {me};
protocol device {{ }}
protocol kernel {{ ipv4 {{ export all; }}; }}
protocol static {{ ipv4; {routes} }}
protocol bgp peer {{ local as 64512; neighbor {peer} as 64512; direct;
  connect delay time 1; connect retry time 2;
  ipv4 {{ import all; export all; gateway recursive; next hop self; }}; }}
protocol direct {{ ipv4; }}
"""


@contextlib.contextmanager
def two_birds() -> Iterator[tuple[Any, Any]]:
    """Two namespaces on a veth, a BIRD in each (tabby's Bird runs them, stops them by PID)."""
    from tabby.bgp.daemon import Bird
    base = Path(tempfile.mkdtemp(prefix="tb-bb-", dir="/tmp"))
    birds: list[Any] = []
    try:
        netns.add([HAND_A, HAND_B])
        netns.ip_batch(["link set lo up", f"link add eth0 type veth peer name eth0 netns {HAND_B}",
                        "link set eth0 up", "addr add 198.18.0.11/24 dev eth0"], HAND_A)
        netns.ip_batch(["link set lo up", "link set eth0 up", "addr add 198.18.0.12/24 dev eth0"],
                       HAND_B)
        for ns, me, peer in ((HAND_A, "198.18.0.11", "198.18.0.12"),
                             (HAND_B, "198.18.0.12", "198.18.0.11")):
            bird = Bird(base / ns, netns=f"/run/netns/{ns}")
            birds.append(bird)
            problems = bird.apply(BIRD_ALONE.format(me=me, peer=peer, routes=""))
            if problems:
                raise BenchError(f"BIRD in {ns}: {problems}")
        yield birds[0], birds[1]
    finally:
        for bird in birds:
            bird.stop()
        netns.delete([HAND_A, HAND_B])
        import shutil
        shutil.rmtree(base, ignore_errors=True)


def bird_convergence(count: int) -> list[float]:
    from tabby.bgp.status import node_status
    with two_birds() as (a, b):
        netns.wait_for("the iBGP session", lambda: any(
            p.established for p in node_status(b.socket).peers), 30.0)
        watcher = RouteWatcher(HAND_B)
        samples, routes = [], []
        try:
            for i in range(count):
                net = ipaddress.IPv4Network(POOL)[1000 + i]
                routes.append(f"route {net}/32 blackhole;")
                started = time.monotonic()
                problems = a.apply(BIRD_ALONE.format(me="198.18.0.11", peer="198.18.0.12",
                                                     routes=" ".join(routes)))
                if problems:
                    raise BenchError(f"BIRD: {problems}")
                samples.append(watcher.wait(f"{net}/32") - started)
        finally:
            watcher.close()
        return samples


def convergence(session: Session) -> None:
    nodes, pods = (3, 10) if session.quick else (10, 50)
    session.log(f"{nodes}-node mesh lab, {pods} pods with a /32 block each")
    tabby, adds = tabby_convergence(nodes, pods)
    session.log(f"BIRD alone, {pods} routes")
    peer = [1000 * v for v in bird_convergence(pods)]
    total = [1000 * v for v in tabby]
    after = [max(0.0, 1000 * (t - a)) for t, a in zip(tabby, adds, strict=True)]
    what = f"({nodes}-node mesh, {pods} pods, each in a new /32 block)"
    note = ("tabby: node-1's kernel holds the pod's route (IPAM claim, agent pass, bird -p,"
            " configure, BGP, kernel); BIRD alone: bird.conf + configure -> route in the peer's"
            f" kernel. Creating the pod (netns, CNI ADD, store) took p50"
            f" {1000 * statistics.median(adds):.0f} ms")
    for label, values in (("pod on node A: CNI ADD start -> routed on node B", total),
                          ("pod on node A: ADD returned -> routed on node B (0 if before)",
                           after)):
        for p in (50, 95):
            session.add(Row(SECTION, f"{label} {what}: p{p}", percentile(values, p),
                            PEER_CONV, percentile(peer, p), "ms", False, note))


# -- many remote blocks ------------------------------------------------------------------

def block_manifest(cidr: ipaddress.IPv4Network, owner: str) -> dict[str, Any]:
    from tabby.model import block_name
    size = cidr.num_addresses
    return {"apiVersion": "tabby.dev/v1", "kind": "IPAMBlock",
            "metadata": {"name": block_name(cidr)},
            "spec": {"cidr": str(cidr), "affinity": f"host:{owner}",
                     "allocations": [None] * size, "unallocated": list(range(size)),
                     "attributes": []}}


def route_count(ns: str, proto: str) -> int:
    out = netns.run(["ip", "-4", "-n", ns, "route", "show", "proto", proto])
    return sum(1 for line in out.splitlines() if " via " in line)


def tabby_blocks(lab: str, bgp: str, count: int) -> float:
    """Seconds from an agent resuming with ``count`` new blocks affine to node-2 in the store
    until node-1's kernel routes all of them. With BGP node-2's agent was paused (its BIRD
    announces them); without, node-1's (it routes them itself)."""
    from tabby.lab.state import require
    from tabby.model import IPAMBlock

    down(lab)
    try:
        client = lab_client(lab, 2, bgp, 29)
        paused = require(lab).node("node-2" if bgp != "none" else "node-1").agent
        if paused is None:
            raise BenchError(f"lab {lab}: an agent is missing")
        blocks = list(ipaddress.IPv4Network(POOL).subnets(new_prefix=29))[:count]
        manifests = [block_manifest(n, "node-2") for n in blocks]
        proto = "bird" if bgp != "none" else "77"
        os.kill(paused.pid, signal.SIGSTOP)
        try:
            for doc in manifests:
                client.create(IPAMBlock.from_manifest(doc))
        finally:
            started = time.monotonic()
            os.kill(paused.pid, signal.SIGCONT)
        netns.wait_for(f"{count} routes in node-1's kernel", lambda: route_count(
            f"{lab}-node-1", proto) >= count, 120.0, 0.02)
        return time.monotonic() - started
    finally:
        down(lab)


def ip_batch_floor(count: int) -> float:
    netns.add([FLOOR])
    try:
        netns.ip_batch(["link set lo up", "link add eth0 type veth peer name eth1",
                        "link set eth0 up", "link set eth1 up", "addr add 198.18.0.11/24 dev eth0"],
                       FLOOR)
        blocks = list(ipaddress.IPv4Network(POOL).subnets(new_prefix=29))[:count]
        commands = [f"route add {n} via 198.18.0.12 dev eth0 proto bird" for n in blocks]
        started = time.monotonic()
        netns.ip_batch(commands, FLOOR)
        return time.monotonic() - started
    finally:
        netns.delete([FLOOR])


def remote_blocks(session: Session, count: int) -> None:
    session.log(f"{count} remote blocks: tabby with BIRD")
    tabby = tabby_blocks(BLOCKS_LAB, "mesh", count)
    session.log(f"{count} remote blocks: ip -batch")
    floor = ip_batch_floor(count)
    session.log(f"{count} remote blocks: tabby --bgp none")
    static = tabby_blocks(STATIC_LAB, "none", count)
    note = ("tabby: node-2's agent resumes with the blocks in the store -> all routes in"
            " node-1's kernel (agent pass, bird.conf of N statics, bird -p, configure, BGP,"
            " kernel)")
    note += (f"; tabby --bgp none (node-1's own agent resumes -> netlink, proto 77):"
             f" {1000 * static:.0f} ms")
    session.add(Row(SECTION, f"{count} remote blocks programmed into a node's kernel",
                    1000 * tabby, PEER_FLOOR, 1000 * floor, "ms", False, note))


def cleanup() -> None:
    for lab in (CONV_LAB, BLOCKS_LAB, STATIC_LAB):
        with contextlib.suppress(Exception):
            down(lab)
    netns.sweep([HAND_A, HAND_B, FLOOR])


def run(session: Session) -> None:
    cleanup()
    try:
        with session.part("route convergence"):
            convergence(session)
        for count in (1000,) if session.quick else (1000, 5000):
            with session.part(f"{count} remote blocks"):
                remote_blocks(session, count)
    finally:
        cleanup()
