"""Kubernetes Nodes' labels reach tabby's Nodes, and with them a ClusterNetworkPolicy's
``nodes`` peer (a Kubernetes-mode lab, ``fuk``).

The lab seeds each tabby Node with ``kubernetes.io/hostname`` only; the kubelet stand-in
registers the core Node with ``kubernetes.io/os: linux`` and friends. The node controller
(``tabby controllers``, under its own ServiceAccount's rules) copies them over, so a CNP
denying egress to ``nodes: {matchLabels: {kubernetes.io/os: linux}}`` stops a pod's
connection to a listener on another node's address (real packets), and ``tabby policy
explain`` names the rule. A label added to the core Node with kubectl follows too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tabby.lab import listener, system
from tabby.lab.state import require
from tests.netns.kube_lab import KUBE_MISSING, Kubectl, kube_lab, probe_addresses, tabby

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
              pytest.mark.skipif(bool(KUBE_MISSING), reason=KUBE_MISSING)]

LAB = "fuk"
PORT = 8099
NS = "fuk"
DENY_LINUX_NODES = {
    "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
    "metadata": {"name": "no-linux-nodes"},
    "spec": {"tier": "Admin", "priority": 10,
             "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": NS}}},
             "egress": [{"name": "linux-nodes", "action": "Deny",
                         "to": [{"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}],
                         "protocols": [{"tcp": {"destinationPort": {"number": PORT}}}]}]}}
POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "client", "namespace": NS},
       "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]}}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def tabby_node(name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(tabby(LAB, "get", "node", name, "-o", "json").stdout)
    return out


def node_label(name: str, key: str) -> str | None:
    labels = tabby_node(name)["metadata"].get("labels", {})
    return None if key not in labels else str(labels[key])


@pytest.fixture(scope="module")
def lab() -> Iterator[Kubectl]:
    with kube_lab(LAB, "--nodes", "2", "--stack", "ipv4") as (_, kubectl):
        yield kubectl


@pytest.fixture
def node_listener() -> Iterator[str]:
    """A listener on node-2 itself (its namespace), answering ``node-2``; its address."""
    state = require(LAB)
    proc = subprocess.Popen(system.in_netns(state.node("node-2").netns, [
        sys.executable, "-I", "-S", listener.__file__, "--name", "node-2", "--port",
        str(PORT)]), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        address = tabby_node("node-2")["spec"]["bgp"]["ipv4Address"].split("/")[0]
        yield str(address)
    finally:
        proc.terminate()  # the one process this fixture started, by its PID
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_kubernetes_node_labels_select_nodes_for_cluster_network_policy(
        lab: Kubectl, node_listener: str) -> None:
    wait_for("the Kubernetes labels on the tabby Nodes", lambda: all(
        node_label(name, "kubernetes.io/os") == "linux" for name in ("node-1", "node-2")))
    lab.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}, POD)
    lab.run("-n", NS, "wait", "pod/client", "--for=condition=Ready", "--timeout=60s",
            timeout=90)
    pod = wait_for("the lab to record the pod", lambda: require(LAB).pod(NS, "client"))
    target = [(node_listener, PORT, "tcp", "node-2")]
    wait_for("the pod to reach node-2's listener", lambda: probe_addresses(pod.netns, target)[0])

    lab.apply(DENY_LINUX_NODES)
    wait_for("the nodes peer to deny", lambda: not probe_addresses(pod.netns, target)[0])
    explained = json.loads(tabby(LAB, "policy", "explain", "--from", f"{NS}/client", "--to",
                                 node_listener, "--port", str(PORT), "-o", "json").stdout)
    assert explained["verdict"] == "deny"
    assert explained["egress"]["policy"]["name"] == "no-linux-nodes", explained["egress"]
    assert explained["egress"]["reason"] == "rule", explained["egress"]

    # A label set on the core Node with kubectl follows; removed, it goes.
    lab.run("label", "node", "node-2", "tabby.dev/test-rack=r2")
    wait_for("the new label on tabby's node-2",
             lambda: node_label("node-2", "tabby.dev/test-rack") == "r2")
    lab.run("label", "node", "node-2", "tabby.dev/test-rack-")
    wait_for("the removed label gone from tabby's node-2",
             lambda: node_label("node-2", "tabby.dev/test-rack") is None)
    lab.delete(DENY_LINUX_NODES)
    wait_for("the pod to reach node-2 again", lambda: probe_addresses(pod.netns, target)[0])
