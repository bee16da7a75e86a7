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

Routes through the reconciler. Library level: ``RouteReconciler.apply`` of a
DesiredState of N remote routes (via a gateway) into a fresh namespace
(``tb-brr``), beside ``ip -batch`` adding the same N routes into another fresh
one; the two alternate, three times each, medians. N = 1000 and 10000.

Node link down. A three-node mesh lab (``tb-bfd``, IPv4) with a pod on node-3: the
ToR's end of node-3's link is taken down, and the time until node-1's and node-2's
kernels no longer route node-3's block is measured with ``nodeToNodeMeshBFD`` on
(BFD, 3 x 100 ms) and, as the peer, the same lab without BFD (BIRD's BGP hold timer,
240 s; it runs out 160-240 s after the last keepalive).

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
CONV_LAB, BLOCKS_LAB, STATIC_LAB, BFD_LAB = "tb-bgp", "tb-bgk", "tb-bgs", "tb-bfd"
HAND_A, HAND_B, FLOOR = "tb-bb-a", "tb-bb-b", "tb-bk"
RECONCILED = "tb-brr"
POOL = "198.19.0.0/16"
PEER_CONV = "BIRD alone (2 namespaces, iBGP, configure)"
PEER_FLOOR = "ip -batch (route add)"
PEER_HOLD = "the same lab without BFD (BGP hold timer)"


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
    note = ("tabby: node-1's kernel holds the pod's route (IPAM claim, the pass ADD waits for,"
            " bird.conf: only origins changed, so BIRD parses it on configure, no bird -p;"
            " BGP, kernel); BIRD alone: bird.conf + configure -> route in the peer's"
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
            " node-1's kernel (agent pass, bird.conf of N statics, configure, BGP, kernel)")
    note += (f"; tabby --bgp none (node-1's own agent resumes -> netlink, proto 77):"
             f" {1000 * static:.0f} ms")
    session.add(Row(SECTION, f"{count} remote blocks programmed into a node's kernel",
                    1000 * tabby, PEER_FLOOR, 1000 * floor, "ms", False, note))


# -- routes through the reconciler ---------------------------------------------------------

@contextlib.contextmanager
def uplinked(ns: str) -> Iterator[str]:
    """A fresh namespace with eth0 on 198.18.0.11/24, the gateway's subnet."""
    netns.add([ns])
    try:
        netns.ip_batch(["link set lo up", "link add eth0 type veth peer name eth1",
                        "link set eth0 up", "link set eth1 up",
                        "addr add 198.18.0.11/24 dev eth0"], ns)
        yield ns
    finally:
        netns.delete([ns])


def reconciler_once(count: int) -> tuple[float, float]:
    """(ip -batch, RouteReconciler) seconds for ``count`` routes, each into a fresh namespace."""
    from tabby.calc.routes import Route
    from tabby.dataplane.netlink import CallCounts
    from tabby.dataplane.routes import RouteReconciler

    gateway = ipaddress.IPv4Address("198.18.0.12")
    dsts = list(ipaddress.IPv4Network(POOL).subnets(new_prefix=30))[:count]
    with uplinked(FLOOR) as ns:
        commands = [f"route add {n} via {gateway} proto 77" for n in dsts]
        started = time.monotonic()
        netns.ip_batch(commands, ns)
        floor = time.monotonic() - started
    desired = frozenset(Route(n, "unicast", gateway) for n in dsts)
    with uplinked(RECONCILED) as ns:
        rec = RouteReconciler(CallCounts(), netns=f"/run/netns/{ns}")
        started = time.monotonic()
        result = rec.apply(desired)
        took = time.monotonic() - started
        if len(result.replaced) != count or result.errors:
            raise BenchError(f"reconciler: {len(result.replaced)} of {count} routes,"
                             f" errors {result.errors[:3]}")
        if route_count(ns, "77") != count:
            raise BenchError(f"reconciler: the kernel holds {route_count(ns, '77')} routes")
    return floor, took


def reconciler_routes(session: Session, count: int) -> None:
    floors, tabby = [], []
    for _ in range(1 if session.quick else 3):
        floor, took = reconciler_once(count)
        floors.append(1000 * floor)
        tabby.append(1000 * took)
        session.log(f"{count} routes: ip -batch {floors[-1]:.1f} ms, reconciler"
                    f" {tabby[-1]:.1f} ms")
    runs = (f"runs (ms) reconciler: {', '.join(f'{v:.1f}' for v in tabby)}; ip -batch:"
            f" {', '.join(f'{v:.1f}' for v in floors)}")
    session.add(Row(SECTION, f"{count} routes via a gateway into a fresh namespace:"
                    " RouteReconciler.apply (library level), median", statistics.median(tabby),
                    PEER_FLOOR, statistics.median(floors), "ms", False,
                    "read both tables and the links, diff, batched RTM_NEWROUTE (many per"
                    f" send, errors per route), no second read; alternating, {runs}",
                    goal=0.5))


# -- node link down ------------------------------------------------------------------------

def bfd_up(state: Any, address: str) -> bool:
    from tabby.lab.bgp import bird_socket
    for name in ("node-1", "node-2"):
        done = subprocess.run(["birdc", "-s", str(bird_socket(state.node(name))), "show", "bfd",
                               "sessions"], capture_output=True, text=True, check=False)
        if not any(line.startswith(f"{address} ") and " Up " in line
                   for line in done.stdout.splitlines()):
            return False
    return True


def link_down_withdrawal(bfd: bool) -> float:
    """Seconds from node-3's link going down until node-1 and node-2 route none of its
    blocks, with the mesh's BFD on or off."""
    import dataclasses

    from tabby.lab import builder
    from tabby.lab.pods import LabPods
    from tabby.lab.state import require
    from tabby.lab.topology import plan
    from tabby.model import BGPConfiguration, IPAMBlock, Pod
    from tabby.model.bgpfields import BFD
    from tabby.store import open_store
    from tabby.store.client import Client

    down(BFD_LAB)
    try:
        state = builder.Lab(plan(BFD_LAB, nodes=3, bgp="mesh")).up()
        with LabPods(BFD_LAB, Client(open_store(state.datastore))) as driver:
            driver.apply_pod(Pod.from_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": "dies"}, "spec": {"nodeName": "node-3", "containers": [
                    {"name": "main", "image": "busybox"}]}}))
            conf = driver.client.get(BGPConfiguration, "default")
            driver.client.update(dataclasses.replace(conf, spec=dataclasses.replace(
                conf.spec, node_mesh_bfd=BFD() if bfd else None)))
            owned = {str(b.spec.cidr) for b in driver.client.list(IPAMBlock)
                     if b.node == "node-3"}
        state = require(BFD_LAB)
        dead = state.topology.node("node-3")
        address = str(dead.ipv4.ip) if dead.ipv4 is not None else ""
        if bfd:
            netns.wait_for("BFD sessions", lambda: bfd_up(state, address), 60.0)
        others = [f"{BFD_LAB}-node-1", f"{BFD_LAB}-node-2"]

        def routed() -> bool:
            return any(c in netns.run(["ip", "-4", "-n", ns, "route", "show", "proto", "bird"])
                       for ns in others for c in owned)
        netns.wait_for("node-3's routes", lambda: all(
            c in netns.run(["ip", "-4", "-n", ns, "route", "show", "proto", "bird"])
            for ns in others for c in owned), 60.0)
        netns.run(["ip", "-n", state.topology.tor_netns, "link", "set", dead.tor_if, "down"])
        started = time.monotonic()
        netns.wait_for("node-3's routes withdrawn", lambda: not routed(), 300.0, 0.02)
        return time.monotonic() - started
    finally:
        down(BFD_LAB)


def link_down(session: Session) -> None:
    session.log("node link down, with BFD")
    with_bfd = link_down_withdrawal(True)
    session.log("node link down, without BFD (waits for the hold timer, up to 240 s)")
    without = link_down_withdrawal(False)
    note = ("3-node mesh lab, IPv4; the ToR's end of node-3's link taken down -> node-1 and"
            " node-2 route none of node-3's blocks. With nodeToNodeMeshBFD (100 ms x 3);"
            " without, BIRD's hold timer (240 s) decides")
    session.add(Row(SECTION, "node link down -> routes withdrawn on the other nodes (BFD)",
                    1000 * with_bfd, PEER_HOLD, 1000 * without, "ms", False, note))


def cleanup() -> None:
    for lab in (CONV_LAB, BLOCKS_LAB, STATIC_LAB, BFD_LAB):
        with contextlib.suppress(Exception):
            down(lab)
    netns.sweep([HAND_A, HAND_B, FLOOR, RECONCILED])


def run(session: Session) -> None:
    cleanup()
    try:
        with session.part("route convergence"):
            convergence(session)
        for count in (1000,) if session.quick else (1000, 5000):
            with session.part(f"{count} remote blocks"):
                remote_blocks(session, count)
        for count in (1000,) if session.quick else (1000, 10000):
            with session.part(f"{count} routes through the reconciler"):
                reconciler_routes(session, count)
        with session.part("node link down"):
            link_down(session)
    finally:
        cleanup()
