"""A node that is gone leaves nothing behind: its endpoints, addresses, blocks and Node.

    clean_node(client, name)                   what `tabby delete node` and the controller do
    orphans(tabby_nodes, kube_nodes)           pure: which tabby nodes have no Kubernetes Node
    NodeCleanupController(store).run(stop)     list + watch Kubernetes' core Nodes
                                               (and tabby's: their labels follow
                                               Kubernetes', ``tabby.kube.nodelabels``)

``clean_node`` takes, in this order: the node's WorkloadEndpoints (``spec.node``),
the addresses IPAM handed out for it (every handle with an allocation whose
``node`` attribute names it, wherever the block, and its VXLAN tunnel handles),
its block affinities (``IPAM.release_node``: empty blocks go, blocks still holding
addresses lose their affinity, as in Calico), then its tabby ``Node``. The Node
goes last, so a cleanup cut short by an error leaves the Node to show that it is
not finished, and running it again completes it (every step is idempotent).

The controller (in ``tabby controllers``, beside the LoadBalancer one; Calico's
kube-controllers has the same node controller) follows Kubernetes' core Nodes.
When one is deleted, and is still absent when read back, its tabby side is
cleaned. On start, and after every relist (a compacted watch, an error), it
collects garbage: tabby Nodes and block affinities naming a node Kubernetes no
longer has, left by deletions made while it was not running. The tabby side is
listed before the Kubernetes Nodes, so a node registered meanwhile is never taken
for a gone one; and a listing without any Kubernetes Node at all (a cluster with
no nodes is more likely a wrong datastore) collects nothing. Every tabby Node is
taken to be a Kubernetes node's (one agent per node): a host outside the cluster
with a tabby Node of its own would be collected.

The same controller copies each Kubernetes Node's labels onto the tabby Node of
its name (``tabby.kube.nodelabels``): for every node it lists, and on every write
of a core Node or of a tabby Node (one registered after its Kubernetes Node gets
the labels at once). A copy that fails is retried with the next relist.

``RBAC_RULES`` is what the controller needs (ClusterRole rules): verified by
tests/netns/test_kube_nodecleanup.py running it under exactly these.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tabby.errors import Compacted, NotFound, TabbyError
from tabby.ipam import IPAM
from tabby.kube.nodelabels import kube_labels, sync_labels
from tabby.marks import tunnel_handle
from tabby.model import BlockAffinity, IPAMBlock, KubeNode, Node, WorkloadEndpoint
from tabby.store.base import Event, Key, Store
from tabby.store.client import Client

__all__ = ["RBAC_RULES", "NodeCleanup", "NodeCleanupController", "clean_node", "node_handles",
           "orphans", "serve_core_nodes"]

log = logging.getLogger(__name__)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
TABBY = "tabby.dev"
RBAC_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [TABBY], "resources": ["nodes"],  # update: labels (nodelabels)
     "verbs": ["get", "list", "watch", "update", "delete"]},
    {"apiGroups": [TABBY], "resources": ["workloadendpoints", "blockaffinities"],
     "verbs": ["get", "list", "delete"]},
    {"apiGroups": [TABBY], "resources": ["ipamblocks"], "verbs": ["get", "list", "update",
                                                                  "delete"]},
    {"apiGroups": [TABBY], "resources": ["ipamhandles"], "verbs": ["get", "delete"]},
]


@dataclass(frozen=True, slots=True)
class NodeCleanup:
    """What cleaning one node took away."""

    node: str
    endpoints: tuple[str, ...] = ()  # namespace/name of the WorkloadEndpoints deleted
    addresses: tuple[IPAddress, ...] = ()  # released
    blocks: tuple[IPNetwork, ...] = ()  # affinities released (empty blocks deleted)
    deleted: bool = False  # the tabby Node was there and is gone

    def summary(self) -> str:
        return (f"node {self.node}: {len(self.endpoints)} endpoints deleted, "
                f"{len(self.addresses)} addresses released, {len(self.blocks)} block"
                f" affinities released, Node {'deleted' if self.deleted else 'absent'}")


def serve_core_nodes(store: Store) -> None:
    """Teach a Kubernetes store the core ``nodes`` resource (``KubeNode`` is not in the
    kind registry: ``tabby.model.k8snode`` says why). Other stores keep any resource."""
    from tabby.store.kuberesources import APIResource
    from tabby.store.kubernetes import KubernetesStore
    if isinstance(store, KubernetesStore):
        store.resources.setdefault(KubeNode.KIND.resource, APIResource.of(KubeNode.KIND))


# -- one node -----------------------------------------------------------------------------

def clean_node(client: Client, node: str) -> NodeCleanup:
    """Take away everything of ``node`` (see the module's docstring); idempotent."""
    endpoints = []
    for wep in client.list(WorkloadEndpoint):
        if wep.spec.node != node:
            continue
        try:
            client.delete(WorkloadEndpoint, wep.meta.name, wep.meta.namespace)
        except NotFound:
            continue
        endpoints.append(f"{wep.meta.namespace}/{wep.meta.name}")
    ipam = IPAM(client)
    addresses: list[IPAddress] = []
    for handle in node_handles(client.list(IPAMBlock), node):
        addresses.extend(ipam.release_handle(handle))
    blocks = ipam.release_node(node)
    try:
        client.delete(Node, node)
        deleted = True
    except NotFound:
        deleted = False
    return NodeCleanup(node, tuple(endpoints), tuple(addresses), blocks, deleted)


def node_handles(blocks: Iterable[IPAMBlock], node: str) -> list[str]:
    """Handles holding addresses for ``node`` (their ``node`` attribute), in any block,
    and its VXLAN tunnel handles; sorted, each once."""
    found = {tunnel_handle(node, 4), tunnel_handle(node, 6)}
    for block in blocks:
        for attr in block.spec.attributes:
            if attr.handle_id and dict(attr.secondary).get("node") == node:
                found.add(attr.handle_id)
    return sorted(found)


def orphans(tabby_nodes: Iterable[str], kube_nodes: Iterable[str]) -> list[str]:
    """Names with tabby state but no Kubernetes Node, sorted; none at all when there is
    no Kubernetes Node (see the module's docstring)."""
    kube = set(kube_nodes)
    if not kube:
        return []
    return sorted(set(tabby_nodes) - kube)


# -- the controller -------------------------------------------------------------------------

class NodeCleanupController:
    """Kubernetes' core Nodes, followed: a deleted one's tabby side is cleaned."""

    def __init__(self, store: Store) -> None:
        serve_core_nodes(store)
        self.store = store
        self.client = Client(store)
        self.synced = threading.Event()  # collected once and watching

    def collect(self) -> tuple[list[NodeCleanup], int]:
        """Clean every node with tabby state and no Kubernetes Node; also returns the
        revision the Kubernetes Nodes were listed at (to watch from)."""
        named = [n.meta.name for n in self.client.list(Node)]
        named += [a.spec.node for a in self.client.list(BlockAffinity)]
        listing = self.store.list(KubeNode.KIND.resource)  # after the tabby side (docstring)
        kube = [item.key.name for item in listing]
        if not kube:
            log.warning("no Kubernetes Node listed: garbage collection skipped")
        gone = orphans(named, kube)
        done = [self._clean(name, "its Kubernetes Node is gone") for name in gone]
        for item in listing:
            if item.key.name not in gone:
                sync_labels(self.client, item.key.name, kube_labels(item.value))
        return done, listing.revision

    def deleted(self, name: str) -> NodeCleanup | None:
        """Kubernetes Node ``name`` was deleted: clean its tabby side, unless it is back."""
        try:
            self.store.get(Key(KubeNode.KIND.resource, "", name))
            return None  # made again since: it is a node of the cluster
        except NotFound:
            return self._clean(name, "its Kubernetes Node was deleted")

    def _clean(self, name: str, why: str) -> NodeCleanup:
        done = clean_node(self.client, name)
        log.info("%s (%s)", done.summary(), why)
        return done

    def run(self, stop: threading.Event) -> None:
        """Collect, then follow the watch; relist (and collect) after Compacted or an error."""
        backoff = 0.5
        while not stop.is_set():
            try:
                _, revision = self.collect()
                with self.store.watch_many([KubeNode.KIND.resource, Node.KIND.resource],
                                           revision + 1) as watch:
                    self.synced.set()
                    backoff = 0.5
                    while not stop.is_set():
                        self._follow(watch.next(1.0))
            except Compacted:
                continue
            except TabbyError as exc:
                log.error("node cleanup controller: %s; retrying in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


    def _follow(self, events: list[Event]) -> None:
        """Core Nodes deleted: clean; a core or a tabby Node written: copy the labels."""
        core = [e for e in events if e.key.resource == KubeNode.KIND.resource]
        for name in _deletions(core):
            self.deleted(name)
        latest = {e.key.name: e.value for e in core if e.type != "DELETE" and e.value}
        for name, value in latest.items():
            sync_labels(self.client, name, kube_labels(value))
        registered = {e.key.name for e in events if e.key.resource == Node.KIND.resource
                      and e.type != "DELETE"} - set(latest)
        for name in sorted(registered):
            try:
                item = self.store.get(Key(KubeNode.KIND.resource, "", name))
            except NotFound:
                continue  # not a Kubernetes node (yet): nothing to copy
            sync_labels(self.client, name, kube_labels(item.value))


def _deletions(events: Iterable[Event]) -> list[str]:
    return list(dict.fromkeys(e.key.name for e in events if e.type == "DELETE"))

