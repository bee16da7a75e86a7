"""The endpoints controller's logic: allocations and desired EndpointSlices."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from tabby.errors import ValidationError
from tabby.model import IPPool, ObjectMeta, Pod, Service
from tabby.model.ippool import IPPoolSpec
from tabby.model.k8s import PodStatus
from tabby.services.controller import (
    Ranges,
    allocate,
    carry_over,
    desired_slices,
    first_free,
    needs_allocation,
)

RANGES = Ranges({4: ipaddress.ip_network("198.18.128.0/28"),
                 6: ipaddress.ip_network("fd7a:bb1e:2::/124")})
V4_ONLY = Ranges({4: ipaddress.ip_network("198.18.128.0/28")})
LB = [IPPool(ObjectMeta("lb4"), IPPoolSpec(ipaddress.ip_network("198.18.144.0/30"), 30,
                                           allowed_uses=("LoadBalancer",))),
      IPPool(ObjectMeta("pods"), IPPoolSpec(ipaddress.ip_network("198.19.0.0/16"), 26))]


def svc(name: str = "web", **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80}])
    return Service.from_manifest({"apiVersion": "v1", "kind": "Service",
                                  "metadata": {"name": name}, "spec": spec})


def test_families_follow_the_policy() -> None:
    single = allocate(svc(), [], RANGES)
    assert single.spec.ip_families == (4,) and single.spec.ip_family_policy == "SingleStack"
    assert [ip.version for ip in single.spec.cluster_ips] == [4]
    prefer = allocate(svc(ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv6"]), [], RANGES)
    assert prefer.spec.ip_families == (6, 4)
    assert [ip.version for ip in prefer.spec.cluster_ips] == [6, 4]
    assert allocate(svc(ipFamilyPolicy="PreferDualStack"), [], V4_ONLY).spec.ip_families == (4,)
    with pytest.raises(ValidationError, match="RequireDualStack"):
        allocate(svc(ipFamilyPolicy="RequireDualStack"), [], V4_ONLY)
    with pytest.raises(ValidationError, match="IPv6 is not served"):
        allocate(svc(ipFamilies=["IPv6"]), [], V4_ONLY)


def test_cluster_ips_are_unique_in_range_and_deterministic() -> None:
    taken: list[Service] = []
    for i in range(14):  # a /28 holds 14 usable addresses
        taken.append(allocate(svc(f"s{i}"), taken, V4_ONLY))
    ips = [s.spec.cluster_ips[0] for s in taken]
    assert len(set(ips)) == 14 and all(ip in V4_ONLY.cluster[4] for ip in ips)
    assert allocate(svc("s3"), taken[:3], V4_ONLY) == taken[3]
    with pytest.raises(ValidationError, match="full"):
        allocate(svc("one-too-many"), taken, V4_ONLY)
    with pytest.raises(ValidationError, match="already allocated"):
        allocate(svc("dup", clusterIP=str(ips[0])), taken, V4_ONLY)
    with pytest.raises(ValidationError, match="outside the service range"):
        allocate(svc("far", clusterIP="198.18.200.1"), [], V4_ONLY)


def test_first_free_skips_the_ends_and_what_is_taken() -> None:
    net = ipaddress.ip_network("198.18.128.0/30")
    assert first_free(net, set(), 0) == ipaddress.ip_address("198.18.128.1")
    assert first_free(net, {ipaddress.ip_address("198.18.128.1")}, 0) == \
        ipaddress.ip_address("198.18.128.2")
    assert first_free(net, {ipaddress.ip_address("198.18.128.1"),
                            ipaddress.ip_address("198.18.128.2")}, 5) is None


def test_node_ports_and_load_balancer_ips() -> None:
    a = allocate(svc("a", type="LoadBalancer", ports=[{"name": "x", "port": 80},
                                                      {"name": "y", "port": 53,
                                                       "protocol": "UDP"}]), [], V4_ONLY, LB)
    ports = [p.node_port for p in a.spec.ports]
    assert all(p is not None and 30000 <= p <= 32767 for p in ports) and len(set(ports)) == 2
    assert a.ingress and a.ingress[0] in LB[0].spec.cidr
    b = allocate(svc("b", type="LoadBalancer"), [a], V4_ONLY, LB)
    assert b.ingress and b.ingress[0] != a.ingress[0]
    c = allocate(svc("c", type="LoadBalancer"), [a, b], V4_ONLY, LB)
    assert c.ingress == () and needs_allocation(c)  # pending: the /30 pool is full
    with pytest.raises(ValidationError, match="nodePort"):
        allocate(svc("d", type="NodePort", ports=[{"port": 80, "nodePort": ports[0]}]),
                 [a], V4_ONLY)
    wanted = allocate(svc("e", type="LoadBalancer", loadBalancerIP="198.18.150.9"), [], V4_ONLY)
    assert wanted.ingress == (ipaddress.ip_address("198.18.150.9"),)
    plain = allocate(dataclasses.replace(a, spec=dataclasses.replace(a.spec, type="ClusterIP",
                                                                     ports=(a.spec.ports[0],))),
                     [], V4_ONLY, LB)
    assert plain.ingress == ()


def test_reapplying_keeps_what_was_allocated() -> None:
    first = allocate(svc(type="NodePort"), [], V4_ONLY)
    again = carry_over(svc(type="NodePort"), first)
    assert again.spec.cluster_ips == first.spec.cluster_ips
    assert again.spec.ports == first.spec.ports and not needs_allocation(again)
    with pytest.raises(ValidationError, match="immutable"):
        carry_over(svc(clusterIP="198.18.128.9"), first)


def pod(name: str, labels: dict[str, str], ips: tuple[str, ...] = ("198.19.0.1",),
        phase: str = "Running", ports: list[dict[str, Any]] | None = None,
        node: str = "node-1") -> Pod:
    p = Pod.from_manifest({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": name, "labels": labels},
                           "spec": {"nodeName": node, "containers": [
                               {"name": "c", "ports": ports or []}]}})
    return dataclasses.replace(p, status=PodStatus(
        phase, tuple(ipaddress.ip_address(ip) for ip in ips)))


def test_slices_follow_selected_pods_by_family_and_named_port() -> None:
    s = allocate(svc(selector={"app": "web"}, ipFamilyPolicy="PreferDualStack",
                     ports=[{"name": "http", "port": 80, "targetPort": "http"}]), [], RANGES)
    pods = [pod("a", {"app": "web"}, ("198.19.0.1", "fd7a:bb1e:1::1"),
                ports=[{"containerPort": 8080, "name": "http"}]),
            pod("b", {"app": "web"}, ("198.19.0.2", "fd7a:bb1e:1::2"), phase="Pending",
                ports=[{"containerPort": 9090, "name": "http"}]),
            pod("c", {"app": "web"}, ("198.19.0.3",)),  # no port named http: left out
            pod("d", {"app": "db"}, ("198.19.0.4",),
                ports=[{"containerPort": 8080, "name": "http"}])]
    slices = desired_slices(s, pods)
    by_type = sorted((x.address_type, x.ports[0].port, [str(e.addresses[0]) for e in x.endpoints],
                      [e.ready for e in x.endpoints]) for x in slices)
    assert by_type == [(4, 8080, ["198.19.0.1"], [True]), (4, 9090, ["198.19.0.2"], [False]),
                       (6, 8080, ["fd7a:bb1e:1::1"], [True]),
                       (6, 9090, ["fd7a:bb1e:1::2"], [False])]
    for x in slices:
        assert x.service_name == "web" and x.meta.name.startswith("web-ipv")
        assert x.endpoints[0].node_name == "node-1"
    assert desired_slices(svc(), pods) == ()  # no selector: not managed
    assert desired_slices(s, pods) == slices  # same inputs, same slices
