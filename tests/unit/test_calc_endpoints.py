"""Workload endpoint contents from Pod and Namespace objects: pure."""

from __future__ import annotations

import ipaddress

from tabby.calc.endpoints import Attachment, endpoint_updates, new_endpoint, refreshed_endpoint
from tabby.model import Namespace, Pod, WorkloadEndpoint
from tabby.snapshot import Snapshot


def pod(name: str, labels: dict[str, str], ns: str = "default", sa: str = "") -> Pod:
    spec = {"containers": [{"name": "c", "ports": [
        {"containerPort": 8080, "name": "http"}, {"containerPort": 53, "protocol": "UDP"}]}]}
    if sa:
        spec["serviceAccountName"] = sa
    return Pod.from_manifest({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": name, "namespace": ns, "labels": labels},
                              "spec": spec})


def namespace(name: str, labels: dict[str, str]) -> Namespace:
    return Namespace.from_manifest({"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": name, "labels": labels}})


ATT = Attachment(node="node-1", namespace="default", pod="web", container_id="c1",
                 ifname="eth0", host_veth="tab000000000001", mac="02:00:00:00:00:01",
                 networks=(ipaddress.ip_network("198.19.0.1/32"),
                           ipaddress.ip_network("fd7a:bb1e:1::1/128")))


def test_new_endpoint_carries_pod_and_namespace_data() -> None:
    ep = new_endpoint(ATT, pod("web", {"app": "web"}, sa="robot"),
                      namespace("default", {"team": "a"}))
    assert ep.meta.name == "node--1-k8s-web-eth0" and ep.meta.namespace == "default"
    assert dict(ep.meta.labels) == {"app": "web", "projectcalico.org/namespace": "default",
                                    "projectcalico.org/orchestrator": "k8s"}
    assert ep.spec.namespace_labels == (("kubernetes.io/metadata.name", "default"),
                                        ("team", "a"))
    assert [(p.name, p.protocol, p.port) for p in ep.spec.ports] == [
        ("http", "TCP", 8080), ("", "UDP", 53)]
    assert ep.spec.service_account_name == "robot"
    assert ep.spec.interface_name == "tab000000000001" and ep.spec.container_id == "c1"
    # and it survives the store's round trip
    assert WorkloadEndpoint.from_manifest(ep.to_manifest()) == ep


def test_new_endpoint_without_pod_or_namespace_objects() -> None:
    ep = new_endpoint(ATT, None, None)
    assert dict(ep.meta.labels) == {"projectcalico.org/namespace": "default",
                                    "projectcalico.org/orchestrator": "k8s"}
    assert ep.spec.ports == () and ep.spec.namespace_labels == ()


def test_updates_follow_relabelled_pods_and_namespaces() -> None:
    ep = new_endpoint(ATT, pod("web", {"app": "web"}), namespace("default", {}))
    same = Snapshot.build(endpoints=[ep], pods=[pod("web", {"app": "web"})],
                          namespaces=[namespace("default", {})])
    assert endpoint_updates(same, "node-1") == []
    relabelled = Snapshot.build(endpoints=[ep], pods=[pod("web", {"app": "api"})],
                                namespaces=[namespace("default", {"team": "b"})])
    [want] = endpoint_updates(relabelled, "node-1")
    assert want.meta.labels["app"] == "api"
    assert ("team", "b") in want.spec.namespace_labels
    assert endpoint_updates(relabelled, "node-2") == []  # not that node's endpoint


def test_missing_pod_keeps_what_the_endpoint_has() -> None:
    ep = new_endpoint(ATT, pod("web", {"app": "web"}), None)
    assert refreshed_endpoint(ep, None, None) == ep
    assert endpoint_updates(Snapshot.build(endpoints=[ep]), "node-1") == []
