"""A Kubernetes-mode lab used as a user would: kubectl against the real API server.

One three-node dual-stack ``--bgp tor`` lab (``kc1``) whose datastore is a real
control plane. A Namespace, a Deployment (three replicas placed by the real
scheduler, one per node), and ClusterIP, NodePort and LoadBalancer Services go
in with ``kubectl apply``; then real packets for both families: the pod matrix
(``tabby lab probe``), a pod to the ClusterIP (``tabby lab exec ... busybox nc``
and the lab's prober), the NodePort from the ToR, the LoadBalancer address
(allocated by tabby's controllers, advertised over BGP) from the ``ext``
namespace through the FRR ToR. Then the CRD schema at the API server, scaling
down, and ``kubectl delete namespace`` taking the pods' wiring with it. The
tests run in file order: the last two change the workload.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import yaml

from tabby.lab import system
from tabby.lab.services import CLUSTER_RANGES, LB_POOLS
from tabby.lab.state import LabState, PodRecord, require
from tests.netns.kube_lab import KUBE_MISSING, Kubectl, kube_lab, tabby
from tests.netns.test_bgp_lab import tor_prefixes
from tests.netns.test_services import hits, settle
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(bool(KUBE_MISSING), reason=KUBE_MISSING),
]

LAB = "kc1"
NS = "shop"
REPLICAS = 3
NODES = ("node-1", "node-2", "node-3")
FAMILIES = {"ipv4": 4, "ipv6": 6}

APP = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: {REPLICAS}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
          labelSelector: {{matchLabels: {{app: web}}}}}}
      containers:
      - name: main
        image: busybox
        ports:
        - {{name: http, containerPort: 8080}}
        - {{name: dns, containerPort: 5353, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: dns}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-np, namespace: {NS}}}
spec:
  type: NodePort
  ipFamilyPolicy: PreferDualStack
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-lb, namespace: {NS}}}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: dns}}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LabState, Kubectl]]:
    with kube_lab(LAB, "--nodes", "3", "--stack", "dual", "--bgp", "tor") as lab:
        yield lab


@pytest.fixture(scope="module")
def kubectl(cluster: tuple[LabState, Kubectl]) -> Kubectl:
    return cluster[1]


@pytest.fixture(scope="module")
def app(kubectl: Kubectl) -> Kubectl:
    """The workload, applied with kubectl and Available."""
    out = kubectl.run("apply", "-f", "-", stdin=APP).stdout
    assert "deployment.apps/web created" in out and "service/web-lb created" in out
    kubectl.run("-n", NS, "wait", "deployment/web", "--for=condition=Available",
                "--timeout=90s", timeout=120)
    wait_for("the lab to record every replica", lambda: len(shop_pods()) == REPLICAS, 30)
    wait_for("a LoadBalancer address of each family",
             lambda: len(lb_ingress(kubectl)) == 2, 30)
    return kubectl


def shop_pods() -> list[PodRecord]:
    return sorted((p for p in require(LAB).pods if p.namespace == NS), key=lambda p: p.name)


def web_names() -> set[str]:
    return {p.name for p in shop_pods()}


def service(kubectl: Kubectl, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = kubectl.get_json("-n", NS, "service", name)
    return doc


def lb_ingress(kubectl: Kubectl) -> dict[int, str]:
    ingress = service(kubectl, "web-lb").get("status", {}).get("loadBalancer", {})
    return {ipaddress.ip_address(i["ip"]).version: i["ip"] for i in ingress.get("ingress", [])}


def cluster_ip(kubectl: Kubectl, name: str, version: int) -> str:
    ips = service(kubectl, name)["spec"]["clusterIPs"]
    return str(next(ip for ip in ips if ipaddress.ip_address(ip).version == version))


# -- the lab as kubectl sees it ---------------------------------------------------------

def test_status_names_the_kubeconfig_and_the_api_server(cluster: tuple[LabState, Kubectl]
                                                       ) -> None:
    state, kubectl = cluster
    info = json.loads(tabby(LAB, "lab", "status", "-o", "json").stdout)
    assert info["datastore"] == f"kubernetes://{info['kubeconfig']}" == state.datastore
    assert info["bgp"] == "tor" and info["families"] == ["ipv4", "ipv6"]
    roles = {p["role"] for p in info["processes"]}
    assert {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "controllers",
            *(f"kubelet {n}" for n in NODES)} <= roles
    version = json.loads(kubectl.run("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")


def test_the_lab_nodes_are_ready(cluster: tuple[LabState, Kubectl]) -> None:
    state, kubectl = cluster

    def ready() -> dict[str, bool]:
        items = kubectl.get_json("nodes")["items"]
        return {n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in n["status"]["conditions"]) for n in items}
    wait_for("three Ready nodes", lambda: ready() == dict.fromkeys(NODES, True), 30)
    for node in kubectl.get_json("nodes")["items"]:
        addresses = {a["address"] for a in node["status"]["addresses"]
                     if a["type"] == "InternalIP"}
        plan = state.topology.node(node["metadata"]["name"])
        assert addresses == {str(a.ip) for a in plan.addresses()}
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == node["metadata"]["name"]


def test_the_scheduler_spreads_the_replicas(app: Kubectl) -> None:
    items = app.get_json("-n", NS, "pods", "-l", "app=web")["items"]
    assert len(items) == REPLICAS
    assert sorted(p["spec"]["nodeName"] for p in items) == list(NODES)
    records = {p.name: p for p in shop_pods()}
    for item in items:
        assert item["status"]["phase"] == "Running"
        record = records[item["metadata"]["name"]]
        assert record.node == item["spec"]["nodeName"]
        assert [i["ip"] for i in item["status"]["podIPs"]] == [str(ip) for ip in record.ips]
        assert [ipaddress.ip_address(i["ip"]).version for i in item["status"]["podIPs"]] == [4, 6]
        assert record.netns in system.netns_list()
    weps = json.loads(tabby(LAB, "get", "workloadendpoints", "-n", NS, "-o", "json").stdout)
    assert sorted(w["spec"]["pod"] for w in weps["items"]) == sorted(records)


# -- traffic ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_pods_reach_each_other(app: Kubectl, family: str) -> None:
    refs = [f"{NS}/{p.name}" for p in shop_pods()]
    want = {(s, t, proto, port) for s in refs for t in refs if s != t
            for proto, port in (("tcp", 8080), ("udp", 5353))}

    def probe() -> list[dict[str, object]]:
        probes: list[dict[str, object]] = json.loads(tabby(
            LAB, "lab", "probe", "-o", "json", "--family", family).stdout)["probes"]
        assert {(p["from"], p["to"], p["protocol"], p["port"]) for p in probes} == want
        assert {p["family"] for p in probes} == {family}
        return [p for p in probes if not p["connected"]]

    # A pod is Ready once wired; the agents program it within a pass or two after
    # (until then its traffic is dropped, fail closed): a single UDP datagram sent
    # in between is lost where a TCP SYN is retried, so poll for the full matrix.
    wait_for("every pod reaching every other", lambda: not probe(), 20)


@pytest.mark.parametrize("version", [4, 6])
def test_a_pod_reaches_the_cluster_ip(app: Kubectl, version: int) -> None:
    ip = cluster_ip(app, "web", version)
    assert ipaddress.ip_address(ip) in CLUSTER_RANGES[version]
    client = shop_pods()[0]
    done = tabby(LAB, "lab", "exec", f"{NS}/{client.name}", "--", "busybox", "nc", "-w", "3",
                 ip, "80", stdin="")
    assert done.stdout.strip() in web_names()
    names = web_names()
    settle(f"TCP answers from every replica at {ip}", lambda: hits(client.netns, ip, 80), names)
    settle(f"UDP answers from every replica at {ip}",
           lambda: hits(client.netns, ip, 53, "udp"), names)


@pytest.mark.parametrize("version", [4, 6])
def test_the_node_port_answers_from_the_tor(cluster: tuple[LabState, Kubectl], app: Kubectl,
                                            version: int) -> None:
    state = cluster[0]
    node_port = service(app, "web-np")["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    names = web_names()
    for node in state.topology.nodes:
        address = str(next(a.ip for a in node.addresses() if a.version == version))
        settle(f"{node.name} [{address}]:{node_port} from the ToR",
               partial(hits, state.topology.tor_netns, address, node_port), names)


@pytest.mark.parametrize("version", [4, 6])
def test_the_load_balancer_ip_answers_from_outside(cluster: tuple[LabState, Kubectl],
                                                   app: Kubectl, version: int) -> None:
    """The controllers gave the Service an address from the LoadBalancer pool; the nodes
    advertise the pool to the ToR; ext reaches every replica through it."""
    state = cluster[0]
    address = lb_ingress(app)[version]
    pool = LB_POOLS[version][1]
    assert ipaddress.ip_address(address) in pool
    wait_for(f"the ToR to learn {pool} over BGP",
             lambda: str(pool) in tor_prefixes(state, version), 30)
    ext = f"{LAB}-ext"
    names = web_names()
    settle(f"TCP answers from every replica at {address} from ext",
           lambda: hits(ext, address, 80, count=30), names, timeout=30)
    settle(f"UDP answers from every replica at {address} from ext",
           lambda: hits(ext, address, 53, "udp", count=30), names, timeout=30)


@pytest.mark.parametrize("node", NODES)
def test_bgp_sessions_are_established(cluster: tuple[LabState, Kubectl], node: str) -> None:
    def established() -> bool:
        status = json.loads(tabby(LAB, "node", "status", "--node", node, "-o", "json").stdout)
        peers = status["peers"]
        return (status["bird"]["running"] and {p["family"] for p in peers} == {"ipv4", "ipv6"}
                and all(p["state"] == "up" and p["info"] == "Established" for p in peers))
    wait_for(f"{node}'s sessions to the ToR to be Established", established, 30)


# -- the CRD schema at the API server -------------------------------------------------------

BAD_POOL = {"apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "bad-pool"},
            "spec": {"cidr": "10.99.0.0/16", "blockSize": "x"}}
BAD_POLICY = {"apiVersion": "tabby.dev/v1", "kind": "GlobalNetworkPolicy",
              "metadata": {"name": "bad-gnp"},
              "spec": {"selector": "all()", "ingress": [{"action": "Maybe"}]}}
UNKNOWN_FIELD = {"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                 "metadata": {"name": "odd-pool"},
                 "spec": {"cidr": "10.98.0.0/16", "blockSize": 26, "colour": "blue"}}


@pytest.mark.parametrize(("doc", "field", "words"), [
    (BAD_POOL, "spec.blockSize", "integer"),
    (BAD_POLICY, "spec.ingress[0].action", "Maybe"),
    (UNKNOWN_FIELD, "spec.colour", "unknown field"),
], ids=["blockSize", "action", "unknown-field"])
def test_the_api_server_rejects_what_the_schema_does_not_allow(
        kubectl: Kubectl, doc: dict[str, Any], field: str, words: str) -> None:
    done = kubectl.apply(doc, check=False)
    assert done.returncode == 1, done.stdout
    assert field in done.stderr and words in done.stderr, done.stderr
    plural = {"IPPool": "ippools", "GlobalNetworkPolicy": "globalnetworkpolicies"}[doc["kind"]]
    missing = kubectl.run("get", f"{plural}.tabby.dev", doc["metadata"]["name"], check=False)
    assert missing.returncode == 1 and "NotFound" in missing.stderr


@pytest.mark.parametrize(("doc", "field"), [
    (BAD_POOL, "spec.blockSize"), (BAD_POLICY, "spec.ingress[0].action"),
    (UNKNOWN_FIELD, "spec.colour")], ids=["blockSize", "action", "unknown-field"])
def test_tabby_apply_names_the_field_too(kubectl: Kubectl, doc: dict[str, Any],
                                         field: str) -> None:
    done = tabby(LAB, "apply", "-f", "-", stdin=yaml.safe_dump(doc), check=False)
    assert done.returncode == 1 and field in done.stderr, done.stderr
    assert done.stdout == ""


def test_a_tabby_resource_applied_with_kubectl_is_what_tabby_reads(kubectl: Kubectl) -> None:
    pool = {"apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "spare"},
            "spec": {"cidr": "10.97.0.0/16", "blockSize": 28, "disabled": True,
                     "nodeSelector": "all()"}}
    kubectl.apply(pool)
    try:
        got = json.loads(tabby(LAB, "get", "ippool", "spare", "-o", "json").stdout)
        assert got["spec"]["cidr"] == "10.97.0.0/16" and got["spec"]["blockSize"] == 28
        assert got["spec"]["disabled"] is True
    finally:
        kubectl.delete(pool)


# -- the workload changes -------------------------------------------------------------------

def endpoint_addresses(kubectl: Kubectl, service_name: str) -> set[str]:
    slices = kubectl.get_json("-n", NS, "endpointslices", "-l",
                              f"kubernetes.io/service-name={service_name}")["items"]
    return {a for s in slices for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready") for a in e["addresses"]}


def routes_to(netns: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return system.run(["ip", f"-{address.version}", "-n", netns, "route", "show",
                       str(ipaddress.ip_network(address))]).strip()


def handles() -> set[str]:
    out = json.loads(tabby(LAB, "get", "ipamhandles", "-o", "json").stdout)
    return {h["metadata"]["name"] for h in out["items"]}


def assert_ipam_clean() -> None:
    report = json.loads(tabby(LAB, "ipam", "check", "-o", "json").stdout)
    assert report == {"ok": True, "problems": []}


def assert_unwired(state: LabState, gone: list[PodRecord]) -> None:
    """Each pod's sandbox, listener, node routes, endpoint and addresses are gone."""
    netns = set(system.netns_list())
    owned = handles()
    weps = json.loads(tabby(LAB, "get", "workloadendpoints", "-A", "-o", "json").stdout)
    wep_pods = {(w["metadata"]["namespace"], w["spec"]["pod"]) for w in weps["items"]}
    for p in gone:
        assert p.netns not in netns
        assert p.listener is None or not system.alive(p.listener)
        node_netns = state.node(p.node).netns
        assert [r for ip in p.ips if (r := routes_to(node_netns, ip))] == []
        assert f"k8s-pod-network.{p.container_id}.eth0" not in owned
        assert (p.namespace, p.name) not in wep_pods


def test_scaling_down_takes_endpoints_routes_and_addresses_along(
        cluster: tuple[LabState, Kubectl], app: Kubectl) -> None:
    state = cluster[0]
    before = shop_pods()
    for p in before:  # wired: a host route to each address on its node
        assert all(" dev tab" in routes_to(state.node(p.node).netns, ip) for ip in p.ips)
    app.run("-n", NS, "scale", "deployment/web", "--replicas=1")
    wait_for("one replica left in the lab", lambda: len(shop_pods()) == 1, 60)
    wait_for("one web pod left in the API",
             lambda: len(app.get_json("-n", NS, "pods", "-l", "app=web")["items"]) == 1, 60)
    (survivor,) = shop_pods()
    gone = [p for p in before if p.name != survivor.name]
    wait_for("the slices to hold the survivor only", lambda: all(
        endpoint_addresses(app, s) == {str(ip) for ip in survivor.ips}
        for s in ("web", "web-np", "web-lb")), 30)
    assert_unwired(state, gone)
    assert_ipam_clean()
    ext = f"{LAB}-ext"
    for version, address in lb_ingress(app).items():
        settle(f"IPv{version} LoadBalancer answers from {survivor.name} only",
               partial(hits, ext, address, 80, count=20), {survivor.name}, timeout=30)
    node_port = service(app, "web-np")["spec"]["ports"][0]["nodePort"]
    for node in state.topology.nodes:
        address = str(node.addresses()[0].ip)
        settle(f"{node.name}'s NodePort answers from {survivor.name} only",
               partial(hits, state.topology.tor_netns, address, node_port, count=10),
               {survivor.name})


def test_deleting_the_namespace_unwires_its_pods(cluster: tuple[LabState, Kubectl],
                                                  app: Kubectl) -> None:
    state = cluster[0]
    before = shop_pods()
    assert before
    app.run("delete", "namespace", NS, "--timeout=120s", timeout=150)
    assert app.run("get", "namespace", NS, check=False).returncode == 1
    wait_for("the lab to forget the namespace's pods", lambda: shop_pods() == [], 30)
    assert_unwired(state, before)
    assert_ipam_clean()
    weps = json.loads(tabby(LAB, "get", "workloadendpoints", "-n", NS, "-o", "json").stdout)
    assert weps["items"] == []
    assert [n for n in system.netns_list() if n.startswith(f"{LAB}_{NS}_")] == []
