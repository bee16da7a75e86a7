"""The lab's BGP modes as data: the resources each writes, the nodes they change, FRR's config."""

from __future__ import annotations

from typing import Any

import pytest

from tabby.calc.bird import MESH, NODE_SPECIFIC, RR_CLIENT, desired_bird
from tabby.lab import bgp
from tabby.lab.datastore import node_manifest, pool_manifest
from tabby.lab.frr import bgpd_conf
from tabby.lab.topology import Topology, plan
from tabby.model import BGPPeer, IPPool, Node
from tabby.snapshot import Snapshot


def snapshot(t: Topology) -> Snapshot:
    nodes = [Node.from_manifest(bgp.with_bgp(t, n, node_manifest(n))) for n in t.nodes]
    pools = [IPPool.from_manifest(pool_manifest(p)) for p in t.pools]
    return Snapshot.build(nodes=nodes, others=[*pools, *bgp.resources(t)])


def sessions(t: Topology, node: str) -> list[tuple[str, str]]:
    return [(str(p.address), p.type) for p in desired_bird(snapshot(t), node).peers]


def test_no_bgp_changes_nothing() -> None:
    t = plan("x", nodes=2)
    node = t.nodes[0]
    assert bgp.with_bgp(t, node, node_manifest(node)) == node_manifest(node)
    assert bgp.resources(t) == [] and bgp.route_reflectors(t) == ()


def test_mesh_peers_every_node_and_the_tor() -> None:
    t = plan("x", nodes=3, stack="dual", bgp="mesh")
    assert sessions(t, "node-1") == [
        ("198.18.0.1", NODE_SPECIFIC), ("198.18.0.12", MESH), ("198.18.0.13", MESH),
        ("fd7a:bb1e::1", NODE_SPECIFIC), ("fd7a:bb1e::12", MESH), ("fd7a:bb1e::13", MESH)]


def test_rr_reflectors_are_the_first_node_of_each_rack() -> None:
    t = plan("x", nodes=5, racks=2, bgp="rr")
    assert bgp.route_reflectors(t) == ("node-1", "node-4")
    rr = Node.from_manifest(bgp.with_bgp(t, t.nodes[0], node_manifest(t.nodes[0])))
    assert rr.spec.bgp.route_reflector_cluster_id == bgp.CLUSTER_ID
    assert rr.meta.labels == {"kubernetes.io/hostname": "node-1", "tabby.dev/rack": "1",
                              "route-reflector": "true"}
    assert sessions(t, "node-2") == [("198.18.0.1", NODE_SPECIFIC),
                                     ("198.18.0.11", NODE_SPECIFIC),
                                     ("198.18.1.14", NODE_SPECIFIC)]
    assert sessions(t, "node-1") == [
        ("198.18.0.1", NODE_SPECIFIC), ("198.18.0.12", RR_CLIENT), ("198.18.0.13", RR_CLIENT),
        ("198.18.1.14", NODE_SPECIFIC), ("198.18.1.15", RR_CLIENT)]


def test_tor_mode_peers_with_the_racks_tor_only() -> None:
    t = plan("x", nodes=4, racks=2, stack="dual", bgp="tor")
    assert sessions(t, "node-3") == [("198.18.1.1", NODE_SPECIFIC),
                                     ("fd7a:bb1e:0:1::1", NODE_SPECIFIC)]
    peers = [r for r in bgp.resources(t) if isinstance(r, BGPPeer)]
    assert {p.spec.num_allowed_local_as for p in peers} == {1}
    assert len(peers) == 4  # a rack and a family each


@pytest.mark.parametrize("mode", ["mesh", "rr", "tor"])
def test_frr_peers_with_every_node_address(mode: str) -> None:
    t = plan("x", nodes=4, racks=2, stack="dual", bgp=mode)
    conf = bgpd_conf(t)
    for node in t.nodes:
        for a in node.addresses():
            assert f" neighbor {a.ip} peer-group NODES{a.version}\n" in conf
    assert "router bgp 65000\n bgp router-id 198.18.0.1\n" in conf
    assert "  neighbor NODES6 activate\n" in conf


def test_agent_flags() -> None:
    from pathlib import Path

    from tabby.lab.state import NodeRecord
    record = NodeRecord("node-1", "x-node-1", Path("/run/tabby/labs/x/node-1"))
    assert bgp.agent_flags(plan("x", nodes=1), record) == []
    flags: list[Any] = bgp.agent_flags(plan("x", nodes=1, bgp="tor"), record)
    assert flags == ["--bgp", "bird", "--bgp-dir", "/run/tabby/labs/x/node-1/bgp"]
    assert bgp.bird_socket(record) == Path("/run/tabby/labs/x/node-1/bgp/bird.ctl")
