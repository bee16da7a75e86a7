"""Kubernetes Nodes' labels, copied onto the tabby Nodes of the same name.

    synced(node, kube_labels)            pure: the Node with the labels, or None if it has them
    sync_labels(client, name, labels)    read, compare, write (compare-and-swap, retried)

In Kubernetes mode a tabby ``Node`` is an object of its own beside the core Node
the kubelet registers, and selectors on nodes (a ClusterNetworkPolicy's ``nodes``
peer, a BGPPeer's ``nodeSelector``, an IPPool's, Calico selectors over host
endpoints' nodes) read the tabby Node's labels. Calico's kube-controllers keep
its Nodes' labels in step with Kubernetes' when Calico has a datastore of its own;
the node controller (``tabby.kube.nodecleanup``, in ``tabby controllers``) does the
same with this module, whenever a core Node or a tabby Node is written, and for
every node when it lists them.

Every label of the Kubernetes Node is set on the tabby Node (Kubernetes' value
wins). The annotation ``tabby.dev/kube-labels`` records, as JSON, the labels last
copied, so that a label removed from the Kubernetes Node is removed from the tabby
Node too, while labels set on the tabby Node alone (``tabby label node``) stay.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from tabby.errors import Conflict, NotFound
from tabby.model import Node
from tabby.store.client import Client

__all__ = ["KUBE_LABELS", "kube_labels", "sync_labels", "synced"]

log = logging.getLogger(__name__)
KUBE_LABELS = "tabby.dev/kube-labels"  # annotation: the labels last copied, as JSON
ATTEMPTS = 10


def kube_labels(value: Mapping[str, Any]) -> dict[str, str]:
    """The labels of a core Node as the API serves it (a store value)."""
    labels = (value.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def _copied(node: Node) -> dict[str, str]:
    """The labels the annotation says were copied last ({} when absent or unreadable)."""
    try:
        got = json.loads(node.meta.annotations.get(KUBE_LABELS, "{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}


def synced(node: Node, kube: Mapping[str, str]) -> Node | None:
    """``node`` carrying the Kubernetes Node's labels ``kube`` (module docstring); None
    when it carries them already and the annotation records them."""
    previous = _copied(node)
    labels = {k: v for k, v in node.meta.labels.items() if k in kube or k not in previous}
    labels.update(kube)
    record = json.dumps(dict(sorted(kube.items())), separators=(",", ":"))
    if labels == dict(node.meta.labels) and node.meta.annotations.get(KUBE_LABELS) == record:
        return None
    meta = dataclasses.replace(node.meta, labels=labels,
                               annotations={**node.meta.annotations, KUBE_LABELS: record})
    return dataclasses.replace(node, meta=meta)


def sync_labels(client: Client, name: str, kube: Mapping[str, str]) -> bool:
    """Copy ``kube`` onto the tabby Node ``name``; True if it was written, False if it
    had them or does not exist (its agent has not registered it yet: its creation is
    an event the controller syncs on)."""
    for _ in range(ATTEMPTS):
        try:
            current = client.get(Node, name)
        except NotFound:
            return False
        want = synced(current, kube)
        if want is None:
            return False
        try:
            client.update(want, current)
        except Conflict:
            continue  # written meanwhile (the agent's VTEP, addresses): read again
        except NotFound:
            return False
        log.info("node %s: labels from its Kubernetes Node (%d)", name, len(kube))
        return True
    raise Conflict(f"Node/{name}: kept changing while its Kubernetes labels were copied;"
                   " the controller retries")
