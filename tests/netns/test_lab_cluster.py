"""A real lab: nodes, agents, pods wired through tabby-cni, probes, teardown.

The CLI surface (``tabby lab up|down|status|probe|exec``) is driven as scripts
drive it, in a subprocess; pods go through the lab's API, which ``tabby apply``
calls when a lab is up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.errors import LabError
from tabby.ipam import IPAM
from tabby.lab import builder, system
from tabby.lab.cni import portmap_version
from tabby.lab.pods import LabPods
from tabby.lab.state import LabState, load, require
from tabby.lab.topology import plan
from tabby.model import Namespace, Pod, WorkloadEndpoint
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "tl1"
TABBY = [sys.executable, "-m", "tabby.cli.main"]

TIMEOUT = 15.0  # seconds a wait_for in this module may take


def tabby(*args: str, check: bool = True, lab: str = LAB) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*TABBY, "--lab", lab, *args], capture_output=True, text=True,
                          timeout=300, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"tabby {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


def leftovers(name: str) -> list[str]:
    return sorted(ns for ns in system.netns_list()
                  if ns.startswith((f"{name}-", f"{name}_")))


def ensure_gone(name: str) -> None:
    if load(name) is not None:
        builder.down(name)
    assert leftovers(name) == []


def assert_torn_down(state: LabState) -> None:
    assert leftovers(state.name) == []
    assert [p for p in state.all_procs() if system.alive(p)] == []
    assert not state.dir.exists()
    assert load(state.name) is None


def pod(name: str, ns: str = "default", node: str = "", labels: dict[str, str] | None = None,
        ports: tuple[tuple[int, str], ...] = ((80, "TCP"), (53, "UDP"))) -> Pod:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox", "ports": [
        {"containerPort": p, "protocol": proto} for p, proto in ports]}]}
    if node:
        spec["nodeName"] = node
    return Pod.from_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": ns, "labels": labels or {"app": name}}, "spec": spec})


def namespace(name: str, labels: dict[str, str] | None = None) -> Namespace:
    return Namespace.from_manifest({"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": name, "labels": labels or {}}})


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    ensure_gone(LAB)
    try:
        out = tabby("lab", "up", "--name", LAB, "--nodes", "2", "--stack", "dual")
        assert f"lab {LAB} is up" in out.stdout
        yield require(LAB)
    finally:
        state = load(LAB)
        if state is not None:
            tabby("lab", "down", "--name", LAB)
            assert_torn_down(state)


@pytest.fixture(scope="module")
def pods(lab: LabState) -> Iterator[LabPods]:
    with LabPods.open(LAB) as driver:
        assert driver.apply_namespace(namespace("team", {"tier": "back"})) == "created"
        results = driver.apply_pods([pod("a", node="node-1"), pod("b", node="node-1"),
                                     pod("c", ns="team", node="node-2")])
        assert results == ["created", "created", "created"]
        yield driver


def probe_json(*args: str, lab: str = LAB) -> list[dict[str, Any]]:
    done = tabby("lab", "probe", "-o", "json", *args, lab=lab)
    probes: list[dict[str, Any]] = json.loads(done.stdout)["probes"]
    return probes


def test_status_json_names_what_a_runtime_needs(lab: LabState) -> None:
    info = json.loads(tabby("lab", "status", "-o", "json").stdout)
    assert info["name"] == LAB and info["datastore"] == lab.datastore
    assert [n["name"] for n in info["nodes"]] == ["node-1", "node-2"]
    for node in info["nodes"]:
        assert node["netns"] in system.netns_list()
        conf = json.loads(Path(node["cniConfList"]).read_text())
        # With Debian's portmap (spec <= 1.0.0) in the chain the list runs at 1.0.0.
        assert conf["cniVersion"] == (portmap_version() or "1.1.0")
        assert conf["name"] == "k8s-pod-network"
        chain = ["tabby-cni", "portmap"] if portmap_version() else ["tabby-cni"]
        assert [p["type"] for p in conf["plugins"]] == chain
        for plugin in conf["plugins"]:
            assert os.access(os.path.join(node["cniBinDir"], plugin["type"]), os.X_OK)
        assert node["agentRunning"] is True


def test_up_refuses_a_second_lab_of_the_same_name(lab: LabState) -> None:
    done = tabby("lab", "up", "--name", LAB, check=False)
    assert done.returncode == 1 and "already up" in done.stderr


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_pods_reach_each_other_over_tcp_and_udp(pods: LabPods, family: str) -> None:
    probes = probe_json("--family", family)
    got = {(p["from"], p["to"], p["protocol"], p["port"]) for p in probes}
    refs = ["default/a", "default/b", "team/c"]  # a, b on node-1; c on node-2
    want = {(s, t, proto, port) for s in refs for t in refs if s != t
            for proto, port in (("tcp", 80), ("udp", 53))}
    assert got == want and len(probes) == len(want)
    assert {p["family"] for p in probes} == {family}
    assert [p for p in probes if not p["connected"]] == []


def test_a_probe_needs_the_target_to_answer(pods: LabPods) -> None:
    probes = probe_json("--from", "default/a", "--to", "team/c", "--port", "81",
                        "--timeout", "0.5")
    assert [(p["protocol"], p["port"], p["connected"]) for p in probes] == [("tcp", 81, False)]
    probes = probe_json("--from", "default/a", "--to", "team/c", "--port", "53",
                        "--protocol", "udp")
    assert [(p["protocol"], p["port"], p["connected"]) for p in probes] == [("udp", 53, True)]


def test_two_processes_in_one_pod_talk_over_localhost(pods: LabPods) -> None:
    server = ("import socket,subprocess,sys\n"
              "s=socket.create_server(('127.0.0.1',7000))\n"
              "c=subprocess.Popen([sys.executable,'-c',"
              "'import socket;socket.create_connection((\"127.0.0.1\",7000)).sendall(b\"hi\")'])\n"
              "conn,_=s.accept();print(conn.recv(10).decode());c.wait()\n")
    done = tabby("lab", "exec", "default/b", "--", sys.executable, "-c", server)
    assert done.stdout.strip() == "hi"


def test_exec_passes_the_exit_code_through(pods: LabPods) -> None:
    assert tabby("lab", "exec", "team/c", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    addrs = tabby("lab", "exec", "team/c", "--", "ip", "-br", "addr", "show", "eth0").stdout
    state = require(LAB)
    record = state.pod("team", "c")
    assert record is not None and all(str(ip) in addrs for ip in record.ips)


def test_delete_pod_runs_del_and_frees_its_addresses(pods: LabPods) -> None:
    assert pods.apply_pod(pod("gone", node="node-2")) == "created"
    record = require(LAB).pod("default", "gone")
    assert record is not None and record.listener is not None and len(record.ips) == 2
    handle = f"k8s-pod-network.{record.container_id}.eth0"
    ipam = IPAM(pods.client)
    assert set(ipam.addresses_of(handle)) == set(record.ips)
    stored = pods.client.get(Pod, "gone", "default")
    assert stored.status.phase == "Running" and stored.status.pod_ips == record.ips

    pods.delete_pod("default", "gone")
    assert ipam.addresses_of(handle) == ()
    assert record.netns not in system.netns_list()
    assert not system.alive(record.listener)
    assert pods.client.try_get(Pod, "gone", "default") is None
    assert [w for w in pods.client.list(WorkloadEndpoint, "default")
            if w.spec.pod == "gone"] == []
    assert require(LAB).pod("default", "gone") is None


def test_relabel_is_an_update_in_place(pods: LabPods) -> None:
    before = require(LAB).pod("default", "b")
    assert before is not None
    assert pods.apply_pod(pod("b", labels={"app": "b", "role": "db"})) == "configured"
    assert pods.apply_pod(pod("b", labels={"app": "b", "role": "db"})) == "unchanged"
    after = require(LAB).pod("default", "b")
    assert after == before  # same sandbox, addresses, listener: nothing re-wired
    stored = pods.client.get(Pod, "b", "default")
    assert dict(stored.meta.labels) == {"app": "b", "role": "db"}
    assert stored.node_name == "node-1" and stored.status.phase == "Running"

    def endpoint_labels() -> dict[str, str]:
        weps = [w for w in pods.client.list(WorkloadEndpoint, "default") if w.spec.pod == "b"]
        return dict(weps[0].meta.labels) if weps else {}
    wait_for("the endpoint to carry role=db", lambda: endpoint_labels().get("role") == "db",
             TIMEOUT)

    assert pods.apply_namespace(namespace("team", {"tier": "front"})) == "configured"
    assert pods.client.get(Namespace, "team").meta.labels["tier"] == "front"
    with pytest.raises(LabError, match="cannot change"):
        pods.apply_pod(pod("b", ports=((8080, "TCP"),)))
    with pytest.raises(LabError, match="cannot change"):
        pods.apply_pod(pod("b", node="node-2"))


def test_pods_are_spread_over_nodes(pods: LabPods) -> None:
    state = require(LAB)
    per_node = {n.name: sum(1 for p in state.pods if p.node == n.name) for n in state.nodes}
    extra = [pod(f"spread-{i}") for i in range(3)]
    try:
        assert pods.apply_pods(extra) == ["created"] * 3
        state = require(LAB)
        after = {n.name: sum(1 for p in state.pods if p.node == n.name) for n in state.nodes}
        assert sum(after.values()) == sum(per_node.values()) + 3
        assert max(after.values()) - min(after.values()) <= 1
    finally:
        for p in extra:
            if require(LAB).pod("default", p.meta.name):
                pods.delete_pod("default", p.meta.name)


def test_up_down_leaves_nothing_behind() -> None:
    name = "tl2"
    ensure_gone(name)
    try:
        tabby("lab", "up", "--nodes", "1", "--stack", "ipv4", lab=name)
        with LabPods.open(name) as driver:
            driver.apply_pod(pod("x"))
        state = require(name)
        assert len(state.all_procs()) == 2 and all(system.alive(p) for p in state.all_procs())
        assert set(state.all_netns()) == set(leftovers(name))
    finally:
        state_before = load(name)
        tabby("lab", "down", lab=name)
    assert state_before is not None
    assert_torn_down(state_before)
    done = tabby("lab", "down", lab=name, check=False)
    assert done.returncode == 1 and "no lab" in done.stderr


def test_a_failed_up_tears_down_what_it_made() -> None:
    name = "tl3"
    ensure_gone(name)
    lab = builder.Lab(plan(name, nodes=2), agent_timeout=0.0)
    with pytest.raises(LabError, match="not ready after 0s") as failure:
        lab.up()
    assert "agent.log" in str(failure.value)
    assert leftovers(name) == [] and load(name) is None and not lab.dir.exists()


def test_etcd_datastore_lab() -> None:
    name = "tl4"
    ensure_gone(name)
    try:
        tabby("lab", "up", "--nodes", "2", "--datastore", "etcd", lab=name)
        state = require(name)
        assert state.datastore.startswith("etcds://127.0.0.1:")
        assert sorted(p.role for p in state.procs) == [
            "datastore relay", "etcd e0", "etcd e1", "etcd e2"]
        with LabPods.open(name) as driver:
            created = driver.apply_pods([pod("e1", node="node-1"), pod("e2", node="node-2")])
            assert created == ["created", "created"]
        probes = probe_json("--protocol", "tcp", lab=name)
        assert len(probes) == 4 and all(p["connected"] for p in probes)
    finally:
        last = load(name)
        if last is not None:
            tabby("lab", "down", lab=name)
            assert_torn_down(last)
