"""BFD and BGPFilter on real BIRDs: a node's link dies and, with BFD on the mesh, the
other nodes withdraw its routes within a second; without BFD they keep them (BGP's hold
timer, 240 s in BIRD, has not run out). And a BGPFilter on the ToR peers keeps a node's
blocks from the ToR (FRR) on both families while the mesh still carries them.

Lab ``bfdl`` (mesh, 3 nodes, dual stack, a pod on each node). Torn down by PID and name
even when a test fails (``lab_with_pods``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator

import pytest

from tabby.errors import LabError
from tabby.lab import system
from tabby.lab.bgp import bird_socket
from tabby.lab.pods import LabPods
from tabby.lab.state import LabState
from tabby.model import BGPConfiguration, BGPFilter, BGPPeer, parse_manifest
from tabby.model.bgpfields import BFD
from tests.netns.test_bgp_lab import blocks, lab_with_pods, routes, tor_prefixes
from tests.waiting import wait_for, wait_seconds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "bfdl"
DEAD = "node-3"
FAMILIES = (4, 6)
BFD_BOUND = 1.0  # seconds: the promise (BFD detects in 3 x 100 ms)
HOLD_CHECK = 3.0  # without BFD the routes must still be there this long after


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[LabState, LabPods]]:
    placement = {"a1": "node-1", "a2": "node-2", "a3": DEAD}
    with lab_with_pods(LAB, ["--nodes", "3", "--stack", "dual", "--bgp", "mesh"],
                       placement) as built:
        yield built


def dead_blocks(pods: LabPods) -> dict[int, set[str]]:
    owned = [c for c, owner in blocks(pods).items() if owner == DEAD]
    return {v: {c for c in owned if (":" in c) == (v == 6)} for v in FAMILIES}


def learned(state: LabState, wanted: dict[int, set[str]]) -> dict[str, set[str]]:
    """Per other node: which of ``wanted`` its kernel holds (proto bird)."""
    return {n.name: {c for v in FAMILIES for c in wanted[v] if c in routes(n.netns, v, "bird")}
            for n in state.nodes if n.name != DEAD}


def set_mesh_bfd(pods: LabPods, bfd: BFD | None) -> None:
    conf = pods.client.get(BGPConfiguration, "default")
    pods.client.update(dataclasses.replace(
        conf, spec=dataclasses.replace(conf.spec, node_mesh_bfd=bfd)))


def bfd_sessions_up(state: LabState) -> bool:
    """Every other node's BIRD has BFD up to the dead-to-be node on both families."""
    target = {str(a.ip) for a in state.topology.node(DEAD).addresses()}
    for node in state.nodes:
        if node.name == DEAD:
            continue
        try:
            out = system.run(["birdc", "-s", str(bird_socket(node)), "show", "bfd", "sessions"])
        except LabError:  # "There is no BFD protocol running" (yet, or any more)
            return False
        up = {line.split()[0] for line in out.splitlines() if " Up " in f" {line} "}
        if not target <= up:
            return False
    return True


def link(state: LabState, up: bool) -> None:
    tor_if = state.topology.node(DEAD).tor_if
    system.run(["ip", "-n", state.topology.tor_netns, "link", "set", tor_if,
                "up" if up else "down"])


def test_bfd_withdraws_a_dead_nodes_routes_within_a_second(
        lab: tuple[LabState, LabPods]) -> None:
    state, pods = lab
    wanted = dead_blocks(pods)
    assert all(wanted[v] for v in FAMILIES), wanted
    everything = {n: wanted[4] | wanted[6] for n in ("node-1", "node-2")}

    set_mesh_bfd(pods, BFD())
    wait_for("BFD sessions up", lambda: bfd_sessions_up(state), 30.0)
    wait_for("node-3's routes", lambda: learned(state, wanted) == everything, 30.0)
    link(state, up=False)
    started = time.monotonic()
    try:
        wait_for("node-3's routes withdrawn",
                 lambda: not any(learned(state, wanted).values()), 10.0)
        took = time.monotonic() - started
    finally:
        link(state, up=True)
    print(f"with BFD: node link down -> routes withdrawn on node-1 and node-2 in {took:.3f}s")
    assert took < BFD_BOUND

    # The control: the same link death without BFD leaves the routes (hold timer).
    set_mesh_bfd(pods, None)
    wait_for("BFD sessions gone", lambda: not bfd_sessions_up(state), 30.0)
    wait_for("node-3's routes back", lambda: learned(state, wanted) == everything, 60.0)
    link(state, up=False)
    try:
        deadline = time.monotonic() + HOLD_CHECK
        while time.monotonic() < deadline:
            assert learned(state, wanted) == everything, "withdrawn without BFD?"
            time.sleep(0.2)
    finally:
        link(state, up=True)


def test_a_bgpfilter_keeps_a_nodes_blocks_from_the_tor(lab: tuple[LabState, LabPods]
                                                       ) -> None:
    state, pods = lab
    wanted = dead_blocks(pods)
    wait_for("the ToR learns node-3's blocks", lambda: all(
        wanted[v] <= tor_prefixes(state, v) for v in FAMILIES), 60.0)
    pods.client.create(parse_manifest({
        "apiVersion": "projectcalico.org/v3", "kind": "BGPFilter",
        "metadata": {"name": "no-node-3"}, "spec": {
            f"exportV{v}": [{"action": "Reject", "cidr": c, "matchOperator": "Equal"}
                            for c in sorted(wanted[v])] for v in FAMILIES}}))
    for peer in pods.client.list(BGPPeer):
        pods.client.update(dataclasses.replace(
            peer, spec=dataclasses.replace(peer.spec, filters=("no-node-3",))))
    try:
        wait_for("the ToR forgets node-3's blocks", lambda: not any(
            wanted[v] & tor_prefixes(state, v) for v in FAMILIES), 60.0)
        # The mesh has no filters: node-1 and node-2 still route to node-3's pods. (Polled:
        # BIRD restarts node-3's sessions whose config text changed; the mesh's routes can
        # be gone for a moment while it does.)
        expected = {n: wanted[4] | wanted[6] for n in ("node-1", "node-2")}
        took = wait_seconds("the mesh routes node-3's blocks", lambda: learned(
            state, wanted) == expected, 30.0)
        print(f"\nmesh routes present {took:.2f}s after the ToR forgot them")
    finally:
        for peer in pods.client.list(BGPPeer):
            pods.client.update(dataclasses.replace(
                peer, spec=dataclasses.replace(peer.spec, filters=())))
        pods.client.delete(BGPFilter, "no-node-3")
    wait_for("the ToR learns them again", lambda: all(
        wanted[v] <= tor_prefixes(state, v) for v in FAMILIES), 60.0)
