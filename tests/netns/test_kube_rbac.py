"""tabby's manifests against a real API server, and the least-privilege roles in use.

One one-node Kubernetes-mode lab (``trb1``): its agent and controllers run from the
manifest's DaemonSet and Deployment with ServiceAccount tokens (``tabby.lab.builder``).

- ``kubectl apply --dry-run=server`` of manifests/tabby.yaml is accepted;
- ``kubectl auth can-i --list --as=system:serviceaccount:tabby-system:tabby-node``, less
  what any ServiceAccount may do, is exactly the rules ``tabby.kube.cluster`` derives
  from the code (cluster-wide and in tabby-system), and the same for tabby-controllers;
- spot checks of what must be refused: Secrets outside tabby-system, writes to Pods and
  core Nodes, ConfigMaps, escalate/bind/impersonate, ``*``;
- the agent authenticates as tabby-node with a token (no client certificate), wires a
  pod applied with kubectl, and nothing in its log or the controllers' was Forbidden.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tabby.errors import Forbidden
from tabby.kube import cluster
from tabby.kube.binaries import program
from tabby.lab.state import LabState, require
from tabby.store.kubernetes import KubernetesStore
from tests.netns.kube_lab import KUBE_MISSING, Kubectl, kube_lab
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(bool(KUBE_MISSING), reason=KUBE_MISSING),
]

LAB = "trb1"
SHIPPED = Path(__file__).resolve().parents[2] / "manifests" / "tabby.yaml"
NODE_SA = cluster.account_user(cluster.NODE_ACCOUNT)
CONTROLLERS_SA = cluster.account_user(cluster.CONTROLLERS_ACCOUNT)
NOBODY = cluster.account_user("trb-nobody")  # no binding: what every ServiceAccount may do
_ROW = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[LabState, Kubectl]]:
    with kube_lab(LAB, "--nodes", "1") as lab:
        yield lab


def can_i_list(kubectl: Kubectl, user: str, namespace: str) -> dict[str, set[str]]:
    """``kubectl auth can-i --list`` as ``user`` in ``namespace``: resource -> verbs
    (non-resource URLs left out)."""
    out = kubectl.run("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout
    found: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:
        m = _ROW.match(line)
        assert m is not None, f"unexpected line of kubectl auth can-i --list: {line!r}"
        resource, urls, names, verbs = m.groups()
        assert not names, f"a rule limited to names: {line!r}"
        if resource and not urls:
            found.setdefault(resource, set()).update(verbs.split())
    return found


def granted(kubectl: Kubectl, user: str, namespace: str) -> dict[str, set[str]]:
    """What ``user`` may do in ``namespace`` beyond what any ServiceAccount may."""
    everyone = can_i_list(kubectl, NOBODY, namespace)
    return {resource: extra for resource, verbs in can_i_list(kubectl, user, namespace).items()
            if (extra := verbs - everyone.get(resource, set()))}


def expected(rules: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                name = f"{resource}.{group}" if group else resource
                out.setdefault(name, set()).update(rule["verbs"])
    return out


def can_i(kubectl: Kubectl, user: str, verb: str, resource: str, *where: str) -> bool:
    done = kubectl.run("auth", "can-i", verb, resource, f"--as={user}", *where, check=False)
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), f"can-i {verb} {resource}: {done.stdout}{done.stderr}"
    return answer == "yes"


# -- the manifests at the API server ----------------------------------------------------------

def test_the_api_server_accepts_the_manifests(lab: tuple[LabState, Kubectl]) -> None:
    _, kubectl = lab
    out = kubectl.run("apply", "--dry-run=server", "-f", str(SHIPPED)).stdout
    for what in ("daemonset.apps/tabby-node", "deployment.apps/tabby-controllers",
                 "configmap/tabby-config", "clusterrole.rbac.authorization.k8s.io/tabby-node",
                 "role.rbac.authorization.k8s.io/tabby-node-secrets",
                 "ippool.tabby.dev/default-ipv4-ippool"):
        assert re.search(rf"^{re.escape(what)} \w+ \(server dry run\)$", out, re.M), out


# -- exactly the rules, nothing beyond --------------------------------------------------------

def test_the_node_account_may_do_exactly_what_the_code_uses(lab: tuple[LabState, Kubectl]
                                                            ) -> None:
    _, kubectl = lab
    cluster_rules, by_namespace = cluster.node_rules()
    assert granted(kubectl, NODE_SA, "default") == expected(cluster_rules)
    assert granted(kubectl, NODE_SA, cluster.NAMESPACE) == expected(
        cluster_rules + by_namespace[cluster.NAMESPACE])


def test_the_controllers_account_may_do_exactly_what_they_use(lab: tuple[LabState, Kubectl]
                                                              ) -> None:
    _, kubectl = lab
    for namespace in ("default", cluster.NAMESPACE):
        assert granted(kubectl, CONTROLLERS_SA, namespace) == expected(
            cluster.controller_rules())


@pytest.mark.parametrize(("verb", "resource", "where"), [
    ("get", "secrets", ("-n", "default")),
    ("list", "secrets", ("-n", "kube-system")),
    ("list", "secrets", ("--all-namespaces",)),
    ("get", "secrets", ("-n", "tabby-system")),  # only list+watch: the cache reads them so
    ("create", "pods", ("-n", "default")),
    ("update", "pods", ("-n", "default")),
    ("patch", "pods", ("-n", "default")),
    ("delete", "pods", ("-n", "default")),
    ("create", "pods/exec", ("-n", "default")),
    ("update", "nodes", ()),
    ("patch", "nodes", ()),
    ("delete", "nodes", ()),
    ("get", "configmaps", ("-n", "tabby-system")),
    ("list", "configmaps", ("-n", "kube-system")),
    ("create", "serviceaccounts/token", ("-n", "tabby-system")),
    ("escalate", "clusterroles", ()),
    ("bind", "clusterroles", ()),
    ("impersonate", "users", ()),
    ("*", "*", ("--all-namespaces",)),
    ("patch", "workloadendpoints.tabby.dev", ("-n", "default")),
    ("delete", "ippools.tabby.dev", ()),
])
def test_the_node_account_is_refused(lab: tuple[LabState, Kubectl], verb: str, resource: str,
                                     where: tuple[str, ...]) -> None:
    assert not can_i(lab[1], NODE_SA, verb, resource, *where)


@pytest.mark.parametrize(("verb", "resource", "where"), [
    ("list", "secrets", ("-n", "tabby-system")),
    ("watch", "secrets", ("-n", "tabby-system")),
    ("create", "workloadendpoints.tabby.dev", ("-n", "default")),
    ("update", "ipamblocks.tabby.dev", ()),
    ("get", "pods", ("-n", "default")),
])
def test_the_node_account_may_do_what_it_uses(lab: tuple[LabState, Kubectl], verb: str,
                                              resource: str, where: tuple[str, ...]) -> None:
    assert can_i(lab[1], NODE_SA, verb, resource, *where)


# -- the agent under that role --------------------------------------------------------------

def agent_kubeconfig(state: LabState) -> Path:
    node = state.nodes[0]
    assert node.agent is not None
    env = dict(e.split("=", 1) for e in Path(f"/proc/{node.agent.pid}/environ").read_bytes()
               .decode().split("\0") if "=" in e)
    url = env["TABBY_DATASTORE"]
    assert url.startswith("kubernetes:///"), url
    return Path(url.removeprefix("kubernetes://"))


def test_the_agent_authenticates_as_the_service_account(lab: tuple[LabState, Kubectl]) -> None:
    state, _ = lab
    path = agent_kubeconfig(state)
    user = yaml.safe_load(path.read_text())["users"][0]["user"]
    assert set(user) == {"token"}, "no client certificate, no admin: a token only"
    whoami = json.loads(subprocess.run(
        [program("kubectl"), "--kubeconfig", str(path), "auth", "whoami", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    assert whoami["status"]["userInfo"]["username"] == NODE_SA
    with KubernetesStore(str(path)) as store:
        store.list("secrets")  # kept to tabby-system: allowed
        with pytest.raises(Forbidden, match="secrets"):
            store.request("GET", "/api/v1/secrets")


def test_the_agent_wires_a_pod_and_nothing_was_forbidden(lab: tuple[LabState, Kubectl]
                                                         ) -> None:
    state, kubectl = lab
    kubectl.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "rbac-web", "namespace": "default"},
                   "spec": {"nodeName": "node-1", "containers": [
                       {"name": "web", "image": "busybox",
                        "ports": [{"containerPort": 8080}]}]}})

    def pod_ip() -> str:
        pod = kubectl.get_json("-n", "default", "pod", "rbac-web")
        return str(pod.get("status", {}).get("podIP") or "")
    wait_for("pod rbac-web Running with an address", pod_ip, 60)
    endpoints = kubectl.get_json("-n", "default", "workloadendpoints.tabby.dev")["items"]
    assert [e["spec"]["pod"] for e in endpoints] == ["rbac-web"]
    assert [p.ip(4) for p in require(LAB).pods if p.name == "rbac-web"] == [
        ipaddress.ip_address(pod_ip())]
    kubectl.delete({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "rbac-web", "namespace": "default"}})
    wait_for("the endpoint to go", lambda: not kubectl.get_json(
        "-n", "default", "workloadendpoints.tabby.dev")["items"], 60)
    logs = {"agent": state.nodes[0].agent_log, "controllers": state.dir / "controllers.log"}
    for role, log in logs.items():
        text = log.read_text(errors="replace")
        assert "forbidden" not in text.lower(), f"{role}: {log}"


def test_applying_the_manifests_with_kubectl_keeps_the_node_networked(
        lab: tuple[LabState, Kubectl]) -> None:
    """The whole file applied for real, as a user installs tabby: the DaemonSet and the
    Deployment exist and get their pods (the kubelet stand-in runs no containers: the
    agent and controllers are the lab's processes, started from these definitions),
    the pool is tabby's, and a workload pod applied next is still wired."""
    _, kubectl = lab
    kubectl.run("apply", "-f", str(SHIPPED))
    daemonset = kubectl.get_json("-n", "tabby-system", "daemonset", "tabby-node")
    assert daemonset["spec"]["template"]["spec"]["hostNetwork"] is True

    def node_pods() -> list[str]:
        pods = kubectl.get_json("-n", "tabby-system", "pods", "-l", "k8s-app=tabby-node")
        return [p["spec"].get("nodeName", "") for p in pods["items"]
                if p.get("status", {}).get("phase") == "Running"]
    wait_for("the DaemonSet's pod on node-1", lambda: node_pods() == ["node-1"], 60)
    kubectl.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "after-install", "namespace": "default"},
                   "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                                                                   "image": "busybox"}]}})

    def pod_ip() -> str:
        pod = kubectl.get_json("-n", "default", "pod", "after-install")
        return str(pod.get("status", {}).get("podIP") or "")
    wait_for("the pod applied after the install to get an address", pod_ip, 60)
    kubectl.delete({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "after-install", "namespace": "default"}})
