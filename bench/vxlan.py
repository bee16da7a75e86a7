"""Pod-to-pod TCP throughput over VXLAN: tabby's tunnels beside the same tunnels by hand.

tabby: a two-node lab with ``--encap vxlan`` (the pool's vxlanMode Always;
the agents allocate VTEPs, build ``vxlan.tabby``, program FDB, neighbours and
routes), one pod per node wired through tabby-cni (pod MTU 1450). By hand, in
namespaces of its own with the same shape::

    tb-vh-a  eth0 198.18.10.2/30 mtu 1450 ─veth─ tb-vh-n1 vx0 VNI 4096 198.18.50.1/32
                                                   route 198.18.20.0/30 via 198.18.50.2 onlink
                                                   fdb <n2's vx0 MAC> dst 198.18.0.12
                                                   eth0 198.18.0.11/24 ─veth─ tb-vh-tor (bridge)
    tb-vh-b  (the mirror image on tb-vh-n2, 198.18.0.12)

iperf3, one TCP stream, ``-J``, client in the second node's pod, server in the
first's; the paths take turns and the medians are compared (the same
procedure as ``bench.throughput``, whose helpers this reuses). A third path,
the hand-built one with a copy of the lab node's nftables table loaded,
tells the VXLAN wiring's cost apart from that of tabby's shared table (its
NAT chains turn conntrack on). Each run checks that the client node's VXLAN
device carried the traffic. Then the table's cost per hook over VXLAN, as in
``bench.throughput`` (the lab's agents paused, variants of its table).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
from collections.abc import Iterator

from bench import netns
from bench.netns import BenchError
from bench.nfthooks import SECTION as HOOKS
from bench.report import Row
from bench.session import Session
from bench.throughput import Wiring, hooks, iperf3_server, measure, mtu

SECTION = "Pod-to-pod TCP throughput over VXLAN"
LAB = "tb-vx"
HAND = "tb-vh-"
TOR, N1, N2, POD_A, POD_B = (f"{HAND}{n}" for n in ("tor", "n1", "n2", "a", "b"))
LINK_MTU = 1500
POD_MTU = LINK_MTU - 50
PEER_NAME = "hand-built VXLAN (ip link, bridge fdb)"
PEER_WITH_TABLE = "hand-built VXLAN + tabby's nft table"
MACS = {N1: "02:00:00:00:50:01", N2: "02:00:00:00:50:02"}


def hand_built() -> Wiring:
    """Two nodes on a bridge, a static VXLAN tunnel between them, a pod behind each."""
    netns.add([TOR, N1, N2, POD_A, POD_B])
    for node in (N1, N2):
        netns.sysctl(node, {"net.ipv4.ip_forward": "1"})
    netns.ip_batch(["link set lo up", f"link add br0 mtu {LINK_MTU} type bridge",
                    "link set br0 up",
                    f"link add n1 mtu {LINK_MTU} type veth peer name eth0 netns {N1}",
                    f"link add n2 mtu {LINK_MTU} type veth peer name eth0 netns {N2}",
                    "link set n1 master br0 up", "link set n2 master br0 up"], TOR)
    for node, other, pod, me, peer, vtep, peer_vtep, mine, theirs in (
            (N1, N2, POD_A, "198.18.0.11", "198.18.0.12", "198.18.50.1", "198.18.50.2",
             "198.18.10", "198.18.20"),
            (N2, N1, POD_B, "198.18.0.12", "198.18.0.11", "198.18.50.2", "198.18.50.1",
             "198.18.20", "198.18.10")):
        netns.ip_batch([
            "link set lo up", "link set eth0 up", f"addr add {me}/24 dev eth0",
            f"link add vx0 address {MACS[node]} mtu {POD_MTU} type vxlan id 4096 local {me}"
            " dstport 4789 nolearning",
            f"addr add {vtep}/32 dev vx0", "link set vx0 up",
            f"neigh replace {peer_vtep} lladdr {MACS[other]} dev vx0 nud permanent",
            f"route add {theirs}.0/30 via {peer_vtep} dev vx0 onlink",
            f"link add pod mtu {POD_MTU} type veth peer name eth0 mtu {POD_MTU} netns {pod}",
            f"addr add {mine}.1/30 dev pod", "link set pod up"], node)
        netns.run(["bridge", "-n", node, "fdb", "replace", MACS[other], "dev", "vx0", "dst", peer,
                   "self", "permanent"])
        netns.ip_batch(["link set lo up", "link set eth0 up", f"addr add {mine}.2/30 dev eth0",
                        f"route add default via {mine}.1 dev eth0"], pod)
    return Wiring(PEER_NAME, POD_A, "198.18.10.2", POD_B)


def tabby_path() -> Wiring:
    """A two-node VXLAN lab with a pod on each node, once the tunnel routes are in."""
    from tabby.lab import builder
    from tabby.lab.pods import LabPods
    from tabby.lab.state import require
    from tabby.lab.topology import plan
    from tabby.model import Pod

    builder.Lab(plan(LAB, nodes=2, encap="vxlan")).up()
    state = require(LAB)
    netns.wait_for("routes through vxlan.tabby", lambda: all(
        "vxlan.tabby" in netns.run(["ip", "-n", n.netns, "route"]) for n in state.nodes), 15.0)
    with LabPods.open(LAB) as pods:
        for name, node in (("vx-server", "node-1"), ("vx-client", "node-2")):
            pods.apply_pod(Pod.from_manifest({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node, "containers": [{"name": "main", "image": "iperf3"}]}}))
    state = require(LAB)
    server, client = state.pod("default", "vx-server"), state.pod("default", "vx-client")
    if server is None or client is None or server.ip(4) is None:
        raise BenchError(f"lab {LAB}: the pods were not wired")
    return Wiring("tabby", server.netns, str(server.ip(4)), client.netns)


def tunnelled(node: str, device: str) -> int:
    """Packets sent through ``device`` in ``node`` so far."""
    links = json.loads(netns.run(["ip", "-n", node, "-j", "-s", "link", "show", device]))
    return int(links[0]["stats64"]["tx"]["packets"])


def cleanup() -> None:
    from tabby.lab import builder
    from tabby.lab.state import load

    try:
        if load(LAB) is not None:
            builder.down(LAB)
    finally:
        netns.sweep([HAND])


@contextlib.contextmanager
def tabby_table(table: str) -> Iterator[None]:
    """The hand-built nodes with a copy of tabby's nftables table loaded (conntrack on)."""
    try:
        for node in (N1, N2):
            netns.run(["ip", "netns", "exec", node, "nft", "-f", "-"], stdin=table)
        yield
    finally:
        for node in (N1, N2):
            subprocess.run(["ip", "netns", "exec", node, "nft", "delete", "table", "inet",
                            "tabby"], capture_output=True, check=False)


def one_run(path: Wiring, device: tuple[str, str], seconds: int, table: str | None) -> float:
    before = tunnelled(*device)
    with contextlib.ExitStack() as stack:
        if table is not None:
            stack.enter_context(tabby_table(table))
        with iperf3_server(path):
            gbits = measure(path, seconds)
    if tunnelled(*device) - before < 1000:
        raise BenchError(f"{path.name}: the traffic did not go through the tunnel")
    return gbits


def run(session: Session) -> None:
    reps, seconds = (1, 2) if session.quick else (5, 5)
    cleanup()
    try:
        session.log("two-node VXLAN lab with a pod per node; the hand-built twin")
        tabby, hand = tabby_path(), hand_built()
        mtus = {p.name: (mtu(p.server_netns), mtu(p.client_netns)) for p in (tabby, hand)}
        if {m for pair in mtus.values() for m in pair} != {POD_MTU}:
            raise BenchError(f"pod MTUs differ from {POD_MTU}: {mtus}")
        table = netns.run(["ip", "netns", "exec", f"{LAB}-node-1", "nft", "list", "table",
                           "inet", "tabby"])
        # (name, path, the node whose tunnel must carry it, tabby's table on the hand path?)
        runs = [("tabby", tabby, (f"{LAB}-node-2", "vxlan.tabby"), None),
                (PEER_NAME, hand, (N2, "vx0"), None),
                (PEER_WITH_TABLE, hand, (N2, "vx0"), table)]
        samples: dict[str, list[float]] = {name: [] for name, *_ in runs}
        for rep in range(reps):
            for name, path, device, with_table in runs if rep % 2 == 0 else runs[::-1]:
                samples[name].append(one_run(path, device, seconds, with_table))
                session.log(f"{name}: {samples[name][-1]:.2f} Gbit/s")
        medians = {name: statistics.median(vals) for name, vals in samples.items()}
        shown = "; ".join(f"{name}: {', '.join(f'{v:.2f}' for v in vals)}"
                          for name, vals in samples.items())
        what = (f"iperf3, 1 TCP stream, node-2 pod to node-1 pod through VXLAN, median of"
                f" {reps} runs of {seconds} s")
        session.add(
            Row(SECTION, what, medians["tabby"], PEER_NAME, medians[PEER_NAME], "Gbit/s", True,
                f"pod MTU {POD_MTU} both; runs (Gbit/s) {shown}", goal=0.95),
            Row(SECTION, what + "; the peer with a copy of tabby's nftables table (policy,"
                " services, natOutgoing: conntrack on)", medians["tabby"], PEER_WITH_TABLE,
                medians[PEER_WITH_TABLE], "Gbit/s", True,
                "the same runs; isolates the VXLAN wiring from the shared table's cost"))
        with session.part("the nft table's cost per hook, over VXLAN"):
            hooks(session, LAB, tabby, hand, 1 if session.quick else 3, seconds,
                  f"{HOOKS} (VXLAN)")
    finally:
        cleanup()
