"""BGP labs for real: BIRD on every node, FRR on the ToR, pods reaching each other over
routes BIRD learned (``proto bird``), graceful restart, withdrawal.

Labs ``tg1`` (mesh, 3 nodes, dual stack), ``tg2`` (route reflectors, 4 nodes in
2 racks) and ``tg3`` (ToR only, 4 nodes in 2 racks, dual stack). Each is torn
down (namespaces, agents, BIRDs, FRR: by PID) even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tabby.lab import builder, frr, system
from tabby.lab.bgp import bird_dir, birds
from tabby.lab.pods import LabPods
from tabby.lab.services import CLUSTER_RANGES, LB_POOLS
from tabby.lab.state import LabState, load, require
from tabby.model import IPAMBlock, Node, Pod
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

TABBY = [sys.executable, "-m", "tabby.cli.main"]

TIMEOUT = 15.0  # seconds a wait_for in this module may take


def tabby(lab: str, *args: str) -> str:
    done = subprocess.run([*TABBY, "--lab", lab, *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, f"tabby {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def pod(name: str, node: str) -> Pod:
    return Pod.from_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "labels": {"app": name}}, "spec": {"nodeName": node, "containers": [
            {"name": "main", "image": "busybox", "ports": [{"containerPort": 80}]}]}})


def routes(netns: str, version: int, proto: str) -> dict[str, str]:
    """Destination -> the route's text, for routes of ``proto`` in ``netns``'s main table."""
    out = system.run(["ip", f"-{version}", "-n", netns, "-o", "route", "show", "proto", proto])
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def blocks(pods: LabPods) -> dict[str, str]:
    """Block CIDR -> owning node."""
    return {str(b.spec.cidr): b.node or "" for b in pods.client.list(IPAMBlock)}


def tor_prefixes(state: LabState, version: int) -> set[str]:
    data = json.loads(frr.vtysh(state, f"show bgp ipv{version} unicast json"))
    return set(data.get("routes", {}))


def service_ranges(version: int) -> set[str]:
    """The lab's ClusterIP and LoadBalancer ranges, which its BGPConfiguration advertises."""
    return {str(CLUSTER_RANGES[version]), str(LB_POOLS[version][1])}


def assert_torn_down(state: LabState) -> None:
    assert sorted(n for n in system.netns_list() if n.startswith(f"{state.name}-")) == []
    assert [p for p in state.all_procs() if system.alive(p)] == []
    assert not state.dir.exists() and load(state.name) is None


@contextlib.contextmanager
def lab_with_pods(name: str, args: list[str], placement: dict[str, str]
                  ) -> Iterator[tuple[LabState, LabPods]]:
    if load(name) is not None:
        builder.down(name)
    state: LabState | None = None
    try:
        tabby(name, "lab", "up", "--name", name, *args)
        state = require(name)
        with LabPods.open(name) as driver:
            driver.apply_pods([pod(p, n) for p, n in placement.items()])
            yield require(name), driver
    finally:
        state = load(name) or state
        if state is not None:
            running_birds = birds(state)
            if load(name) is not None:
                builder.down(name)
            assert_torn_down(state)
            assert [p for p in running_birds if system.alive(p)] == []


def check_learned(state: LabState, pods: LabPods, families: tuple[int, ...]) -> None:
    """Every node has a ``proto bird`` route for every other node's block, and no static
    remote route of the agent's (proto 77 via a gateway)."""
    owned = blocks(pods)
    for node in state.nodes:
        for version in families:
            want = {c for c, owner in owned.items() if owner != node.name
                    and (":" in c) == (version == 6)}
            wait_for(f"{node.name}'s BGP routes (IPv{version})",
                     lambda n=node, v=version, w=want: w <= set(routes(n.netns, v, "bird")),
                     TIMEOUT)
            ours = routes(node.netns, version, "77")
            assert [r for r in ours.values() if " via " in r] == []


# -- mesh -------------------------------------------------------------------------------

MESH = "tg1"


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[LabState, LabPods]]:
    with lab_with_pods(MESH, ["--nodes", "3", "--stack", "dual", "--bgp", "mesh"],
                       {"a": "node-1", "b": "node-2", "c": "node-3"}) as lab:
        yield lab


def test_mesh_sessions_are_up_and_node_status_shows_them(mesh: tuple[LabState, LabPods]
                                                         ) -> None:
    status = json.loads(tabby(MESH, "node", "status", "--node", "node-1", "-o", "json"))
    assert status["node"] == "node-1" and status["bird"]["routerId"] == "198.18.0.11"
    got = {(p["address"], p["type"], p["info"]) for p in status["peers"]}
    assert got == {("198.18.0.12", "node-to-node mesh", "Established"),
                   ("198.18.0.13", "node-to-node mesh", "Established"),
                   ("fd7a:bb1e::12", "node-to-node mesh", "Established"),
                   ("fd7a:bb1e::13", "node-to-node mesh", "Established"),
                   ("198.18.0.1", "node specific", "Established"),
                   ("fd7a:bb1e::1", "node specific", "Established")}
    table = tabby(MESH, "node", "status", "--node", "node-2")
    assert "IPv4 BGP status" in table and "IPv6 BGP status" in table
    assert "198.18.0.11    node-to-node mesh   up" in table


def test_mesh_routes_are_learned_over_bgp(mesh: tuple[LabState, LabPods]) -> None:
    state, pods = mesh
    check_learned(state, pods, (4, 6))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_mesh_pods_reach_each_other(mesh: tuple[LabState, LabPods], family: str) -> None:
    probes = json.loads(tabby(MESH, "lab", "probe", "--family", family, "-o", "json"))["probes"]
    assert len(probes) == 6 and [p for p in probes if not p["connected"]] == []


def test_tor_learns_every_block_and_the_outside_reaches_pods(mesh: tuple[LabState, LabPods]
                                                             ) -> None:
    state, pods = mesh
    owned = blocks(pods)
    for version in (4, 6):
        want = {c for c in owned if (":" in c) == (version == 6)} | service_ranges(version)
        wait_for(f"the ToR's IPv{version} routes", lambda v=version, w=want:
                 tor_prefixes(state, v) == w, TIMEOUT)
    ext = state.topology.ext
    assert ext is not None
    for record in state.pods:
        for ip in record.ips:
            system.run(["ip", "netns", "exec", ext.netns, "busybox", "ping", "-c", "1", "-W",
                        "2", str(ip)])


def test_bird_restart_keeps_forwarding(mesh: tuple[LabState, LabPods]) -> None:
    state, pods = mesh
    a, b = state.pod("default", "a"), state.pod("default", "b")
    assert a is not None and b is not None
    node2 = state.node("node-2")
    pidfile = bird_dir(node2) / "bird.pid"
    old = int(pidfile.read_text())
    b_block = next(c for c, owner in blocks(pods).items() if owner == "node-2" and "." in c)
    pings = [subprocess.Popen(["ip", "netns", "exec", src.netns, "busybox", "ping", "-i",
                               "0.05", "-c", "80", "-W", "1", str(dst.ip(v))],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for src, dst, v in ((a, b, 4), (b, a, 4), (a, b, 6))]
    try:
        os.kill(old, signal.SIGKILL)  # the pings (4 s) span the restart
        while any(p.poll() is None for p in pings):
            assert b_block in routes(state.node("node-1").netns, 4, "bird")
            time.sleep(0.05)
    finally:
        for p in pings:
            if p.poll() is None:
                p.kill()
    outputs = [p.communicate()[0] for p in pings]
    for out in outputs:
        assert "80 packets received" in out, out
    wait_for("a new BIRD on node-2", lambda: pidfile.exists() and
             int(pidfile.read_text()) != old, TIMEOUT)
    wait_for("node-2's sessions back", lambda: all(
        p["info"] == "Established" for p in json.loads(tabby(
            MESH, "node", "status", "--node", "node-2", "-o", "json"))["peers"]), TIMEOUT)


def test_deleted_node_routes_are_withdrawn_everywhere(mesh: tuple[LabState, LabPods]) -> None:
    state, pods = mesh
    gone = {c for c, owner in blocks(pods).items() if owner == "node-3"}
    assert gone
    pods.client.delete(Node, "node-3")
    for node in ("node-1", "node-2"):
        netns = state.node(node).netns
        wait_for(f"node-3's blocks gone from {node}", lambda n=netns: not gone & (
            set(routes(n, 4, "bird")) | set(routes(n, 6, "bird"))), TIMEOUT)
    wait_for("node-3's blocks gone from the ToR", lambda: not gone & (
        tor_prefixes(state, 4) | tor_prefixes(state, 6)), TIMEOUT)
    status = json.loads(tabby(MESH, "node", "status", "--node", "node-3", "-o", "json"))
    assert status["peers"] == []


# -- route reflectors and the ToR alone ----------------------------------------------------

def test_route_reflectors_across_racks() -> None:
    with lab_with_pods("tg2", ["--nodes", "4", "--racks", "2", "--bgp", "rr"],
                       {f"p{i}": f"node-{i}" for i in range(1, 5)}) as (state, pods):
        status = json.loads(tabby("tg2", "node", "status", "--node", "node-2", "-o", "json"))
        assert {(p["address"], p["info"]) for p in status["peers"]} == {
            ("198.18.0.1", "Established"), ("198.18.0.11", "Established"),
            ("198.18.1.13", "Established")}  # the ToR and the two reflectors only
        reflector = json.loads(tabby("tg2", "node", "status", "--node", "node-1", "-o", "json"))
        assert {p["address"] for p in reflector["peers"] if p["type"] ==
                "route reflector client"} == {"198.18.0.12", "198.18.1.14"}
        check_learned(state, pods, (4,))
        wait_for("the ToR's routes", lambda s=state, p=pods: tor_prefixes(s, 4) == set(
            blocks(p)) | service_ranges(4), TIMEOUT)
        probes = json.loads(tabby("tg2", "lab", "probe", "-o", "json"))["probes"]
        assert len(probes) == 12 and [p for p in probes if not p["connected"]] == []


def test_tor_only_across_racks_dual_stack() -> None:
    with lab_with_pods("tg3", ["--nodes", "4", "--racks", "2", "--stack", "dual", "--bgp",
                               "tor"], {f"p{i}": f"node-{i}" for i in range(1, 5)}
                       ) as (state, pods):
        status = json.loads(tabby("tg3", "node", "status", "--node", "node-3", "-o", "json"))
        assert [(p["address"], p["info"]) for p in status["peers"]] == [
            ("198.18.1.1", "Established"), ("fd7a:bb1e:0:1::1", "Established")]
        check_learned(state, pods, (4, 6))
        for family in ("ipv4", "ipv6"):
            out: dict[str, Any] = json.loads(tabby("tg3", "lab", "probe", "--family", family,
                                                   "-o", "json"))
            assert [p for p in out["probes"] if not p["connected"]] == []
