"""Policy kinds: validation naming field paths, defaults, round trips, kind names."""

from __future__ import annotations

from typing import Any

import pytest

from tabby.errors import ValidationError
from tabby.model import (
    FelixConfiguration,
    GlobalNetworkPolicy,
    HostEndpoint,
    K8sNetworkPolicy,
    NetworkPolicy,
    NetworkSet,
    parse_manifest,
    resolve_kind,
)
from tabby.model.felixconfig import DEFAULT_FAILSAFE_IN, failsafe_ports


def k8s(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "default"}, "spec": spec}


def calico(spec: dict[str, Any], kind: str = "NetworkPolicy",
           api: str = "projectcalico.org/v3") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p"}
    if kind == "NetworkPolicy":
        meta["namespace"] = "default"
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


def errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_manifest(doc)
    return err.value.lines()


def test_kind_names_prefer_kubernetes_for_the_bare_name() -> None:
    assert resolve_kind("networkpolicy") is K8sNetworkPolicy
    assert resolve_kind("netpol") is K8sNetworkPolicy
    assert resolve_kind("networkpolicy.tabby.dev") is NetworkPolicy
    assert resolve_kind("networkpolicies.projectcalico.org") is NetworkPolicy
    assert resolve_kind("gnp") is GlobalNetworkPolicy
    assert resolve_kind("hostendpoints") is HostEndpoint
    assert resolve_kind("networkset") is NetworkSet
    assert isinstance(parse_manifest(k8s({"podSelector": {}})), K8sNetworkPolicy)
    assert isinstance(parse_manifest(calico({})), NetworkPolicy)


def test_kubernetes_policy_types_default_and_round_trip() -> None:
    p = K8sNetworkPolicy.from_manifest(k8s({"podSelector": {}}))
    assert p.spec.policy_types == ("Ingress",)
    p = K8sNetworkPolicy.from_manifest(k8s({"podSelector": {"matchLabels": {"a": "b"}},
                                            "egress": [{"ports": [{"port": "http"}]}]}))
    assert p.spec.policy_types == ("Ingress", "Egress")
    again = K8sNetworkPolicy.from_manifest(p.to_manifest())
    assert again == p


@pytest.mark.parametrize(("spec", "line"), [
    ({}, "spec.podSelector: is required"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values: must not be empty for operator In"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists",
                                            "values": ["x"]}]}},
     "spec.podSelector.matchExpressions[0].values: must be empty for operator Exists"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                              "except": ["11.0.0.0/16"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 is not inside 10.0.0.0/8"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                                                "podSelector": {}}]}]},
     "spec.ingress[0].from[0].ipBlock: cannot be combined with podSelector or namespaceSelector"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort: needs a numeric port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
     "spec.ingress[0].ports[0].endPort: 80 must be between port (90) and 65535"),
    ({"podSelector": {}, "egress": [{"ports": [{"protocol": "ICMP"}]}]},
     "spec.egress[0].ports[0].protocol: 'ICMP' is not one of TCP, UDP, SCTP"),
    ({"podSelector": {}, "policyTypes": ["Both"]},
     "spec.policyTypes: 'Both' is not one of Ingress, Egress"),
])
def test_kubernetes_policy_errors_name_the_field(spec: dict[str, Any], line: str) -> None:
    found = errors(k8s(spec))
    assert any(f.startswith(f"NetworkPolicy/default/p: {line}") for f in found), found


def test_calico_defaults_and_round_trip() -> None:
    p = NetworkPolicy.from_manifest(calico({"selector": "app == 'a'", "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"nets": ["10.0.0.0/8"]},
         "destination": {"ports": [80, "1000:2000", "http"], "notPorts": [81]}},
        {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}}]}))
    assert p.spec.types == ("Ingress",) and p.spec.order is None
    assert p.spec.ingress[1].ip_version == 4  # ICMP implies IPv4
    assert NetworkPolicy.from_manifest(p.to_manifest()) == p
    egress_only = NetworkPolicy.from_manifest(calico({"egress": [{"action": "Allow"}]}))
    assert egress_only.spec.types == ("Egress",)  # Calico: not Ingress when only egress rules
    both = NetworkPolicy.from_manifest(calico({"ingress": [{"action": "Allow"}],
                                               "egress": [{"action": "Allow"}]}))
    assert both.spec.types == ("Ingress", "Egress")


@pytest.mark.parametrize(("spec", "line"), [
    ({"selector": "app = 'x'"}, "spec.selector: selector \"app = 'x'\": unexpected character"
                                " '=' at position 4"),
    ({"ingress": [{"action": "Accept"}]},
     "spec.ingress[0].action: 'Accept' is not one of Allow, Deny, Log, Pass"),
    ({"ingress": [{"action": "Allow", "destination": {"ports": [80]}}]},
     "spec.ingress[0].destination.ports: ports need protocol TCP, UDP, SCTP or UDPLite"),
    ({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["9:1"]}}]},
     "spec.ingress[0].destination.ports[0]: '9:1' must satisfy 0 <= low <= high <= 65535"),
    ({"ingress": [{"action": "Allow", "icmp": {"type": 8}}]},
     "spec.ingress[0].icmp: needs protocol ICMP or ICMPv6"),
    ({"ingress": [{"action": "Allow", "protocol": "ICMP", "icmp": {"code": 1}}]},
     "spec.ingress[0].icmp.code: needs a type"),
    ({"ingress": [{"action": "Allow", "ipVersion": 6, "source": {"nets": ["10.0.0.0/8"]}}]},
     "spec.ingress[0].source.nets[0]: 10.0.0.0/8 is not IPv6 (ipVersion)"),
    ({"ingress": [{"action": "Allow", "protocol": "IGMPX"}]},
     "spec.ingress[0].protocol: 'IGMPX' is not one of"),
    ({"types": ["Egress"], "ingress": [{"action": "Allow"}]},
     "spec.ingress: has rules but types does not list Ingress"),
    ({"tier": "sec.urity"}, "spec.tier: 'sec.urity' is not a valid tier name"),
    ({"ingress": [{"action": "Allow", "source": {"selectr": "a == 'b'"}}]},
     "spec.ingress[0].source.selectr: unknown field (did you mean selector?)"),
])
def test_calico_policy_errors_name_the_field(spec: dict[str, Any], line: str) -> None:
    found = errors(calico(spec))
    assert any(line in f for f in found), found


def test_global_policy_options() -> None:
    doc = calico({"selector": "has(host)", "doNotTrack": True, "applyOnForward": True,
                  "ingress": [{"action": "Allow"}]}, kind="GlobalNetworkPolicy")
    p = GlobalNetworkPolicy.from_manifest(doc)
    assert p.spec.do_not_track and p.spec.apply_on_forward
    assert GlobalNetworkPolicy.from_manifest(p.to_manifest()) == p
    bad = calico({"preDNAT": True, "egress": [{"action": "Allow"}]}, kind="GlobalNetworkPolicy")
    found = errors(bad)
    assert "GlobalNetworkPolicy/p: spec.applyOnForward: must be true for doNotTrack and" \
           " preDNAT policies" in found
    assert "GlobalNetworkPolicy/p: spec.egress: preDNAT policies have ingress rules only" in found


def test_host_endpoint_network_set_and_felix_configuration() -> None:
    hep = parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "HostEndpoint",
                          "metadata": {"name": "n1", "labels": {"role": "host"}},
                          "spec": {"node": "node-1", "interfaceName": "eth0",
                                   "expectedIPs": ["198.18.0.11"],
                                   "ports": [{"name": "web", "port": 8080}]}})
    assert isinstance(hep, HostEndpoint) and hep.spec.ports[0].protocol == "TCP"
    assert HostEndpoint.from_manifest(hep.to_manifest()) == hep
    assert any("a host endpoint needs interfaceName or expectedIPs" in line for line in errors(
        {"apiVersion": "tabby.dev/v1", "kind": "HostEndpoint", "metadata": {"name": "x"},
         "spec": {"node": "node-1"}}))
    ns = parse_manifest({"apiVersion": "projectcalico.org/v3", "kind": "NetworkSet",
                         "metadata": {"name": "s", "namespace": "team"},
                         "spec": {"nets": ["10.0.0.0/8", "2001:db8::/32"]}})
    assert isinstance(ns, NetworkSet) and len(ns.nets) == 2
    felix = FelixConfiguration.from_manifest({
        "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
        "metadata": {"name": "node.node-2"},
        "spec": {"failsafeInboundHostPorts": [{"protocol": "TCP", "port": 2222}],
                 "bpfEnabled": False}})
    assert felix.to_manifest()["spec"]["bpfEnabled"] is False
    assert failsafe_ports((felix,), "node-1")[0] == DEFAULT_FAILSAFE_IN
    assert [p.port for p in failsafe_ports((felix,), "node-2")[0]] == [2222]
