"""Synthetic clusters for policy scale tests and benchmarks (pure data, no I/O).

``cluster(policies=1000, endpoints=10000, nodes=10)`` returns a Snapshot
shaped like a real cluster: namespaces with team labels, apps of ten replicas
(``app``, ``tier`` labels, a named port ``http``), endpoints spread over
nodes, and Kubernetes NetworkPolicies of the common shapes (default deny per
namespace, allow from an app, from a team's namespaces, from an ipBlock, on
ports by number and by name). ``with_pod`` adds one endpoint, ``with_policy``
changes one policy: the single changes the latency goals speak of.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from typing import Any

import yaml

from tabby.model import (
    K8sNetworkPolicy,
    Namespace,
    ObjectMeta,
    Pod,
    Resource,
    WorkloadEndpoint,
    endpoint_name,
    parse_manifest,
)
from tabby.model.workloadendpoint import EndpointPort, WorkloadEndpointSpec
from tabby.snapshot import Snapshot

POD_NET = ipaddress.IPv4Network("198.19.0.0/16")
POD_NET6 = ipaddress.IPv6Network("fd7a:bb1e:1::/64")


def namespace(i: int) -> Namespace:
    return Namespace.from_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": f"ns-{i}", "labels": {"team": f"t{i % 10}"}}})


def endpoint(i: int, nodes: int, ns_count: int, *, dual: bool = False) -> WorkloadEndpoint:
    group = i // 10  # ten replicas per app, an app in one namespace
    ns = f"ns-{group % ns_count}"
    app = f"app-{group}"
    node = f"node-{i % nodes + 1}"
    pod = f"pod-{i}"
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
        ipaddress.ip_network(f"{POD_NET.network_address + i}/32")]
    if dual:
        nets.append(ipaddress.ip_network(f"{POD_NET6.network_address + i}/128"))
    labels = {"app": app, "tier": ("web", "api", "db")[i % 3],
              "projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s"}
    spec = WorkloadEndpointSpec(
        node=node, pod=pod, container_id=f"c{i}", interface_name=f"tab{i:012x}",
        ip_networks=tuple(nets), ports=(EndpointPort("http", "TCP", 8080),),
        service_account_name="default",
        namespace_labels=(("kubernetes.io/metadata.name", ns),
                          ("team", f"t{group % ns_count % 10}")))
    meta = ObjectMeta(name=endpoint_name(node, pod), namespace=ns, labels=labels)
    return WorkloadEndpoint(meta=meta, spec=spec)


def policy(i: int, ns_count: int, apps: int, *, port: int = 80) -> K8sNetworkPolicy:
    ns = f"ns-{i % ns_count}"
    shape = (i // ns_count) % 4
    spec: dict[str, Any]
    if shape == 0:
        spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
    elif shape == 1:
        spec = {"podSelector": {"matchLabels": {"app": f"app-{i % apps}"}}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app": f"app-{(i + ns_count) % apps}"}}}],
            "ports": [{"port": port}, {"port": "http"}]}]}
    elif shape == 2:
        spec = {"podSelector": {"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["web", "api"]}]}, "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"team": f"t{i % 10}"}},
                          "podSelector": {"matchLabels": {"tier": "web"}}}],
                "ports": [{"port": port, "endPort": port + 10}]}]}
    else:
        spec = {"podSelector": {"matchLabels": {"app": f"app-{i % apps}"}},
                "policyTypes": ["Egress"], "egress": [
                    {"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                         "except": [f"10.{i % 250}.0.0/16"]}}],
                     "ports": [{"protocol": "UDP", "port": 53}]},
                    {"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}]}]}
    return K8sNetworkPolicy.from_manifest({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": f"pol-{i}", "namespace": ns}, "spec": spec})


def cluster(policies: int = 1000, endpoints: int = 10000, nodes: int = 10,
            *, dual: bool = False) -> Snapshot:
    ns_count = max(1, endpoints // 100)
    apps = max(1, endpoints // 10)
    return Snapshot.build(
        namespaces=[namespace(i) for i in range(ns_count)],
        endpoints=[endpoint(i, nodes, ns_count, dual=dual) for i in range(endpoints)],
        others=[policy(i, ns_count, apps) for i in range(policies)])


def with_pod(snapshot: Snapshot, i: int, nodes: int) -> Snapshot:
    """``snapshot`` plus endpoint number ``i`` (every other object kept as it is)."""
    ns_count = max(1, len(snapshot.namespaces))
    ep = endpoint(i, nodes, ns_count)
    return dataclasses.replace(snapshot, endpoints=(*snapshot.endpoints, ep))


def with_policy(snapshot: Snapshot, i: int, port: int) -> Snapshot:
    """``snapshot`` with policy number ``i`` changed to allow ``port``."""
    ns_count = max(1, len(snapshot.namespaces))
    apps = max(1, len(snapshot.endpoints) // 10)
    new = policy(i, ns_count, apps, port=port)
    others = tuple(new if (isinstance(o, K8sNetworkPolicy) and o.meta.name == new.meta.name
                           and o.meta.namespace == new.meta.namespace) else o
                   for o in snapshot.others)
    return dataclasses.replace(snapshot, others=others)


def snapshot_of(objects: list[Resource]) -> Snapshot:
    """A Snapshot holding ``objects`` (each in its place by kind)."""
    return Snapshot.build(
        endpoints=[o for o in objects if isinstance(o, WorkloadEndpoint)],
        namespaces=[o for o in objects if isinstance(o, Namespace)],
        pods=[o for o in objects if isinstance(o, Pod)],
        others=[o for o in objects if not isinstance(o, WorkloadEndpoint | Namespace | Pod)])


def from_yaml(text: str) -> list[Resource]:
    """Every document of ``text``, parsed and validated."""
    return [parse_manifest(doc) for doc in yaml.safe_load_all(text) if doc]


def pod_endpoint(ref: str, labels: dict[str, str], node: str = "node-1",
                 ips: tuple[str, ...] = (), ports: tuple[tuple[str, str, int], ...] = (),
                 service_account: str = "default", interface: str = "",
                 namespace_labels: dict[str, str] | None = None) -> WorkloadEndpoint:
    """A WorkloadEndpoint as the agent writes it for pod ``ns/name``."""
    ns, _, pod = ref.partition("/")
    own = {**labels, "projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s"}
    nets = tuple(ipaddress.ip_network(ip) for ip in ips)
    iface = interface or "tab" + hashlib.sha1(ref.encode()).hexdigest()[:12]
    spec = WorkloadEndpointSpec(
        node=node, pod=pod, container_id=f"c-{pod}", interface_name=iface, ip_networks=nets,
        ports=tuple(EndpointPort(n, p, num) for n, p, num in ports),
        service_account_name=service_account,
        namespace_labels=tuple(sorted({"kubernetes.io/metadata.name": ns,
                                       **(namespace_labels or {})}.items())))
    return WorkloadEndpoint(meta=ObjectMeta(name=endpoint_name(node, pod), namespace=ns,
                                            labels=own), spec=spec)
