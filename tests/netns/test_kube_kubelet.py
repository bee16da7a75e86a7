"""The lab's kubelet stand-in against a real control plane.

A ControlPlane (etcd, kube-apiserver with Node,RBAC and NodeRestriction,
controller-manager, scheduler) on loopback; a 2-node lab ``kk`` on the SQLite
datastore; one stand-in per node (``python -m tabby.lab.kubelet``) with a
``system:node:<node>`` identity, started and ended by PID. Ordinary manifests
go in with kubectl: the real scheduler places the pods, the stand-ins wire them
through tabby-cni and report them Ready, the real EndpointSlice controller
lists them, and traffic flows between their namespaces.

The agents read SQLite while the pods live in the API server, so the agents do
not know the pods' labels: fine here (no policy); the Kubernetes datastore
joins the two.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tabby.errors import ConfigError
from tabby.ipam.report import check as ipam_check
from tabby.kube import binaries
from tabby.kube.controlplane import ControlPlane
from tabby.lab import builder, system
from tabby.lab.state import LabState, PodRecord, Proc, load, require
from tabby.lab.topology import plan
from tabby.model import IPPool, WorkloadEndpoint
from tabby.store import open_store
from tabby.store.client import Client
from tests.waiting import wait_for, wait_seconds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "kk"
NS = "kk-web"
NODES = ("node-1", "node-2")
READY_TIMEOUT = 90.0

MANIFESTS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: registry.k8s.io/pause:3.10
        ports: [{{containerPort: 8080, name: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


class Cluster:
    """The control plane, the lab and the stand-ins the test started (by PID)."""

    def __init__(self, cp: ControlPlane, lab: LabState, log_dir: Path) -> None:
        self.cp = cp
        self.lab = lab
        self.log_dir = log_dir
        self.kubectl_bin = binaries.program("kubectl")
        self.procs: dict[str, Proc] = {}

    def start(self, node: str) -> Proc:
        kubeconfig = self.cp.kubeconfig(f"node-{node}", f"system:node:{node}", ["system:nodes"])
        argv = [sys.executable, "-m", "tabby.lab.kubelet", "--lab", LAB, "--node", node,
                "--kubeconfig", str(kubeconfig)]
        proc = system.spawn_ready(argv, f"kubelet {node}", self.log(node), 60.0)
        self.procs[node] = proc
        return proc

    def stop(self, node: str) -> None:
        proc = self.procs.pop(node)
        assert system.stop([proc], grace=15.0) == [], f"{proc.role} ignored SIGTERM"

    def log(self, node: str) -> Path:
        return self.log_dir / f"kubelet-{node}.log"

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run([self.kubectl_bin, "--kubeconfig", str(self.cp.admin_kubeconfig),
                               *args], input=stdin, capture_output=True, text=True,
                              timeout=60, check=False)
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr}")
        return done.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-n", NS)["items"]
        return items

    def records(self) -> dict[str, PodRecord]:
        return {r.name: r for r in require(LAB).pods if r.namespace == NS}

    def available(self, replicas: int) -> bool:
        status = self.get("deployment", "web", "-n", NS).get("status", {})
        pods = self.pods()
        return (status.get("availableReplicas") == replicas
                and status.get("replicas") == replicas and len(pods) == replicas
                and not any(p["metadata"].get("deletionTimestamp") for p in pods))

    def client(self) -> Client:
        return Client(open_store(self.lab.datastore))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        binaries.bin_dir()
    except ConfigError as exc:
        pytest.skip(str(exc))
    if load(LAB) is not None:
        builder.down(LAB)
    base = tmp_path_factory.mktemp("kubelet")
    with ControlPlane(base / "cp", service_ranges=["198.18.128.0/20"]) as cp:
        state = builder.Lab(plan(LAB, nodes=2)).up()
        cluster = Cluster(cp, state, base)
        try:
            for node in NODES:
                cluster.start(node)
            yield cluster
        finally:
            for node in list(cluster.procs):
                cluster.stop(node)
            for node in NODES:
                print(f"--- {cluster.log(node)} (tail)\n{system.tail(cluster.log(node), 15)}")
            builder.down(LAB)
    assert load(LAB) is None
    assert [ns for ns in system.netns_list() if ns.startswith((f"{LAB}-", f"{LAB}_"))] == []


@pytest.fixture(scope="module")
def web(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "-f", "-", stdin=MANIFESTS)
    took = wait_seconds("the Deployment to be Available with 4 ready replicas",
                        lambda: cluster.available(4), READY_TIMEOUT)
    print(f"\nkubectl apply -> Deployment Available (4 replicas): {took:.1f}s")
    for pod in cluster.pods():
        created = _time(pod["metadata"]["creationTimestamp"])
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        print(f"{pod['metadata']['name']}: created -> Ready"
              f" {(_time(ready['lastTransitionTime']) - created).total_seconds():.0f}s")
    return cluster


def _time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")


def test_nodes_register_ready_with_their_lab_addresses(cluster: Cluster) -> None:
    topology = cluster.lab.topology
    for node in NODES:
        obj = cluster.get("node", node)
        assert obj["metadata"]["labels"]["kubernetes.io/hostname"] == node
        status = obj["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
        internal = [a["address"] for a in status["addresses"] if a["type"] == "InternalIP"]
        assert internal == [str(a.ip) for a in topology.node(node).addresses()]
        info = status["nodeInfo"]
        assert info["kubeletVersion"] == binaries.KUBERNETES_VERSION
        assert info["containerRuntimeVersion"] == "tabby-lab://"
        assert status["allocatable"]["pods"] == "110"
        lease = cluster.get("lease", node, "-n", "kube-node-lease")
        assert lease["spec"]["holderIdentity"] == node and lease["spec"]["renewTime"]
    # the node lifecycle controller lifts the not-ready taint once the node reports Ready
    wait_for("the nodes to be untainted", lambda: all(
        not cluster.get("node", n)["spec"].get("taints") for n in NODES), 60.0)


def test_deployment_pods_are_scheduled_wired_and_ready(web: Cluster) -> None:
    pods = web.pods()
    assert {p["spec"]["nodeName"] for p in pods} == set(NODES)  # the scheduler spread them
    records = web.records()
    assert set(records) == {p["metadata"]["name"] for p in pods}
    hosts = {n.name: str(n.addresses()[0].ip) for n in web.lab.topology.nodes}
    for pod in pods:
        record = records[pod["metadata"]["name"]]
        status = pod["status"]
        assert record.uid == pod["metadata"]["uid"] and record.node == pod["spec"]["nodeName"]
        assert [p["ip"] for p in status["podIPs"]] == [str(ip) for ip in record.ips]
        assert status["podIP"] == str(record.ips[0])
        assert status["hostIP"] == hosts[record.node]
        assert record.netns in system.netns_list()
        assert record.listener is not None and system.alive(record.listener)
        (container,) = status["containerStatuses"]
        assert container["ready"] and container["state"]["running"]["startedAt"]
        assert container["containerID"] == f"tabby-lab://{record.container_id}"


def test_endpointslice_lists_the_ready_pods(web: Cluster) -> None:
    want = {str(r.ips[0]) for r in web.records().values()}

    def ready_addresses() -> set[str]:
        slices = web.get("endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=web")
        return {a for s in slices["items"] for e in s.get("endpoints") or []
                if (e.get("conditions") or {}).get("ready") for a in e["addresses"]}

    wait_for("4 ready endpoints in the Service's EndpointSlice",
             lambda: ready_addresses() == want, 30.0)


def test_every_pod_reaches_every_other_on_8080(web: Cluster) -> None:
    done = subprocess.run([sys.executable, "-m", "tabby.cli.main", "--lab", LAB, "lab", "probe",
                           "-o", "json"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    probes = json.loads(done.stdout)["probes"]
    refs = {f"{NS}/{name}" for name in web.records()}
    assert {(p["from"], p["to"]) for p in probes} == {(a, b) for a in refs for b in refs
                                                      if a != b}
    assert {(p["port"], p["protocol"]) for p in probes} == {(8080, "tcp")}
    assert [p for p in probes if not p["connected"]] == []


def test_restarted_stand_in_adopts_its_pods_without_rewiring(web: Cluster) -> None:
    before = {name: r for name, r in web.records().items() if r.node == "node-1"}
    assert before
    web.stop("node-1")
    web.start("node-1")
    log = web.log("node-1")
    wait_for("the restarted stand-in to adopt its pods", lambda: all(
        f"{NS}/{name}: adopted" in log.read_text() for name in before), 30.0)
    after = web.records()
    for name, record in before.items():
        assert after[name] == record  # same container id, addresses, listener: no CNI ADD
        assert record.listener is not None and system.alive(record.listener)
    assert web.available(4)


def test_failed_sandbox_is_reported_and_retried(web: Cluster) -> None:
    client = web.client()
    names = [p.meta.name for p in client.list(IPPool)]

    def set_disabled(value: bool) -> None:
        for name in names:
            client.mutate(IPPool, name, "", lambda p: _disabled(p, value))

    set_disabled(True)
    try:
        web.kubectl("scale", "deployment", "web", "-n", NS, "--replicas", "5")

        def failures() -> list[dict[str, Any]]:
            events: list[dict[str, Any]] = web.get(
                "events", "-n", NS, "--field-selector", "reason=FailedCreatePodSandBox")["items"]
            return events

        wait_for("a FailedCreatePodSandBox event", lambda: bool(failures()), 30.0)
        event = failures()[0]
        assert "NoUsablePool" in event["message"] and event["type"] == "Warning"
        assert event["involvedObject"]["kind"] == "Pod"
        assert ipam_check(client) == []
    finally:
        set_disabled(False)
    wait_for("the retried pod to become ready", lambda: web.available(5), 90.0)
    client.store.close()


def _disabled(pool: IPPool, value: bool) -> IPPool:
    return dataclasses.replace(pool, spec=dataclasses.replace(pool.spec, disabled=value))


def test_force_deleted_pod_is_torn_down(web: Cluster) -> None:
    victim = web.records()[sorted(web.records())[0]]
    web.kubectl("delete", "pod", victim.name, "-n", NS, "--grace-period=0", "--force")
    wait_for("the force-deleted pod's namespace and record to go", lambda: (
        victim.netns not in system.netns_list() and victim.name not in web.records()), 30.0)
    assert victim.listener is not None and not system.alive(victim.listener)
    wait_for("the replacement to be ready", lambda: web.available(5), READY_TIMEOUT)


def test_scale_down_tears_the_pods_down(web: Cluster) -> None:
    old = web.records()
    web.kubectl("scale", "deployment", "web", "-n", NS, "--replicas", "1")
    took = wait_seconds("the Deployment to shrink to 1", lambda: web.available(1), READY_TIMEOUT)
    wait_for("4 pods' namespaces and records to go", lambda: len(web.records()) == 1, READY_TIMEOUT)
    print(f"\nscale 5 -> 1 done in {took:.1f}s")
    (kept,) = web.records().values()
    assert [p["metadata"]["name"] for p in web.pods()] == [kept.name]
    for name, record in old.items():
        if name != kept.name:
            assert record.netns not in system.netns_list()
            assert record.listener is not None and not system.alive(record.listener)
    client = web.client()
    try:
        assert ipam_check(client) == []
        endpoints = client.list(WorkloadEndpoint)
        assert [e.spec.pod for e in endpoints] == [kept.name]
    finally:
        client.store.close()
    done = subprocess.run([sys.executable, "-m", "tabby.cli.main", "--datastore",
                           web.lab.datastore, "ipam", "check"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_stand_ins_ride_out_an_api_server_restart(web: Cluster) -> None:
    web.cp.stop_apiserver()  # SIGKILL: the watches break mid-stream
    web.cp.start_apiserver()
    web.kubectl("scale", "deployment", "web", "-n", NS, "--replicas", "3")
    took = wait_seconds("new pods after the API server came back", lambda: web.available(3),
                        READY_TIMEOUT)
    print(f"\nAPI server restarted; scale 1 -> 3 Available {took:.1f}s later")
    assert all(system.alive(p) for p in web.procs.values())
    assert {r.name for r in web.records().values()} == {p["metadata"]["name"]
                                                          for p in web.pods()}


def test_host_network_pod_runs_with_the_node_addresses(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", "-", stdin="""
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: default}
spec:
  hostNetwork: true
  nodeName: node-2
  containers: [{name: main, image: registry.k8s.io/pause:3.10}]
""")

    def running() -> bool:
        status = cluster.get("pod", "hostnet", "-n", "default").get("status", {})
        return status.get("phase") == "Running"

    wait_for("the hostNetwork pod to run", running, 30.0)
    status = cluster.get("pod", "hostnet", "-n", "default")["status"]
    assert status["podIP"] == str(cluster.lab.topology.node("node-2").addresses()[0].ip)
    assert require(LAB).pod("default", "hostnet") is None  # no netns, no CNI, no listener
    cluster.kubectl("delete", "pod", "hostnet", "-n", "default", "--wait=false")
    wait_for("the hostNetwork pod to go", lambda: "hostnet" not in cluster.kubectl(
        "get", "pods", "-n", "default", "-o", "name"), 30.0)
