"""Preparing a Kubernetes cluster for tabby: its CRDs, identities and least-privilege roles.

    rbac()                      ServiceAccounts, ClusterRoles, a Role and their bindings
    node_rules(), controller_rules()   the rules, derived from what the code uses
    install(store, docs)        apply documents (CRDs waited until Established), idempotent
    request_token(store, account)      a ServiceAccount token (TokenRequest API)
    write_token_kubeconfig(...) a kubeconfig that authenticates with such a token

Two ServiceAccounts in ``tabby-system``: ``tabby-node`` (the agent on every
node; tabby-ipam and install-cni's plugin kubeconfig use it too) and
``tabby-controllers`` (``tabby controllers``). Their rules grant exactly what
the code does, verb by verb:

- the agent's cache lists and watches every kind the calculation reads
  (``tabby.agent.cache.kinds()``): list and watch on each, and nothing more on
  those it only reads;
- writes, and the reads by name that go with them, are listed in
  ``NODE_USES``: endpoints (the CNI handler), IPAM's blocks, affinities and
  handles (the agent's IPAM and tabby-ipam), the node's own tabby Node (VTEP,
  self-registration);
- Secrets only in ``tabby-system`` (BGP passwords, ``SECRET_NAMESPACE``):
  a namespaced Role, and the store lists and watches Secrets there only
  (``tabby.store.kuberesources.KEPT_IN``).

tabby-cni reaches the store only through the agent's socket, and the CLI's
node command (``tabby node status``) asks BIRD over its control socket: neither
needs a rule of its own.

No ``*`` anywhere, no patch (the store writes by PUT with a resourceVersion),
no writes to core Nodes or Pods (a kubelet writes those; the agent reads its
own Node for ``kubernetes-internal-ip`` autodetection). The controllers read
Services and IP pools and write Services' status (LoadBalancer addresses),
and follow core Nodes to clean up after a deleted one and to copy their labels
onto tabby's Nodes (``tabby.kube.nodecleanup``, ``tabby.kube.nodelabels``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from tabby.errors import Conflict, LabError, NotFound, StoreError
from tabby.model import (
    BlockAffinity,
    IPAMBlock,
    IPAMConfiguration,
    IPAMHandle,
    IPPool,
    KubeNode,
    Namespace,
    Node,
    Pod,
    Service,
    WorkloadEndpoint,
)
from tabby.model.base import Resource
from tabby.model.bgpfields import SECRET_NAMESPACE
from tabby.store.kuberesources import KEPT_IN, default_resources
from tabby.store.kubernetes import KubernetesStore

__all__ = ["CONTROLLERS_ACCOUNT", "NAMESPACE", "NODE_ACCOUNT", "account_user", "apply_object",
           "controller_rules", "install", "node_rules", "rbac", "request_token",
           "write_token_kubeconfig"]

NAMESPACE = SECRET_NAMESPACE  # tabby-system: the DaemonSet, the Deployment, BGP Secrets
NODE_ACCOUNT = "tabby-node"
CONTROLLERS_ACCOUNT = "tabby-controllers"
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")
WATCHED = frozenset({"list", "watch"})
RW = frozenset({"get", "create", "update", "delete"})
TOKEN_SECONDS = 365 * 24 * 3600

# What the node's programs do beyond list+watch of the cached kinds, and why.
NODE_USES: Mapping[type[Resource], frozenset[str]] = {
    Pod: frozenset({"get"}),  # the CNI handler reads the pod it wires when the cache lags
    Namespace: frozenset({"get"}),  # ... and its namespace (labels for policy)
    Node: frozenset({"get", "create", "update"}),  # its own: VTEP, addresses, registration
    KubeNode: frozenset({"get"}),  # its own, for kubernetes-internal-ip autodetection
    WorkloadEndpoint: RW,  # CNI ADD / DEL; endpoint labels follow the pod's
    IPAMBlock: RW,  # claim, allocate, release (compare-and-swap by PUT)
    BlockAffinity: RW | {"list"},  # claim and release; listed per node
    IPAMHandle: RW | {"list"},  # one per allocation; GC lists them
    IPAMConfiguration: frozenset({"get"}),  # strictAffinity and friends, read by name
}

# (resource as RBAC names it, verbs) of ``tabby controllers``.
CONTROLLER_USES: Sequence[tuple[type[Resource], str, frozenset[str]]] = (
    (Service, "", WATCHED),  # LoadBalancer Services
    (Service, "status", frozenset({"update"})),  # status.loadBalancer.ingress
    (IPPool, "", WATCHED),  # pools with allowedUses LoadBalancer
)

_PATHS = {  # kind -> (collection path, namespaced)
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                 False),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1/clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", False),
    "Namespace": ("/api/v1/namespaces", False),
    "ServiceAccount": ("/api/v1/namespaces/{ns}/serviceaccounts", True),
    "ConfigMap": ("/api/v1/namespaces/{ns}/configmaps", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", True),
}
_LABELS = {"app.kubernetes.io/part-of": "tabby"}


def account_user(account: str) -> str:
    """The user name a ServiceAccount of tabby-system authenticates as."""
    return f"system:serviceaccount:{NAMESPACE}:{account}"


# -- rules ------------------------------------------------------------------------------

def node_uses() -> dict[tuple[str, str], frozenset[str]]:
    """(API group, resource) -> verbs, for the agent, tabby-cni and tabby-ipam."""
    from tabby.agent.cache import kinds
    resources = default_resources()
    uses: dict[tuple[str, str], frozenset[str]] = {}
    for name in kinds():
        res = resources[name]
        uses[(res.group, res.plural)] = WATCHED
    for cls, verbs in NODE_USES.items():
        key = (cls.KIND.group, cls.KIND.plural)
        uses[key] = uses.get(key, frozenset()) | verbs
    return uses


def node_rules() -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The node's cluster-wide rules, and its rules per kept namespace (Secrets)."""
    kept = {(res.group, res.plural): res.namespace for name, res in default_resources().items()
            if name in KEPT_IN}
    cluster: dict[tuple[str, str], frozenset[str]] = {}
    by_namespace: dict[str, dict[tuple[str, str], frozenset[str]]] = {}
    for key, verbs in node_uses().items():
        namespace = kept.get(key)
        if namespace is None:
            cluster[key] = verbs
        else:
            by_namespace.setdefault(namespace, {})[key] = verbs
    return _rules(cluster), {ns: _rules(u) for ns, u in sorted(by_namespace.items())}


def controller_rules() -> list[dict[str, Any]]:
    """The LoadBalancer controller's uses and the node cleanup controller's rules
    (``tabby.kube.nodecleanup.RBAC_RULES``), merged."""
    from tabby.kube.nodecleanup import RBAC_RULES
    uses = {(cls.KIND.group, f"{cls.KIND.plural}/{sub}" if sub else cls.KIND.plural): verbs
            for cls, sub, verbs in CONTROLLER_USES}
    for rule in RBAC_RULES:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                uses[key] = uses.get(key, frozenset()) | frozenset(rule["verbs"])
    return _rules(uses)


def _rules(uses: Mapping[tuple[str, str], frozenset[str]]) -> list[dict[str, Any]]:
    """One rule per (group, verbs), resources sorted; groups in a stable order."""
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (group, resource), verbs in uses.items():
        ordered = tuple(v for v in VERBS if v in verbs)
        grouped.setdefault((group, ordered), []).append(resource)
    return [{"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}
            for (group, verbs), resources in sorted(grouped.items(),
                                                    key=lambda kv: (kv[0][0], -len(kv[0][1]),
                                                                    kv[0][1]))]


# -- objects ----------------------------------------------------------------------------

def rbac() -> list[dict[str, Any]]:
    """ServiceAccounts, roles and bindings, in the order kubectl should apply them."""
    cluster, namespaced = node_rules()
    docs = [_account(NODE_ACCOUNT), _account(CONTROLLERS_ACCOUNT),
            _role("ClusterRole", NODE_ACCOUNT, cluster), _binding("ClusterRole", NODE_ACCOUNT)]
    for namespace, rules in namespaced.items():
        name = f"{NODE_ACCOUNT}-secrets"
        docs += [_role("Role", name, rules, namespace),
                 _binding("Role", name, namespace, account=NODE_ACCOUNT)]
    docs += [_role("ClusterRole", CONTROLLERS_ACCOUNT, controller_rules()),
             _binding("ClusterRole", CONTROLLERS_ACCOUNT)]
    return docs


def _meta(name: str, namespace: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = dict(_LABELS)
    return meta


def _account(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, NAMESPACE)}


def _role(kind: str, name: str, rules: list[dict[str, Any]], namespace: str = "",
          ) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": _meta(name, namespace), "rules": rules}


def _binding(role_kind: str, name: str, namespace: str = "", *, account: str = "",
             ) -> dict[str, Any]:
    kind = "RoleBinding" if role_kind == "Role" else "ClusterRoleBinding"
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": _meta(name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                        "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account or name,
                          "namespace": NAMESPACE}]}


# -- applying ---------------------------------------------------------------------------

def install(store: KubernetesStore, docs: Iterable[dict[str, Any]] | None = None,
            timeout: float = 60.0) -> None:
    """Apply ``docs`` (default: the CRDs, tabby-system and ``rbac()``) in order and wait
    until every CRD among them is Established."""
    if docs is None:
        from tabby.kube.crds import crds
        docs = [*crds(), namespace_object(), *rbac()]
    docs = list(docs)
    for doc in docs:
        apply_object(store, doc)
    wait_established(store, [d["metadata"]["name"] for d in docs
                             if d["kind"] == "CustomResourceDefinition"], timeout)


def namespace_object() -> dict[str, Any]:
    """tabby-system. The agent runs privileged (see ``tabby.kube.manifests``): Pod
    Security admission must allow that there."""
    meta = _meta(NAMESPACE)
    meta["labels"] |= {f"pod-security.kubernetes.io/{mode}": "privileged"
                       for mode in ("enforce", "audit", "warn")}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def _collection(doc: dict[str, Any]) -> str:
    try:
        base, namespaced = _PATHS[doc["kind"]]
    except KeyError:
        raise StoreError(f"cannot apply a {doc['kind']} (known: {', '.join(_PATHS)})") from None
    if not namespaced:
        return base
    namespace = doc["metadata"].get("namespace")
    if not namespace:
        raise StoreError(f"{doc['kind']}/{doc['metadata']['name']}: needs metadata.namespace")
    return base.format(ns=quote(namespace, safe=""))


def apply_object(store: KubernetesStore, doc: dict[str, Any]) -> dict[str, Any]:
    """Create ``doc`` or replace the object of its name (the kinds of ``_PATHS``)."""
    base = _collection(doc)
    name = doc["metadata"]["name"]
    for _ in range(5):
        try:
            return store.request("POST", base, body=doc, what=f"create {doc['kind']}/{name}")
        except Conflict:
            pass
        try:
            current = store.request("GET", f"{base}/{quote(name, safe='')}")
        except NotFound:
            continue
        body = {**doc, "metadata": {**doc["metadata"],
                                    "resourceVersion": current["metadata"]["resourceVersion"]}}
        try:
            return store.request("PUT", f"{base}/{quote(name, safe='')}", body=body,
                                 what=f"update {doc['kind']}/{name}")
        except Conflict:
            continue
    raise Conflict(f"{doc['kind']}/{name}: kept changing under us")


def wait_established(store: KubernetesStore, names: Iterable[str], timeout: float) -> None:
    pending = set(names)
    deadline = time.monotonic() + timeout
    base = _PATHS["CustomResourceDefinition"][0]
    while pending:
        for name in sorted(pending):
            doc = store.request("GET", f"{base}/{name}")
            conditions = (doc.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True"
                   for c in conditions):
                pending.discard(name)
        if pending:
            if time.monotonic() > deadline:
                raise LabError(f"CRDs not Established after {timeout:g}s:"
                               f" {', '.join(sorted(pending))}")
            time.sleep(0.1)


# -- credentials ------------------------------------------------------------------------

def request_token(store: KubernetesStore, account: str, *, namespace: str = NAMESPACE,
                  seconds: int = TOKEN_SECONDS) -> str:
    """A token of ServiceAccount ``namespace/account`` from the TokenRequest API (what
    the kubelet asks for a pod's projected token)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds}}
    path = (f"/api/v1/namespaces/{quote(namespace, safe='')}/serviceaccounts/"
            f"{quote(account, safe='')}/token")
    doc = store.request("POST", path, body=body, what=f"token of {namespace}/{account}")
    token = (doc.get("status") or {}).get("token")
    if not isinstance(token, str) or not token:
        raise StoreError(f"token of {namespace}/{account}: the API server sent none")
    return token


def write_token_kubeconfig(path: Path, server: str, ca_path: Path, token: str, user: str,
                           ) -> Path:
    """A kubeconfig for ``server`` authenticating with ``token`` (mode 0600)."""
    doc = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "tabby", "cluster": {"server": server,
                                                      "certificate-authority": str(ca_path)}}],
           "users": [{"name": user, "user": {"token": token}}],
           "contexts": [{"name": "tabby", "context": {"cluster": "tabby", "user": user}}],
           "current-context": "tabby"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)
    return path
