"""What a WorkloadEndpoint should say about its pod: pure functions.

The agent writes a WorkloadEndpoint on CNI ADD (``new_endpoint``) and keeps
its pod-derived fields in step with the Pod and Namespace objects
(``endpoint_updates``): ``metadata.labels`` are the pod's labels plus
``projectcalico.org/namespace`` and ``projectcalico.org/orchestrator``;
``spec.namespaceLabels`` the namespace's labels; ``spec.ports`` the pod's
named container ports; ``spec.serviceAccountName`` the pod's.

A pod (or namespace) missing from the snapshot contributes nothing new: the
endpoint keeps what it has (the pod may be going away; DEL removes it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from tabby.model import Namespace, ObjectMeta, Pod, WorkloadEndpoint, endpoint_name
from tabby.model.workloadendpoint import EndpointPort, WorkloadEndpointSpec
from tabby.snapshot import Snapshot

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAMESPACE_LABEL = "projectcalico.org/namespace"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
ORCHESTRATOR = "k8s"


@dataclass(frozen=True, slots=True)
class Attachment:
    """One wired pod interface, as the CNI ADD saw it."""

    node: str
    namespace: str
    pod: str
    container_id: str
    ifname: str
    host_veth: str
    mac: str
    networks: tuple[IPNetwork, ...]


def endpoint_labels(namespace: str, pod: Pod | None) -> dict[str, str]:
    labels = dict(pod.meta.labels) if pod is not None else {}
    labels[NAMESPACE_LABEL] = namespace
    labels[ORCHESTRATOR_LABEL] = ORCHESTRATOR
    return labels


def endpoint_ports(pod: Pod | None) -> tuple[EndpointPort, ...]:
    if pod is None:
        return ()
    return tuple(EndpointPort(p.name, p.protocol, p.container_port) for p in pod.ports())


def namespace_labels(namespace: Namespace | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(namespace.meta.labels.items())) if namespace is not None else ()


def new_endpoint(att: Attachment, pod: Pod | None, namespace: Namespace | None
                 ) -> WorkloadEndpoint:
    meta = ObjectMeta(name=endpoint_name(att.node, att.pod, att.ifname),
                      namespace=att.namespace,
                      labels=endpoint_labels(att.namespace, pod))
    spec = WorkloadEndpointSpec(
        node=att.node,
        orchestrator=ORCHESTRATOR,
        pod=att.pod,
        endpoint=att.ifname,
        container_id=att.container_id,
        interface_name=att.host_veth,
        mac=att.mac,
        ip_networks=att.networks,
        ports=endpoint_ports(pod),
        service_account_name=pod.service_account_name if pod is not None else "",
        namespace_labels=namespace_labels(namespace),
    )
    return WorkloadEndpoint(meta=meta, spec=spec)


def refreshed_endpoint(ep: WorkloadEndpoint, pod: Pod | None, namespace: Namespace | None
                       ) -> WorkloadEndpoint:
    """``ep`` with its pod-derived fields recomputed (unchanged where the source is absent)."""
    spec = ep.spec
    meta = ep.meta
    if pod is not None:
        meta = dataclasses.replace(meta, labels=endpoint_labels(meta.namespace, pod))
        spec = dataclasses.replace(spec, ports=endpoint_ports(pod),
                                   service_account_name=pod.service_account_name)
    if namespace is not None:
        spec = dataclasses.replace(spec, namespace_labels=namespace_labels(namespace))
    return dataclasses.replace(ep, meta=meta, spec=spec)


def endpoint_updates(snapshot: Snapshot, node: str) -> list[WorkloadEndpoint]:
    """This node's endpoints whose pod-derived fields are out of date, refreshed."""
    pods: Mapping[tuple[str, str], Pod] = {
        (p.meta.namespace, p.meta.name): p for p in snapshot.pods}
    namespaces: Mapping[str, Namespace] = {n.meta.name: n for n in snapshot.namespaces}
    out = []
    for ep in snapshot.local_endpoints(node):
        want = refreshed_endpoint(ep, pods.get((ep.meta.namespace, ep.spec.pod)),
                                  namespaces.get(ep.meta.namespace))
        if _pod_fields(want) != _pod_fields(ep):
            out.append(want)
    return out


def _pod_fields(ep: WorkloadEndpoint) -> tuple[object, ...]:
    return (dict(ep.meta.labels), ep.spec.ports, ep.spec.service_account_name,
            ep.spec.namespace_labels)
