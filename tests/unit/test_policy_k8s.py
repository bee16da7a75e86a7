"""Kubernetes NetworkPolicy semantics, as tables of expected verdicts from the explain engine.

The engine evaluates the same compiled rules the nftables compiler renders;
tests/golden and tests/netns check the rendering and the kernel.

World: namespaces ``default`` (no labels), ``team`` (tier=back), ``other``
(tier=front); pods default/a (app=a, http=80/TCP, dns=53/UDP), default/b
(app=b, http=8080/TCP), team/c (app=c, role=db), other/d (app=d).
"""

from __future__ import annotations

import ipaddress

import pytest

from tabby.model import Resource
from tabby.policy.explain import explain, find_pod, protocol_number
from tabby.policy.program import build_program
from tabby.policy.synthetic import from_yaml, pod_endpoint, snapshot_of

NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {tier: back}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {tier: front}}
"""

PODS = [
    pod_endpoint("default/a", {"app": "a"}, "node-1", ("198.19.0.1/32", "fd7a:bb1e:1::1/128"),
                 (("http", "TCP", 80), ("dns", "UDP", 53))),
    pod_endpoint("default/b", {"app": "b"}, "node-1", ("198.19.0.2/32", "fd7a:bb1e:1::2/128"),
                 (("http", "TCP", 8080),)),
    pod_endpoint("team/c", {"app": "c", "role": "db"}, "node-2",
                 ("198.19.0.65/32", "fd7a:bb1e:1::41/128"), namespace_labels={"tier": "back"}),
    pod_endpoint("other/d", {"app": "d"}, "node-2", ("198.19.0.66/32",),
                 namespace_labels={"tier": "front"}),
]


def world(policies: str = "", extra: list[Resource] | None = None) -> list[Resource]:
    return [*from_yaml(NAMESPACES), *PODS, *from_yaml(policies), *(extra or [])]


def verdict(objects: list[Resource], src: str, dst: str, port: int | None = 80,
            protocol: str = "tcp", family: int | None = None) -> str:
    program = build_program(snapshot_of(objects), None)
    source = find_pod(program, *src.split("/"))
    try:
        target: object = ipaddress.ip_address(dst)
    except ValueError:
        target = find_pod(program, *dst.split("/"))
    result = explain(program, source, target, protocol_number(protocol), port,  # type: ignore[arg-type]
                     family=family)
    return result.verdict


def policy(name: str, spec: str, ns: str = "default") -> str:
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n")


DENY_ALL = policy("deny-all", "  podSelector: {}")
DENY_EGRESS = policy("deny-egress", "  podSelector: {}\n  policyTypes: [Egress]")


def test_without_policy_everything_connects() -> None:
    w = world()
    for src, dst in [("default/a", "team/c"), ("team/c", "default/a"), ("other/d", "default/b")]:
        assert verdict(w, src, dst) == "allow"


def test_default_deny_ingress_closes_only_the_selected_pods_ingress() -> None:
    w = world(DENY_ALL)
    assert verdict(w, "team/c", "default/a") == "deny"
    assert verdict(w, "default/b", "default/a") == "deny"  # same namespace too
    assert verdict(w, "default/a", "team/c") == "allow"  # egress untouched
    assert verdict(w, "other/d", "team/c") == "allow"  # other namespaces untouched
    assert verdict(w, "team/c", "default/a", family=6) == "deny"


def test_default_deny_egress() -> None:
    w = world(DENY_EGRESS)
    assert verdict(w, "default/a", "team/c") == "deny"
    assert verdict(w, "default/a", "203.0.113.9") == "deny"
    assert verdict(w, "team/c", "default/a") == "allow"


@pytest.mark.parametrize(("selector", "selected"), [
    ("matchLabels: {app: a}", {"a"}),
    ("matchExpressions: [{key: app, operator: In, values: [a, b]}]", {"a", "b"}),
    ("matchExpressions: [{key: app, operator: NotIn, values: [a]}]", {"b"}),
    ("matchExpressions: [{key: app, operator: Exists}]", {"a", "b"}),
    ("matchExpressions: [{key: role, operator: DoesNotExist}]", {"a", "b"}),
    ("matchExpressions: [{key: app, operator: DoesNotExist}]", set()),
    ("matchLabels: {app: a}\n    matchExpressions: [{key: app, operator: In, values: [b]}]",
     set()),
])
def test_pod_selector_forms(selector: str, selected: set[str]) -> None:
    w = world(policy("sel", f"  podSelector:\n    {selector}"))
    for pod in ("a", "b"):
        expected = "deny" if pod in selected else "allow"
        assert verdict(w, "team/c", f"default/{pod}") == expected, pod


@pytest.mark.parametrize(("types", "ingress_closed", "egress_closed"), [
    ("", True, False),  # no egress rules: Ingress only
    ("  egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}]}]", True, True),  # both
    ("  policyTypes: [Egress]", False, True),
    ("  policyTypes: [Ingress, Egress]", True, True),
    ("  policyTypes: [Egress]\n  ingress: [{}]", False, True),  # ingress rules ignored
])
def test_policy_types_and_their_defaults(types: str, ingress_closed: bool,
                                          egress_closed: bool) -> None:
    w = world(policy("types", f"  podSelector: {{matchLabels: {{app: a}}}}\n{types}"))
    assert (verdict(w, "team/c", "default/a") == "deny") is ingress_closed
    assert (verdict(w, "default/a", "team/c") == "deny") is egress_closed


@pytest.mark.parametrize(("peers", "allowed"), [
    ("[{podSelector: {matchLabels: {app: b}}}]", {"default/b"}),
    ("[{podSelector: {}}]", {"default/b"}),  # the policy's namespace only
    ("[{namespaceSelector: {matchLabels: {tier: back}}}]", {"team/c"}),
    ("[{namespaceSelector: {}}]", {"default/b", "team/c", "other/d"}),
    ("[{namespaceSelector: {matchExpressions: [{key: tier, operator: Exists}]},"
     " podSelector: {matchLabels: {app: d}}}]", {"other/d"}),  # both in one peer: AND
    ("[{namespaceSelector: {matchLabels: {tier: back}}}, {podSelector: {matchLabels: {app: b}}}]",
     {"default/b", "team/c"}),  # several peers: OR
    ("[{ipBlock: {cidr: 198.19.0.64/26}}]", {"team/c", "other/d"}),
    ("[{ipBlock: {cidr: 198.19.0.64/26, except: [198.19.0.66/32]}}]", {"team/c"}),
    ("[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]", {"other/d"}),
])
def test_ingress_peers(peers: str, allowed: set[str]) -> None:
    w = world(policy("peers", f"  podSelector: {{matchLabels: {{app: a}}}}\n"
                              f"  ingress: [{{from: {peers}}}]"))
    for src in ("default/b", "team/c", "other/d"):
        expected = "allow" if src in allowed else "deny"
        assert verdict(w, src, "default/a") == expected, src


def test_egress_peers_and_ip_block() -> None:
    w = world(policy("out", "  podSelector: {matchLabels: {app: a}}\n  egress:\n"
                            "  - to: [{namespaceSelector: {matchLabels: {tier: back}}}]\n"
                            "  - to: [{ipBlock: {cidr: 203.0.113.0/24,"
                            " except: [203.0.113.8/29]}}]"))
    assert verdict(w, "default/a", "team/c") == "allow"
    assert verdict(w, "default/a", "other/d") == "deny"
    assert verdict(w, "default/a", "203.0.113.1") == "allow"
    assert verdict(w, "default/a", "203.0.113.9") == "deny"
    assert verdict(w, "default/a", "fd7a:bb1e:1::41") == "allow"  # team/c by IPv6
    assert verdict(w, "default/a", "2001:db8::1") == "deny"


@pytest.mark.parametrize(("ports", "cases"), [
    ("[{port: 80}]", {(80, "tcp"): True, (81, "tcp"): False, (80, "udp"): False}),
    ("[{protocol: UDP, port: 53}]", {(53, "udp"): True, (53, "tcp"): False}),
    ("[{protocol: SCTP, port: 80}]", {(80, "sctp"): True, (80, "tcp"): False}),
    ("[{protocol: TCP}]", {(1, "tcp"): True, (65535, "tcp"): True, (53, "udp"): False}),
    ("[{port: 1000, endPort: 2000}]", {(999, "tcp"): False, (1000, "tcp"): True,
                                        (2000, "tcp"): True, (2001, "tcp"): False}),
    ("[{port: 80}, {protocol: UDP, port: 53}]", {(80, "tcp"): True, (53, "udp"): True,
                                                  (53, "tcp"): False}),
])
def test_ports_protocols_and_ranges(ports: str, cases: dict[tuple[int, str], bool]) -> None:
    w = world(policy("ports", f"  podSelector: {{}}\n  ingress: [{{ports: {ports}}}]"))
    for (port, proto), ok in cases.items():
        assert (verdict(w, "team/c", "default/a", port, proto) == "allow") is ok, (port, proto)


def test_named_ports_resolve_per_destination_pod() -> None:
    w = world(policy("named", "  podSelector: {}\n  ingress: [{ports: [{port: http}]}]"))
    assert verdict(w, "team/c", "default/a", 80) == "allow"  # a: http = 80
    assert verdict(w, "team/c", "default/a", 8080) == "deny"
    assert verdict(w, "team/c", "default/b", 8080) == "allow"  # b: http = 8080
    assert verdict(w, "team/c", "default/b", 80) == "deny"
    assert verdict(w, "team/c", "default/a", 80, family=6) == "allow"
    udp = world(policy("dns", "  podSelector: {}\n"
                              "  ingress: [{ports: [{protocol: UDP, port: dns}]}]"))
    assert verdict(udp, "team/c", "default/a", 53, "udp") == "allow"
    assert verdict(udp, "team/c", "default/a", 53, "tcp") == "deny"  # dns is a UDP port


def test_named_port_in_egress_resolves_against_the_destination() -> None:
    w = world(policy("out", "  podSelector: {matchLabels: {app: c}}\n  egress:\n"
                            "  - to: [{namespaceSelector: {}}]\n    ports: [{port: http}]",
                     ns="team"))
    assert verdict(w, "team/c", "default/a", 80) == "allow"
    assert verdict(w, "team/c", "default/b", 8080) == "allow"
    assert verdict(w, "team/c", "default/b", 80) == "deny"
    assert verdict(w, "team/c", "other/d", 80) == "deny"  # d declares no http port


def test_several_policies_union() -> None:
    w = world(policy("from-b", "  podSelector: {matchLabels: {app: a}}\n"
                               "  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]")
              + policy("on-81", "  podSelector: {matchLabels: {app: a}}\n"
                                "  ingress: [{ports: [{port: 81}]}]"))
    assert verdict(w, "default/b", "default/a", 80) == "allow"
    assert verdict(w, "team/c", "default/a", 81) == "allow"
    assert verdict(w, "team/c", "default/a", 80) == "deny"


def test_empty_rule_allows_everything_and_empty_list_nothing() -> None:
    w = world(policy("all-in", "  podSelector: {}\n  ingress: [{}]"))
    assert verdict(w, "team/c", "default/a", 4242, "udp") == "allow"
    w = world(policy("none-in", "  podSelector: {}\n  ingress: []"))
    assert verdict(w, "team/c", "default/a") == "deny"


def test_explain_names_the_deciding_policy_and_rule() -> None:
    w = world(DENY_ALL + policy("allow-c", "  podSelector: {matchLabels: {app: a}}\n"
                                           "  ingress:\n  - from: [{podSelector: {}}]\n"
                                           "  - from: [{ipBlock: {cidr: 10.0.0.0/8}},"
                                           " {namespaceSelector: {matchLabels: {tier: back}}}]"))
    program = build_program(snapshot_of(w), None)
    result = explain(program, find_pod(program, "team", "c"), find_pod(program, "default", "a"),
                     6, 80)
    data = result.to_dict()
    assert data["verdict"] == "allow"
    assert data["from"] == "team/c" and data["to"] == "default/a"
    assert data["egress"]["reason"] == "no-policy"
    ingress = data["ingress"]
    assert ingress["policy"] == {"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1",
                                 "namespace": "default", "name": "allow-c"}
    assert ingress["rule"] == {"direction": "ingress", "index": 1, "peer": 1, "action": "Allow"}
    denied = explain(program, find_pod(program, "other", "d"), find_pod(program, "default", "a"),
                     6, 80).to_dict()["ingress"]
    assert denied["reason"] == "default-deny" and denied["verdict"] == "deny"
    assert [p["name"] for p in denied["policies"]] == ["allow-c", "deny-all"]
