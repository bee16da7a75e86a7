"""Service and EndpointSlice: validation with field paths, rendering, kubectl columns."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tabby.errors import ValidationError
from tabby.model import EndpointSlice, Service, parse_manifest, resolve_kind


def svc(spec: dict[str, Any], status: dict[str, Any] | None = None) -> Service:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": "web"}, "spec": spec}
    if status is not None:
        doc["status"] = status
    return Service.from_manifest(doc)


def errors(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        svc(spec)
    return [f"{e.path}: {e.message}" for e in info.value.errors]


def test_a_kubectl_manifest_parses_with_defaults() -> None:
    s = svc({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]})
    assert s.meta.namespace == "default"
    assert s.spec.type == "ClusterIP" and s.spec.session_affinity == "None"
    assert s.spec.ports[0].target == "http" and s.spec.ports[0].protocol == "TCP"
    assert s.spec.cluster_ips == () and s.families() == ()
    assert resolve_kind("svc") is Service and resolve_kind("endpointslices") is EndpointSlice


def test_round_trip_keeps_unknown_fields_and_allocations() -> None:
    s = svc({"type": "LoadBalancer", "clusterIPs": ["198.18.128.5", "fd7a:bb1e:2::5"],
             "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
             "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
             "sessionAffinity": "ClientIP",
             "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
             "allocateLoadBalancerNodePorts": True, "externalTrafficPolicy": "Local"},
            {"loadBalancer": {"ingress": [{"ip": "198.18.144.7", "ipMode": "VIP"}]}})
    doc = s.to_manifest()
    assert doc["spec"]["clusterIP"] == "198.18.128.5"
    assert doc["spec"]["allocateLoadBalancerNodePorts"] is True
    # what tabby does not model (ipMode) is kept, so writing the status back clobbers nothing
    assert doc["status"] == {"loadBalancer": {"ingress": [{"ip": "198.18.144.7",
                                                           "ipMode": "VIP"}]}}
    again = parse_manifest(doc)
    assert again == s
    assert s.families() == (4, 6) and s.cluster_ip(6) == ipaddress.ip_address("fd7a:bb1e:2::5")
    assert s.spec.affinity_timeout == 60 and s.spec.external_traffic_policy == "Local"


def test_errors_name_their_fields() -> None:
    found = errors({"type": "Magic", "clusterIP": "10.0.0.300", "ports": [
        {"port": 0, "protocol": "ICMP", "targetPort": "Bad_Name"},
        {"port": 81, "nodePort": 30001}],
        "ipFamilies": ["IPv5"], "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}})
    text = "\n".join(found)
    for path in ("spec.type", "spec.clusterIPs", "spec.ports[0].port", "spec.ports[0].protocol",
                 "spec.ports[0].targetPort", "spec.ports[0].name", "spec.ports[1].nodePort",
                 "spec.ipFamilies[0]", "spec.sessionAffinityConfig.clientIP.timeoutSeconds"):
        assert path in text, path


def test_headless_and_node_port_rules() -> None:
    assert svc({"clusterIP": "None", "selector": {"a": "b"}}).spec.headless
    assert "spec.clusterIPs" in "\n".join(errors({"clusterIPs": ["None", "198.18.128.1"],
                                                  "ports": [{"port": 80}]}))
    assert "spec.ports" in "\n".join(errors({"selector": {"a": "b"}}))
    found = errors({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]})
    assert any("spec.ports[0].nodePort" in line and "30000" in line for line in found)


def test_kubectl_columns() -> None:
    s = svc({"type": "NodePort", "clusterIP": "198.18.128.5",
             "ports": [{"name": "a", "port": 80, "nodePort": 30080},
                       {"name": "b", "port": 53, "protocol": "UDP", "nodePort": 30053}]})
    assert s.cluster_ip_text() == "198.18.128.5" and s.external_ip_text() == "<none>"
    assert s.ports_text() == "80:30080/TCP,53:30053/UDP"
    lb = svc({"type": "LoadBalancer", "ports": [{"port": 80}]})
    assert lb.external_ip_text() == "<pending>" and lb.cluster_ip_text() == "<none>"


def slice_doc(endpoints: list[dict[str, Any]], address_type: str = "IPv4") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": address_type, "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def test_endpoint_slice_conditions_read_as_kubernetes_reads_them() -> None:
    s = EndpointSlice.from_manifest(slice_doc([
        {"addresses": ["198.19.0.1"], "nodeName": "node-1",
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-1"}},
        {"addresses": ["198.19.0.2"], "conditions": {"ready": False, "serving": True,
                                                     "terminating": True}}]))
    unknown, draining = s.endpoints
    assert unknown.ready and unknown.serving and not unknown.terminating
    assert not draining.ready and draining.serving and draining.terminating
    assert s.service_name == "web" and s.endpoints_text() == "198.19.0.1,198.19.0.2"
    assert EndpointSlice.from_manifest(s.to_manifest()) == s


def test_endpoint_slice_errors() -> None:
    with pytest.raises(ValidationError) as info:
        EndpointSlice.from_manifest(slice_doc([{"addresses": ["fd7a:bb1e:1::1"]},
                                               {"addresses": []}]))
    paths = [e.path for e in info.value.errors]
    assert paths == ["endpoints[0].addresses[0]", "endpoints[1].addresses"]
    with pytest.raises(ValidationError, match="addressType"):
        EndpointSlice.from_manifest(slice_doc([], "IPv5"))
    # the API server serves FQDN slices: read, but never backends (kube-proxy skips them)
    with pytest.raises(ValidationError, match="not a DNS name"):
        EndpointSlice.from_manifest(slice_doc([{"addresses": ["Not_A.Name"]}], "FQDN"))
