"""Preparing a Kubernetes cluster for tabby: its CRDs and the roles its parts use.

    install(store)              CRDs (waited until Established) and RBAC, idempotent
    NODE_GROUP, CONTROLLERS_USER identities the roles are bound to

The roles grant what each part reads and writes, nothing cluster-wide beyond
that: the node agents (group ``tabby:nodes``: Kubernetes' kinds read-only,
tabby's kinds read-write for endpoints, IPAM and node status) and the
cluster controllers (user ``tabby:controllers``: Services' status for
LoadBalancer addresses, IP pools read-only). A kubelet is a Kubernetes node
identity (``system:node:<name>``) and needs no role of ours.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from tabby.errors import Conflict, LabError, NotFound
from tabby.kube.crds import crds
from tabby.store.kubernetes import KubernetesStore

__all__ = ["CONTROLLERS_USER", "NODE_GROUP", "apply_object", "install", "rbac"]

NODE_GROUP = "tabby:nodes"
CONTROLLERS_USER = "tabby:controllers"
TABBY = "tabby.dev"
READ = ["get", "list", "watch"]
WRITE = [*READ, "create", "update", "patch", "delete"]

_PATHS = {
    "CustomResourceDefinition": "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Namespace": "/api/v1/namespaces",
}


def rbac() -> list[dict[str, Any]]:
    node_rules = [
        {"apiGroups": [""], "resources": ["pods", "namespaces", "services", "nodes"],
         "verbs": READ},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": READ},  # BGP passwords
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": READ},
        {"apiGroups": [TABBY], "resources": ["*"], "verbs": WRITE},
    ]
    controller_rules = [
        {"apiGroups": [""], "resources": ["services"], "verbs": READ},
        {"apiGroups": [""], "resources": ["services/status"], "verbs": ["update", "patch"]},
        {"apiGroups": [TABBY], "resources": ["ippools"], "verbs": READ},
    ]
    return [
        _role("tabby-node", node_rules), _binding("tabby-node", "Group", NODE_GROUP),
        _role("tabby-controllers", controller_rules),
        _binding("tabby-controllers", "User", CONTROLLERS_USER),
    ]


def install(store: KubernetesStore, timeout: float = 60.0) -> None:
    """Apply the CRDs and roles and wait until every CRD is Established."""
    definitions = crds()
    for doc in [*definitions, *rbac()]:
        apply_object(store, doc)
    wait_established(store, [d["metadata"]["name"] for d in definitions], timeout)


def apply_object(store: KubernetesStore, doc: dict[str, Any]) -> dict[str, Any]:
    """Create ``doc`` or replace the object of its name (cluster-scoped kinds above)."""
    base = _PATHS[doc["kind"]]
    name = doc["metadata"]["name"]
    for _ in range(5):
        try:
            return store.request("POST", base, body=doc, what=f"create {doc['kind']}/{name}")
        except Conflict:
            pass
        try:
            current = store.request("GET", f"{base}/{name}")
        except NotFound:
            continue
        body = {**doc, "metadata": {**doc["metadata"],
                                    "resourceVersion": current["metadata"]["resourceVersion"]}}
        try:
            return store.request("PUT", f"{base}/{name}", body=body,
                                 what=f"update {doc['kind']}/{name}")
        except Conflict:
            continue
    raise Conflict(f"{doc['kind']}/{name}: kept changing under us")


def wait_established(store: KubernetesStore, names: Iterable[str], timeout: float) -> None:
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        for name in sorted(pending):
            doc = store.request("GET", f"{_PATHS['CustomResourceDefinition']}/{name}")
            conditions = (doc.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True"
                   for c in conditions):
                pending.discard(name)
        if pending:
            if time.monotonic() > deadline:
                raise LabError(f"CRDs not Established after {timeout:g}s:"
                               f" {', '.join(sorted(pending))}")
            time.sleep(0.1)


def _role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name}, "rules": rules}


def _binding(name: str, kind: str, subject: str) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind,
                          "name": subject}]}
