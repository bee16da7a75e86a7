"""The services part of the nft table: verdicts, slots, and deltas that touch elements only."""

from __future__ import annotations

import ipaddress
from typing import Any

from tabby.model import EndpointSlice, Node, Resource, Service
from tabby.nft.model import Ruleset
from tabby.nft.render import render_delta
from tabby.services.nft import services_part
from tabby.services.view import port_views
from tabby.snapshot import Snapshot

NODE = Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                           "metadata": {"name": "node-1"},
                           "spec": {"bgp": {"ipv4Address": "198.18.0.11/24"}}})


def service(name: str, ip: str, **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80, "targetPort": 8080}])
    return Service.from_manifest({"apiVersion": "v1", "kind": "Service",
                                  "metadata": {"name": name},
                                  "spec": {"clusterIP": ip, "ipFamilies": ["IPv4"], **spec}})


def endpoints(service_name: str, *ips: str, node: str = "node-2", ready: bool = True,
              port: int = 8080) -> EndpointSlice:
    return EndpointSlice.from_manifest({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-x", "labels": {
            "kubernetes.io/service-name": service_name}},
        "addressType": "IPv4", "ports": [{"name": "", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}
                      for ip in ips]})


def part(*objects: Resource, node: str = "node-1") -> Ruleset:
    return services_part(Snapshot.build(nodes=[NODE], others=objects), node)


def elements(ruleset: Ruleset, name: str) -> dict[str, str]:
    if name in ruleset.maps:
        return dict(ruleset.maps[name].elements)
    return {e: "" for e in ruleset.sets[name].elements}


def test_one_verdict_per_service_port_and_one_slot_per_endpoint() -> None:
    r = part(service("a", "198.18.128.1"), endpoints("a", "198.19.0.1", "198.19.0.2"))
    assert elements(r, "svc-ips-v4") == {"198.18.128.1 . tcp . 80": "goto svc-n2"}
    assert elements(r, "svc-eps-v4") == {"198.18.128.1 . tcp . 80 . 0": "198.19.0.1 . 8080",
                                         "198.18.128.1 . tcp . 80 . 1": "198.19.0.2 . 8080"}
    chain = r.chains["svc-n2"]
    assert any("numgen random mod 2 map @svc-eps-v4" in rule.body for rule in chain.rules)
    assert elements(r, "svc-cips-v4") == {"198.18.128.1": ""}


def test_endpoint_changes_touch_elements_only() -> None:
    objs: list[Resource] = [service("a", "198.18.128.1"), service("b", "198.18.128.2"),
                            service("c", "198.18.128.3"),
                            endpoints("b", "198.19.0.5", "198.19.0.6", "198.19.0.7"),
                            endpoints("c", "198.19.0.8", "198.19.0.9")]
    before = part(*objs, endpoints("a", "198.19.0.1", "198.19.0.2"))
    swapped = part(*objs, endpoints("a", "198.19.0.1", "198.19.0.3"))
    grown = part(*objs, endpoints("a", "198.19.0.1", "198.19.0.2", "198.19.0.4"))
    for after in (swapped, grown):
        lines = render_delta(before, after).splitlines()
        assert lines and all(" element " in line for line in lines), lines
    assert any("goto svc-n3" in line for line in render_delta(before, grown).splitlines())
    # the last endpoint leaving: the verdict goes, the address now rejects in the filter hook
    empty = render_delta(before, part(*objs, endpoints("a", "198.19.0.1", ready=False)))
    assert all(" element " in line for line in empty.splitlines())
    assert "delete element inet tabby svc-ips-v4 { 198.18.128.1 . tcp . 80 }" in empty


def test_terminating_endpoints_serve_only_when_none_is_ready() -> None:
    slice_ = EndpointSlice.from_manifest({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "a-x", "labels": {"kubernetes.io/service-name": "a"}},
        "addressType": "IPv4", "ports": [{"name": "", "port": 8080}],
        "endpoints": [{"addresses": ["198.19.0.1"],
                       "conditions": {"ready": False, "serving": True, "terminating": True}},
                      {"addresses": ["198.19.0.2"],
                       "conditions": {"ready": False, "serving": False, "terminating": True}}]})
    (view,) = port_views(Snapshot.build(others=[service("a", "198.18.128.1"), slice_]))
    assert [str(b.address) for b in view.backends] == ["198.19.0.1"]


def test_external_traffic_policy() -> None:
    objs = [endpoints("a", "198.19.0.1", node="node-1"), endpoints("b", "198.19.0.2")]
    cluster = part(service("a", "198.18.128.1", type="NodePort", externalIPs=["198.18.150.1"],
                           ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]), *objs)
    assert elements(cluster, "svc-xips-v4") == {"198.18.150.1 . tcp . 80": "goto svc-m-n1"}
    assert elements(cluster, "svc-xnp-v4") == {"tcp . 30080": "goto svc-m-np-n1"}
    assert {"svc-m-n1", "svc-n1", "svc-m-np-n1", "svc-np-n1"} <= set(cluster.chains)
    local = part(service("a", "198.18.128.1", type="NodePort", externalTrafficPolicy="Local",
                         ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]),
                 service("b", "198.18.128.2", type="NodePort", externalTrafficPolicy="Local",
                         ports=[{"port": 80, "targetPort": 8080, "nodePort": 30081}]), *objs)
    assert elements(local, "svc-xnp-v4") == {"tcp . 30080": "goto svc-x-np-n1"}  # not b: remote
    assert elements(local, "svc-xnpeps-v4") == {"tcp . 30080 . 0": "198.19.0.1 . 8080"}
    assert elements(local, "svc-noepnp-v4") == {"tcp . 30080": "drop", "tcp . 30081": "drop"}
    assert elements(local, "svc-np-v4")["tcp . 30081"] == "goto svc-np-n1"  # pods: any
    assert elements(local, "svc-hairpin-v4") == {"198.19.0.1 . 198.19.0.1": ""}


def test_no_endpoints_rejects_and_internal_local_drops() -> None:
    r = part(service("a", "198.18.128.1", type="LoadBalancer",
                     ports=[{"port": 80, "nodePort": 30080}]),
             service("b", "198.18.128.2", internalTrafficPolicy="Local"),
             endpoints("b", "198.19.0.2"))
    assert "198.18.128.1 . tcp . 80" not in elements(r, "svc-ips-v4")
    assert elements(r, "svc-noepnp-v4") == {"tcp . 30080": "goto svc-reject"}
    assert elements(r, "svc-noep-v4") == {"198.18.128.2 . tcp . 80": "drop"}
    assert set(elements(r, "svc-cips-v4")) == {"198.18.128.1", "198.18.128.2"}


def test_session_affinity_gets_chains_and_client_sets_of_its_own() -> None:
    r = part(service("a", "198.18.128.1", sessionAffinity="ClientIP",
                     sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}}),
             endpoints("a", "198.19.0.1", "198.19.0.2"))
    (verdict,) = elements(r, "svc-ips-v4").values()
    top = r.chains[verdict.removeprefix("goto ")]
    assert sorted(rule.body.split(" goto ")[0] for rule in top.rules[:2]) == [
        f"ip saddr @{name}" for name in sorted(r.sets) if name.startswith("svcaff-")]
    assert "numgen random mod 2 vmap" in top.rules[2].body
    per_endpoint = [c for n, c in r.chains.items() if n.startswith(verdict[5:] + "-")]
    assert sorted(c.rules[1].body.rsplit(" ", 1)[1] for c in per_endpoint) == [
        "198.19.0.1:8080", "198.19.0.2:8080"]
    assert all("timeout 30s" in c.rules[0].body for c in per_endpoint)
    assert all(r.sets[n].flags == ("dynamic", "timeout") for n in r.sets if "aff" in n)
    assert "svc-n2" not in r.chains


def test_two_services_claiming_one_address_resolve_the_same_way_everywhere() -> None:
    objs = [service("a", "198.18.128.1", externalIPs=["198.18.150.1"]),
            service("b", "198.18.128.2", externalIPs=["198.18.150.1"]),
            endpoints("a", "198.19.0.1"), endpoints("b", "198.19.0.2", "198.19.0.3")]
    first, second = part(*objs), part(*reversed(objs))
    assert first == second
    assert elements(first, "svc-ips-v4")["198.18.150.1 . tcp . 80"] == "goto svc-n1"


def test_ipv6_and_headless() -> None:
    v6 = Service.from_manifest({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
                                "spec": {"clusterIPs": ["fd7a:bb1e:2::1"], "ipFamilies": ["IPv6"],
                                         "ports": [{"port": 80}]}})
    slice_ = EndpointSlice.from_manifest({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "a-x", "labels": {"kubernetes.io/service-name": "a"}},
        "addressType": "IPv6", "ports": [{"name": "", "port": 80}],
        "endpoints": [{"addresses": ["fd7a:bb1e:1::5"]}]})
    headless = Service.from_manifest({"apiVersion": "v1", "kind": "Service",
                                      "metadata": {"name": "h"},
                                      "spec": {"clusterIP": "None", "selector": {"a": "b"}}})
    r = part(v6, slice_, headless)
    assert elements(r, "svc-ips-v6") == {"fd7a:bb1e:2::1 . tcp . 80": "goto svc-n1"}
    assert elements(r, "svc-eps-v6") == {"fd7a:bb1e:2::1 . tcp . 80 . 0": "fd7a:bb1e:1::5 . 80"}
    assert ipaddress.ip_address("fd7a:bb1e:2::1") not in {
        ipaddress.ip_address(e) for e in elements(r, "svc-cips-v4")}
