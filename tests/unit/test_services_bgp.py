"""Host routes for externalTrafficPolicy Local services: only from nodes with an endpoint."""

from __future__ import annotations

from typing import Any

from tabby.model import BGPConfiguration, EndpointSlice, Resource, Service
from tabby.services.bgp import local_service_routes
from tabby.snapshot import Snapshot


def doc(kind: str, name: str, body: dict[str, Any], api: str = "v1",
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, **(
        {"labels": labels} if labels else {})}, **body}


def world(policy: str, ranges: dict[str, Any]) -> list[Resource]:
    config = BGPConfiguration.from_manifest(doc("BGPConfiguration", "default",
                                                {"spec": ranges}, "tabby.dev/v1"))
    svc = Service.from_manifest(doc("Service", "lb", {
        "spec": {"type": "LoadBalancer", "clusterIP": "198.18.128.5", "ipFamilies": ["IPv4"],
                 "externalTrafficPolicy": policy, "externalIPs": ["198.18.150.9"],
                 "ports": [{"port": 80, "nodePort": 30080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "198.18.144.3"}]}}}))
    eps = EndpointSlice.from_manifest(doc("EndpointSlice", "lb-x", {
        "addressType": "IPv4", "ports": [{"name": "", "port": 80}],
        "endpoints": [{"addresses": ["198.19.0.1"], "nodeName": "node-1"}]},
        "discovery.k8s.io/v1", {"kubernetes.io/service-name": "lb"}))
    return [config, svc, eps]


ALL = {"serviceClusterIPs": [{"cidr": "198.18.128.0/20"}],
       "serviceExternalIPs": [{"cidr": "198.18.150.0/24"}],
       "serviceLoadBalancerIPs": [{"cidr": "198.18.144.0/24"}]}


def routes(objs: list[Resource], node: str) -> list[str]:
    return [str(net) for net, _ in local_service_routes(Snapshot.build(others=objs), node)]


def test_local_services_are_announced_by_nodes_with_endpoints() -> None:
    objs = world("Local", ALL)
    assert routes(objs, "node-1") == ["198.18.128.5/32", "198.18.144.3/32", "198.18.150.9/32"]
    assert routes(objs, "node-2") == []
    (_, why), *_ = local_service_routes(Snapshot.build(others=objs), "node-1")
    assert why == "service default/lb (externalTrafficPolicy Local)"


def test_only_addresses_within_announced_ranges_of_their_kind() -> None:
    only_lb = {"serviceLoadBalancerIPs": [{"cidr": "198.18.144.0/24"}],
               "serviceExternalIPs": [{"cidr": "198.18.144.0/24"}]}
    assert routes(world("Local", only_lb), "node-1") == ["198.18.144.3/32"]
    assert routes(world("Cluster", ALL), "node-1") == []
    assert routes(world("Local", {}), "node-1") == []
