"""A Kubernetes Node deleted takes its tabby side with it: on a real kube-apiserver (v1.37)
with tabby's CRDs.

- The node controller, running under exactly ``nodecleanup.RBAC_RULES`` (a user of
  its own, a ClusterRole of those rules and nothing else), sees ``kubectl delete node``
  and takes the node's WorkloadEndpoints, its pods' and tunnel addresses (wherever
  the block), its block affinities (its emptied block deleted, the one still holding
  another node's pod kept without affinity) and its tabby Node; the other node keeps
  everything.
- ``tabby controllers`` collects, as it starts, what nodes deleted while it was down
  left behind (a tabby Node and an affinity of a node Kubernetes no longer has).
- The core Node reads back as a ``KubeNode`` with its InternalIPs (what
  ``kubernetes-internal-ip`` autodetection uses).

Names start with ``tnd``; the control plane is this module's own.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.agent.autodetect import node_internal_ips
from tabby.errors import ConfigError
from tabby.ipam import IPAM
from tabby.kube import binaries, crds
from tabby.kube.controlplane import ControlPlane
from tabby.kube.nodecleanup import RBAC_RULES, NodeCleanupController, serve_core_nodes
from tabby.lab.builder import tabby_command
from tabby.marks import tunnel_handle
from tabby.model import BlockAffinity, IPAMBlock, IPPool, Node, WorkloadEndpoint, parse_manifest
from tabby.store import open_store
from tabby.store.client import Client
from tests.kube import apply_yaml, kubectl, running_control_plane
from tests.waiting import wait_for

try:
    binaries.bin_dir()
except ConfigError as e:
    pytest.skip(f"Kubernetes programs not built: {e}", allow_module_level=True)
if shutil.which("etcd") is None:
    pytest.skip("needs the etcd binary (apt-get install etcd-server)", allow_module_level=True)

pytestmark = pytest.mark.slow  # a control plane of its own: ~15 s to start
MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "crds.yaml"
USER = "tnd:node-cleanup"
DEADLINE = 30.0


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("tnd-k8s")) as cp:
        kubectl(cp, "apply", "--server-side", "-f", str(MANIFEST))
        kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
                *(f"crd/{d['metadata']['name']}" for d in crds.crds()))
        apply_yaml(cp, [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "tnd-node-cleanup"}, "rules": RBAC_RULES},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "tnd-node-cleanup"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "tnd-node-cleanup"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                           "name": USER}]}])
        with open_store(f"kubernetes://{cp.admin_kubeconfig}") as store:
            Client(store).apply(IPPool.from_manifest({
                "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "tnd-v4"},
                "spec": {"cidr": "198.19.0.0/16", "blockSize": 30}}))
        yield cp


@pytest.fixture
def admin(cp: ControlPlane) -> Iterator[Client]:
    with open_store(f"kubernetes://{cp.admin_kubeconfig}") as store:
        serve_core_nodes(store)
        yield Client(store)


def kube_node(cp: ControlPlane, name: str, internal: str) -> None:
    apply_yaml(cp, [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}])
    kubectl(cp, "patch", "node", name, "--subresource=status", "--type=merge", "-p",
            f'{{"status": {{"addresses": [{{"type": "InternalIP", "address": "{internal}"}},'
            f' {{"type": "Hostname", "address": "{name}"}}]}}}}')


def tabby_node(client: Client, name: str) -> None:
    client.apply(parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                                 "metadata": {"name": name}}))


def pod_on(client: Client, node: str, pod: str, *, block_of: str | None = None) -> str:
    """An address for ``pod`` on ``node`` (from ``block_of``'s block if given: borrowed)
    and its endpoint; returns the address."""
    handle = f"tnd-net.{pod}.eth0"
    assigned = IPAM(client).assign(handle, block_of or node, num_v4=1, num_v6=0,
                                   attrs={"node": node, "pod": pod, "namespace": "default"})
    address = assigned.addresses[0]
    client.apply(WorkloadEndpoint.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{node}-k8s-{pod}-eth0", "namespace": "default"},
        "spec": {"node": node, "pod": pod, "interfaceName": "tab000000000001",
                 "ipNetworks": [f"{address}/32"], "containerID": pod}}))
    return str(address)


def tabby_side(client: Client, node: str) -> dict[str, Any]:
    return {"node": client.try_get(Node, node) is not None,
            "endpoints": sorted(w.meta.name for w in client.list(WorkloadEndpoint)
                                if w.spec.node == node),
            "affinities": sorted(str(a.spec.cidr) for a in client.list(BlockAffinity)
                                 if a.spec.node == node)}


def test_the_core_node_reads_back_with_its_internal_ips(cp: ControlPlane,
                                                         admin: Client) -> None:
    kube_node(cp, "tnd-read", "198.18.0.31")
    assert node_internal_ips(admin, "tnd-read") == (ipaddress.ip_address("198.18.0.31"),)
    with pytest.raises(ConfigError, match="no Kubernetes Node 'tnd-absent'"):
        node_internal_ips(admin, "tnd-absent")
    kubectl(cp, "delete", "node", "tnd-read")


def test_deleting_a_kubernetes_node_cleans_its_tabby_side(
        cp: ControlPlane, admin: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tabby.kube.nodecleanup")
    for name, internal in (("tnd-a", "198.18.0.11"), ("tnd-b", "198.18.0.12")):
        kube_node(cp, name, internal)
        tabby_node(admin, name)
    ipam = IPAM(admin)
    pod_on(admin, "tnd-a", "web-2", block_of="tnd-b")  # tnd-a's pod in tnd-b's block
    b_pod = pod_on(admin, "tnd-b", "db-0")
    for pod in ("web-0", "web-1", "web-3"):
        pod_on(admin, "tnd-a", pod)
    ipam.assign(tunnel_handle("tnd-a", 4), "tnd-a", num_v4=1, num_v6=0,
                attrs={"node": "tnd-a", "type": "vxlanTunnelAddress"})  # fills tnd-a's /30
    kept = pod_on(admin, "tnd-b", "api-0", block_of="tnd-a")  # in tnd-a's second block
    first, second = (ipaddress.ip_network(c) for c in tabby_side(admin, "tnd-a")["affinities"])
    before_b = tabby_side(admin, "tnd-b")
    assert before_b["affinities"] and ipaddress.ip_address(kept) in second
    stop = threading.Event()
    kc = cp.kubeconfig("tnd-node-cleanup", USER)
    with open_store(f"kubernetes://{kc}") as store:
        controller = NodeCleanupController(store)  # only RBAC_RULES: proves they suffice
        thread = threading.Thread(target=controller.run, args=(stop,), daemon=True)
        thread.start()
        try:
            assert controller.synced.wait(DEADLINE), "the controller never watched"
            kubectl(cp, "delete", "node", "tnd-a")
            wait_for("tnd-a's tabby side gone", lambda: tabby_side(admin, "tnd-a") == {
                "node": False, "endpoints": [], "affinities": []}, DEADLINE)
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not thread.is_alive()
    assert "node tnd-a: 4 endpoints deleted, 5 addresses released, 2 block affinities" \
        " released, Node deleted (its Kubernetes Node was deleted)" in caplog.text
    for handle in ("tnd-net.web-0.eth0", "tnd-net.web-1.eth0", "tnd-net.web-2.eth0",
                   "tnd-net.web-3.eth0", tunnel_handle("tnd-a", 4)):
        assert ipam.addresses_of(handle) == (), handle
    # tnd-a's emptied block is deleted; the one holding tnd-b's pod stays, unclaimed
    blocks = {b.spec.cidr: b.node for b in admin.list(IPAMBlock)}
    assert first not in blocks and blocks[second] is None
    assert ipam.addresses_of("tnd-net.api-0.eth0") == (ipaddress.ip_address(kept),)
    # tnd-b keeps everything: its node, endpoints, block (less tnd-a's borrowed address)
    assert tabby_side(admin, "tnd-b") == before_b
    assert ipam.addresses_of("tnd-net.db-0.eth0") == (ipaddress.ip_address(b_pod),)
    kubectl(cp, "delete", "node", "tnd-b")


def test_tabby_controllers_collects_what_nodes_deleted_meanwhile_left(
        cp: ControlPlane, admin: Client, tmp_path: Path) -> None:
    kube_node(cp, "tnd-stays", "198.18.0.21")
    for name in ("tnd-stays", "tnd-gone"):
        tabby_node(admin, name)
        pod_on(admin, name, f"{name}-pod")
    assert tabby_side(admin, "tnd-gone")["affinities"]
    log = tmp_path / "controllers.log"
    argv = [*tabby_command(), "--datastore", f"kubernetes://{cp.admin_kubeconfig}",
            "controllers"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("tnd-gone collected", lambda: tabby_side(admin, "tnd-gone") == {
            "node": False, "endpoints": [], "affinities": []}, DEADLINE)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()[-3000:]
    stays = tabby_side(admin, "tnd-stays")
    assert stays["node"] and stays["endpoints"] and stays["affinities"]
    assert "node tnd-gone: 1 endpoints deleted, 1 addresses released" in log.read_text()
    kubectl(cp, "delete", "node", "tnd-stays")
