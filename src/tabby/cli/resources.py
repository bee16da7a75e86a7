"""What a write does to one object, in a lab or straight to the store.

When a lab is up (and wires pods itself), Pods, Namespaces and Services go
through the lab, which wires them like a kubelet and the service controller
would; everything else, and every dry run, goes to the store through
``Client``. The verbs live in ``apply.py`` (apply, create, replace),
``delete.py``, ``get.py``, ``diff.py``, ``label.py``, ``edit.py``.
"""

from __future__ import annotations

from tabby.cli.kinds import display
from tabby.errors import Conflict, NotFound, TabbyError
from tabby.model import Namespace, Node, Pod, Resource, Service
from tabby.store.client import Client


def apply_one(client: Client, lab: object | None, obj: Resource) -> str:
    """kubectl apply of one object: ``created``, ``configured`` or ``unchanged``."""
    if lab is not None and isinstance(obj, Service):
        from tabby.lab import services as lab_services
        return lab_services.apply_service(lab, client, obj)  # type: ignore[arg-type]
    if lab is not None and isinstance(obj, Pod | Namespace):
        from tabby.lab import pods as lab_pods
        if isinstance(obj, Pod):
            return lab_pods.apply_pod(lab, client, obj)  # type: ignore[arg-type]
        return lab_pods.apply_namespace(lab, client, obj)  # type: ignore[arg-type]
    return client.apply(obj)[1]


def create_one(client: Client, lab: object | None, obj: Resource) -> str:
    """kubectl create: the object must not exist yet."""
    if client.try_get(type(obj), obj.meta.name, obj.meta.namespace) is not None:
        raise Conflict(f"{display(type(obj), obj.meta.name)} already exists (use tabby apply"
                       " or tabby replace to change it)")
    if lab is not None and isinstance(obj, Pod | Namespace | Service):
        apply_one(client, lab, obj)
    else:
        client.create(obj)
    return "created"


def replace_one(client: Client, lab: object | None, obj: Resource) -> str:
    """kubectl replace: the object must exist; its resourceVersion, when given, must match."""
    old = client.try_get(type(obj), obj.meta.name, obj.meta.namespace)
    if old is None:
        raise NotFound(f"{display(type(obj), obj.meta.name)} not found (use tabby create or"
                       " tabby apply to create it)")
    if lab is not None and isinstance(obj, Pod | Namespace | Service):
        apply_one(client, lab, obj)
        return "replaced"
    version = obj.meta.resource_version or old.meta.resource_version
    client.update(obj.with_meta(resource_version=version), old)
    return "replaced"


def delete_one(client: Client, lab: object | None, cls: type[Resource], name: str,
               namespace: str, *, dry_run: bool = False) -> list[str]:
    """Delete one object; the lines to print. NotFound if it is not there. A dry run
    only deletes through the (dry-run) store: no lab, no node clean-up."""
    if dry_run:
        client.delete(cls, name, namespace)
    elif cls is Node:
        return delete_node(client, name)
    elif lab is not None and cls is Service:
        from tabby.lab import services as lab_services
        lab_services.delete_service(lab, client, namespace, name)  # type: ignore[arg-type]
    elif lab is not None and cls in (Pod, Namespace):
        from tabby.lab import pods as lab_pods
        if cls is Pod:
            lab_pods.delete_pod(lab, client, namespace, name)  # type: ignore[arg-type]
        else:
            lab_pods.delete_namespace(lab, client, name)  # type: ignore[arg-type]
    else:
        client.delete(cls, name, namespace)
    return [f"{display(cls, name)} deleted"]


def delete_node(client: Client, name: str) -> list[str]:
    """``tabby delete node NAME``: the node's endpoints, addresses, block affinities and
    Node (``tabby.kube.nodecleanup.clean_node``, what the node controller does when a
    Kubernetes Node goes). NotFound if there is no such Node; the lines to print."""
    from tabby.kube.nodecleanup import clean_node
    client.get(Node, name)
    try:
        done = clean_node(client, name)
    except TabbyError as exc:
        raise TabbyError(f"cleaning up failed: {exc} (the Node stays: delete it again to"
                         " finish; tabby ipam check shows what is left)") from exc
    lines = [f"{display(Node, name)} deleted"]
    if done.endpoints:
        lines.append(f"deleted {len(done.endpoints)} workload endpoints of node {name}")
    if done.addresses:
        lines.append(f"released {len(done.addresses)} addresses of node {name}")
    if done.blocks:
        lines.append(f"released {len(done.blocks)} IPAM block affinities of node {name}")
    return lines
