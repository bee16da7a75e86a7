"""Kubernetes Nodes' labels on tabby Nodes (``tabby.kube.nodelabels``), and the node
controller that copies them on a listing and on every core or tabby Node written."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from tabby.kube.nodecleanup import NodeCleanupController
from tabby.kube.nodelabels import KUBE_LABELS, synced
from tabby.model import KubeNode, Node, ObjectMeta
from tabby.model.node import NodeSpec
from tabby.store.base import Key
from tabby.store.client import Client
from tabby.store.memory import MemoryStore

LINUX = {"kubernetes.io/os": "linux", "kubernetes.io/hostname": "node-1"}


def node(labels: dict[str, str], copied: dict[str, str] | None = None) -> Node:
    annotations = {} if copied is None else {KUBE_LABELS: json.dumps(copied)}
    return Node(meta=ObjectMeta(name="node-1", labels=labels, annotations=annotations),
                spec=NodeSpec())


def test_labels_are_copied_and_recorded() -> None:
    got = synced(node({"rack": "a", "kubernetes.io/os": "windows"}), LINUX)
    assert got is not None
    assert dict(got.meta.labels) == {"rack": "a", **LINUX}  # Kubernetes' value wins
    assert json.loads(got.meta.annotations[KUBE_LABELS]) == LINUX
    assert synced(got, LINUX) is None  # nothing to write the second time


def test_a_label_removed_in_kubernetes_goes_and_tabby_s_own_stay() -> None:
    had = synced(node({"rack": "a"}), {**LINUX, "zone": "z1"})
    assert had is not None
    got = synced(had, LINUX)
    assert got is not None and dict(got.meta.labels) == {"rack": "a", **LINUX}


def test_an_unreadable_record_copies_again() -> None:
    broken = Node(meta=ObjectMeta(name="node-1", labels=LINUX,
                                  annotations={KUBE_LABELS: "{not json"}), spec=NodeSpec())
    got = synced(broken, LINUX)
    assert got is not None and json.loads(got.meta.annotations[KUBE_LABELS]) == LINUX


def core_node(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def wait_labels(client: Client, name: str, want: dict[str, str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = client.try_get(Node, name)
        if got is not None and dict(got.meta.labels) == want:
            return
        time.sleep(0.02)
    got = client.try_get(Node, name)
    raise AssertionError(f"{name}: {got.meta.labels if got else None} != {want}")


def test_the_controller_copies_on_listing_and_on_writes() -> None:
    store = MemoryStore()
    client = Client(store)
    core = KubeNode.KIND.resource
    store.create(Key(core, "", "node-1"), core_node("node-1", LINUX))
    client.create(Node(meta=ObjectMeta(name="node-1", labels={"rack": "a"}), spec=NodeSpec()))
    controller = NodeCleanupController(store)
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert controller.synced.wait(20)
        assert dict(client.get(Node, "node-1").meta.labels) == {"rack": "a", **LINUX}
        # The Kubernetes Node relabelled: the change follows.
        item = store.get(Key(core, "", "node-1"))
        store.update(Key(core, "", "node-1"), core_node("node-1", {"kubernetes.io/os": "linux"}),
                     item.revision)
        wait_labels(client, "node-1", {"rack": "a", "kubernetes.io/os": "linux"})
        # A tabby Node registered after its Kubernetes Node gets the labels at once.
        store.create(Key(core, "", "node-2"), core_node("node-2", {"kubernetes.io/os": "linux"}))
        client.create(Node(meta=ObjectMeta(name="node-2"), spec=NodeSpec()))
        wait_labels(client, "node-2", {"kubernetes.io/os": "linux"})
    finally:
        stop.set()
        thread.join(10)
