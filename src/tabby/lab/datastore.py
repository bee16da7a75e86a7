"""The lab's datastore: started, recorded, seeded.

``sqlite``: one file in the lab's directory; every agent (in its node's
namespace) and the CLI (in the root namespace) open the same file.

``etcd``: a real three-member cluster (``tabby.testing.etcd.EtcdCluster``) on
the root namespace's 127.0.0.1, run with TLS as Calico runs it (client and peer
certificates required; the CA and the certificates under the cluster's
directory in the lab folder; the datastore URL is
``etcds://127.0.0.1:P,...?ca=...&cert=...&key=...``). The agents live in their nodes' namespaces,
where 127.0.0.1 is the node's own loopback, so one relay process
(``tabby.lab.relay``) listens on each node's 127.0.0.1 at every member's port
and forwards to the member: the datastore URL is the same everywhere. Only the
datastore's own connections cross namespaces; pod and fabric traffic never do.

``kubernetes``: a real control plane (``tabby.kube.controlplane``: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, TLS and RBAC on) on
the root namespace's 127.0.0.1, its API server relayed into every node like
etcd above. What ``kubectl apply`` of tabby's manifests would install before
the workloads is applied (``tabby.kube.manifests.cluster_parts`` for the
lab's pools, encapsulation, MTU and BGP mode: the CRDs, ``tabby-system``, the
ServiceAccounts with their least-privilege roles, the ``tabby-config``
ConfigMap). The CLI uses the admin kubeconfig (``<lab>/k8s/admin.kubeconfig``,
the ``kubeconfig`` of ``tabby lab status -o json``); the agents authenticate
as the ``tabby-node`` ServiceAccount and the controllers as
``tabby-controllers``, each with a token from the TokenRequest API in a
kubeconfig of its own (``<lab>/k8s/<name>.kubeconfig``: what a pod's projected
token is, less the rotation); each kubelet stand-in is its node
(``system:node:<node>``, a client certificate).

Seeding writes what a cluster's installer would: the IP pools, one ``Node``
per lab node (fabric addresses in ``spec.bgp``), and the ``default`` namespace;
with ``--bgp``, the BGP resources of the mode (``tabby.lab.bgp``); on
Kubernetes also the LoadBalancer pools (the SQLite lab makes them on first use).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tabby.lab import bgp, relay, system
from tabby.lab.state import LabState, Proc, StateFile
from tabby.lab.topology import NodePlan, PoolPlan, Topology
from tabby.model import IPPool, Namespace, Node
from tabby.model.base import TABBY_API
from tabby.store import open_store
from tabby.store.client import Client

if TYPE_CHECKING:
    from tabby.kube.manifests import Options

ETCD_MEMBERS = 3
# The members outlive ``up`` (``down`` stops them by PID); keeping their clusters
# referenced keeps the Popen handles from warning about running children.
_STARTED: list[object] = []
RELAY_TIMEOUT = 10.0
K8S_DIR = "k8s"


def start(t: Topology, state_file: StateFile) -> str:
    """Start the lab's datastore, record it (URL, processes) and return its URL."""
    if t.datastore == "sqlite":
        url = f"sqlite://{state_file.dir / 'store.db'}"
        state_file.mutate(lambda s: dataclasses.replace(s, datastore=url))
        return url
    if t.datastore == "kubernetes":
        return _start_kubernetes(t, state_file)
    return _start_etcd(t, state_file)


def _start_kubernetes(t: Topology, state_file: StateFile) -> str:
    from tabby.kube import cluster
    from tabby.kube.controlplane import ControlPlane
    from tabby.kube.manifests import cluster_parts
    from tabby.lab.services import CLUSTER_RANGES
    from tabby.store.kubernetes import KubernetesStore
    cp = ControlPlane(state_file.dir / K8S_DIR,
                      service_ranges=[str(CLUSTER_RANGES[v]) for v in t.families])
    try:
        cp.start()
    finally:  # recorded even half-started, so that lab down ends them
        _STARTED.append(cp)
        procs = [Proc(pid, system.start_time(pid) or 0, role)
                 for role, pid in _stop_order(cp.pids)]
        state_file.mutate(lambda s: dataclasses.replace(s, procs=(*s.procs, *procs)))
    url = f"kubernetes://{cp.admin_kubeconfig}"
    state_file.mutate(lambda s: dataclasses.replace(s, datastore=url))
    proc = start_relay([n.netns for n in t.nodes], [cp.api_port], state_file.dir / "relay.log")
    state_file.mutate(lambda s: dataclasses.replace(s, procs=(*s.procs, proc)))
    store = KubernetesStore(str(cp.admin_kubeconfig))
    try:
        cluster.install(store, cluster_parts(install_options(t)))
    finally:
        store.close()
    return url


def install_options(t: Topology) -> Options:
    """The manifests' options that describe lab ``t``: its pools, encapsulation, MTU, BGP."""
    from tabby.kube.manifests import Options
    modes = {p.vxlan_mode for p in t.pools}
    encap = "VXLAN" if "Always" in modes else "VXLANCrossSubnet" if "CrossSubnet" in modes \
        else "None"
    return Options.create([str(p.cidr) for p in t.pools], encap, t.mtu,
                          bgp="none" if t.bgp == "none" else "bird")


def _stop_order(pids: dict[str, int]) -> list[tuple[str, int]]:
    """Control-plane processes in the order teardown should stop them."""
    rank = {"kube-scheduler": 0, "kube-controller-manager": 1, "kube-apiserver": 2}
    return sorted(pids.items(), key=lambda rp: rank.get(rp[0], 3))


def node_url(state: LabState, node: str) -> str:
    """The datastore URL node ``node``'s agent uses: the lab's, or on Kubernetes one
    with a token of the ``tabby-node`` ServiceAccount."""
    if not state.datastore.startswith("kubernetes://"):
        return state.datastore
    from tabby.kube.cluster import NODE_ACCOUNT
    return f"kubernetes://{account_kubeconfig(state, f'agent-{node}', NODE_ACCOUNT)}"


def account_kubeconfig(state: LabState, name: str, account: str) -> Path:
    """A kubeconfig ``<lab>/k8s/<name>.kubeconfig`` holding a fresh token of
    ServiceAccount ``tabby-system/<account>``, asked for with the admin kubeconfig."""
    from tabby.kube.cluster import account_user, request_token, write_token_kubeconfig
    from tabby.kube.pki import PKI
    from tabby.store.kubernetes import KubernetesStore
    directory = state.dir / K8S_DIR
    admin_path = directory / "admin.kubeconfig"
    admin = yaml.safe_load(admin_path.read_text())
    store = KubernetesStore(str(admin_path))
    try:
        token = request_token(store, account)
    finally:
        store.close()
    return write_token_kubeconfig(directory / f"{name}.kubeconfig",
                                  admin["clusters"][0]["cluster"]["server"],
                                  PKI.load(directory / "pki").ca_path, token,
                                  account_user(account))


def identity(state: LabState, name: str, user: str, groups: list[str]) -> Path:
    """A kubeconfig for ``user`` in ``groups``, signed by the lab's control-plane CA."""
    from tabby.kube.pki import PKI, write_kubeconfig
    directory = state.dir / K8S_DIR
    pki = PKI.load(directory / "pki")
    admin = yaml.safe_load((directory / "admin.kubeconfig").read_text())
    server = admin["clusters"][0]["cluster"]["server"]
    return write_kubeconfig(directory / f"{name}.kubeconfig", server, pki.ca_path,
                            pki.client(name, user, groups), user=user)


def kubeconfig(state: LabState) -> Path | None:
    """The admin kubeconfig of a Kubernetes-mode lab (None for other datastores)."""
    if not state.datastore.startswith("kubernetes://"):
        return None
    return Path(state.datastore.removeprefix("kubernetes://"))


def _start_etcd(t: Topology, state_file: StateFile) -> str:
    from tabby.testing.etcd import EtcdCluster
    cluster = EtcdCluster(ETCD_MEMBERS, base_dir=str(state_file.dir), tls=True)
    cluster.start()
    _STARTED.append(cluster)
    procs = []
    for index, pid in sorted(cluster.pids.items()):
        started = system.start_time(pid)
        procs.append(Proc(pid, started or 0, f"etcd {cluster.members[index].name}"))
    state_file.mutate(lambda s: dataclasses.replace(s, datastore=cluster.url,
                                                    procs=(*s.procs, *procs)))
    ports = [m.client_port for m in cluster.members]
    proc = start_relay([n.netns for n in t.nodes], ports, state_file.dir / "relay.log")
    state_file.mutate(lambda s: dataclasses.replace(s, procs=(*s.procs, proc)))
    return cluster.url


def start_relay(netns: list[str], ports: list[int], log: Path) -> Proc:
    """Start the relay and wait until it listens in every namespace."""
    argv = [sys.executable, "-I", "-S", relay.__file__,
            *(f"--netns={ns}" for ns in netns), *(f"--port={p}" for p in ports)]
    return system.spawn_ready(argv, "datastore relay", log, RELAY_TIMEOUT)


def seed(t: Topology, url: str) -> None:
    store = open_store(url)
    try:
        client = Client(store)
        for pool in t.pools:
            client.apply(IPPool.from_manifest(pool_manifest(pool)))
        for node in t.nodes:
            client.apply(Node.from_manifest(bgp.with_bgp(t, node, node_manifest(node))))
        for obj in bgp.resources(t):  # BGPConfiguration and BGPPeers of --bgp labs
            client.apply(obj)
        client.apply(Namespace.from_manifest(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}))
        if t.datastore == "kubernetes":
            from tabby.lab.services import LB_POOLS
            for version in t.families:
                name, cidr = LB_POOLS[version]
                client.apply(IPPool.from_manifest({
                    "apiVersion": TABBY_API, "kind": "IPPool", "metadata": {"name": name},
                    "spec": {"cidr": str(cidr), "blockSize": 26 if version == 4 else 122,
                             "allowedUses": ["LoadBalancer"]}}))
    finally:
        store.close()


def pool_manifest(pool: PoolPlan) -> dict[str, Any]:
    return {"apiVersion": TABBY_API, "kind": "IPPool", "metadata": {"name": pool.name},
            "spec": {"cidr": str(pool.cidr), "blockSize": pool.block_size,
                     "vxlanMode": pool.vxlan_mode, "ipipMode": "Never",
                     "natOutgoing": pool.nat_outgoing, "nodeSelector": "all()"}}


def node_manifest(node: NodePlan) -> dict[str, Any]:
    bgp = {}
    if node.ipv4:
        bgp["ipv4Address"] = str(node.ipv4)
    if node.ipv6:
        bgp["ipv6Address"] = str(node.ipv6)
    return {"apiVersion": TABBY_API, "kind": "Node",
            "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
            "spec": {"bgp": bgp, "addresses": [{"address": str(a.ip), "type": "InternalIP"}
                                               for a in node.addresses()]}}
