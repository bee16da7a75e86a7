"""The lab's record of what it made, pod placement and probe planning: pure parts."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from tabby.cli.lab import probe_grid
from tabby.errors import LabError
from tabby.lab.pods import place, pod_netns, resolve
from tabby.lab.probe import plan_probes
from tabby.lab.state import (
    LabState,
    Link,
    NodeRecord,
    PodRecord,
    Proc,
    StateFile,
    from_dict,
    to_dict,
)
from tabby.lab.topology import plan


def make_state(tmp: Path, stack: str = "dual", pods: tuple[PodRecord, ...] = ()) -> LabState:
    t = plan("tu", nodes=3, stack=stack)
    nodes = tuple(NodeRecord(n.name, n.netns, tmp / n.name,
                             Proc(100 + n.index, 7, f"agent {n.name}")) for n in t.nodes)
    return LabState(name="tu", dir=tmp, phase="up", options=t.options(),
                    datastore=f"sqlite://{tmp}/store.db", netns=t.netns(),
                    links=(Link("tu-tor", "fabric1"),), procs=(Proc(99, 1, "relay"),),
                    nodes=nodes, pods=pods)


def pod(ns: str, name: str, node: str, n: int, ports: tuple[tuple[int, str], ...] = ((80, "TCP"),)
        ) -> PodRecord:
    return PodRecord(namespace=ns, name=name, uid=f"uid-{n}", node=node,
                     netns=pod_netns("tu", ns, name), container_id=f"{n:064x}",
                     ips=(ipaddress.ip_address(f"198.19.0.{n}"),
                          ipaddress.ip_address(f"fd7a:bb1e:1::{n}")),
                     ports=ports, listener=Proc(1000 + n, 5, f"listener {ns}/{name}"))


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    state = make_state(tmp_path, pods=(pod("default", "a", "node-1", 1),))
    again = from_dict(json.loads(json.dumps(to_dict(state))))
    assert again == state
    assert again.topology == plan("tu", nodes=3, stack="dual")


def test_state_file_mutates_under_its_lock(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    sf.write(make_state(tmp_path))
    sf.mutate(lambda s: s.with_pod(pod("default", "a", "node-2", 1)))
    sf.mutate(lambda s: s.with_pod(pod("team", "b", "node-1", 2)))
    state = sf.read()
    assert [p.ref for p in state.pods] == ["default/a", "team/b"]
    assert state.all_netns()[:2] == ("tu_default_a", "tu_team_b")
    roles = [p.role for p in state.all_procs()]
    assert roles == ["listener default/a", "listener team/b", "agent node-1", "agent node-2",
                     "agent node-3", "relay"]
    assert sf.mutate(lambda s: s.without_pod("default", "a")).pods == state.pods[1:]


def test_placement_spreads_and_honours_node_name(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    assert place(state, "") == "node-1"
    state = state.with_pod(pod("default", "a", "node-1", 1))
    assert place(state, "") == "node-2"
    state = state.with_pod(pod("default", "b", "node-2", 2))
    state = state.with_pod(pod("default", "c", "node-2", 3))
    assert place(state, "") == "node-3"
    assert place(state, "node-2") == "node-2"
    with pytest.raises(LabError, match="node-9"):
        place(state, "node-9")


def test_pod_netns_names_never_collide() -> None:
    assert pod_netns("tabby", "default", "web") == "tabby_default_web"
    assert pod_netns("a", "b-x", "y") != pod_netns("a-b", "x", "y")
    long = pod_netns("tabby", "default", "p" * 253)
    assert long.startswith("tabby_default_") and len(long) <= 200
    assert long != pod_netns("tabby", "default", "p" * 252 + "q")


def test_resolve_refs(tmp_path: Path) -> None:
    state = make_state(tmp_path, pods=(pod("default", "a", "node-1", 1),
                                       pod("team", "b", "node-1", 2)))
    assert resolve(state, "a").ref == "default/a"
    assert resolve(state, "team/b").ref == "team/b"
    with pytest.raises(LabError, match="no pod team/a"):
        resolve(state, "team/a")


def test_probe_plan_defaults(tmp_path: Path) -> None:
    a = pod("default", "a", "node-1", 1, ((80, "TCP"), (53, "UDP")))
    b = pod("default", "b", "node-2", 2, ((8080, "TCP"), (8080, "UDP")))
    c = pod("team", "c", "node-3", 3, ())
    state = make_state(tmp_path, pods=(a, b, c))
    probes = plan_probes(state)
    got = [(p.source.name, p.target.name, p.family, p.protocol, p.port) for p in probes]
    # no self probes, no probes to a pod without ports, the lab's first family
    assert got == [
        ("a", "b", "ipv4", "tcp", 8080), ("a", "b", "ipv4", "udp", 8080),
        ("b", "a", "ipv4", "udp", 53), ("b", "a", "ipv4", "tcp", 80),
        ("c", "a", "ipv4", "udp", 53), ("c", "a", "ipv4", "tcp", 80),
        ("c", "b", "ipv4", "tcp", 8080), ("c", "b", "ipv4", "udp", 8080)]


def test_probe_plan_filters(tmp_path: Path) -> None:
    a = pod("default", "a", "node-1", 1, ((80, "TCP"), (53, "UDP")))
    b = pod("default", "b", "node-2", 2, ((80, "TCP"),))
    state = make_state(tmp_path, stack="ipv6", pods=(a, b))
    got = [(p.source.name, p.target.name, p.family, p.protocol, p.port)
           for p in plan_probes(state, ["default/b"], ["a"], port=53)]
    assert got == [("b", "a", "ipv6", "udp", 53)]
    pairs = [(p.source.name, p.target.name, p.protocol, p.port)
             for p in plan_probes(state, ["a"], ["a", "b"], protocol="udp")]
    assert pairs == [("a", "a", "udp", 53), ("a", "a", "udp", 80), ("a", "b", "udp", 80)]
    only = [(p.target.name, p.protocol, p.port) for p in plan_probes(state, ["a"], ["b"], port=9)]
    assert only == [("b", "tcp", 9)]
    with pytest.raises(LabError, match="--family"):
        plan_probes(state, family="ipv5")
    with pytest.raises(LabError, match="no pod"):
        plan_probes(state, ["default/zz"])


def test_probe_plan_skips_targets_without_the_family(tmp_path: Path) -> None:
    only_v4 = PodRecord("default", "v4", "u", "node-1", "n", "c" * 64,
                        ips=(ipaddress.ip_address("198.19.0.9"),), ports=((80, "TCP"),))
    state = make_state(tmp_path, pods=(pod("default", "a", "node-1", 1), only_v4))
    assert [p.target.name for p in plan_probes(state, family="ipv6")] == ["a"]


def test_probe_grid_plain_text() -> None:
    probes = [
        {"from": "x/a", "to": "x/b", "family": "ipv4", "protocol": "tcp", "port": 80,
         "connected": True},
        {"from": "x/a", "to": "x/b", "family": "ipv4", "protocol": "udp", "port": 80,
         "connected": False},
        {"from": "x/b", "to": "x/a", "family": "ipv4", "protocol": "tcp", "port": 80,
         "connected": True},
        {"from": "x/b", "to": "x/a", "family": "ipv4", "protocol": "udp", "port": 80,
         "connected": True},
    ]
    text = probe_grid(probes, color=False)
    assert text.splitlines() == [
        "        1  2",
        "1 x/a   . +x",
        "2 x/b  ++  .",
        "each cell: tcp/80 udp/80",
        "3/4 probes connected",
    ]
    coloured = probe_grid(probes, color=True)
    assert "\x1b[32m" in coloured and "\x1b[31m" in coloured
    assert probe_grid([], color=False).startswith("no probes")
