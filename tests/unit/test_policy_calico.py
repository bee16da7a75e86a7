"""tabby's (Calico's) policy semantics, as tables of expected verdicts from the explain engine.

Same world as test_policy_k8s: default/a, default/b, team/c (role=db, service
account ``robot``), other/d; plus network sets and host endpoints where a
test needs them.
"""

from __future__ import annotations

import ipaddress

import pytest

from tabby.model import Resource
from tabby.policy.explain import evaluate, explain, find_pod, protocol_number
from tabby.policy.ir import Packet
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
    pod_endpoint("default/a", {"app": "a", "env": "prod-eu"}, "node-1",
                 ("198.19.0.1/32", "fd7a:bb1e:1::1/128"), (("http", "TCP", 80),)),
    pod_endpoint("default/b", {"app": "b", "env": "dev-us"}, "node-1",
                 ("198.19.0.2/32", "fd7a:bb1e:1::2/128"), (("http", "TCP", 8080),)),
    pod_endpoint("team/c", {"app": "c", "role": "db"}, "node-2",
                 ("198.19.0.65/32", "fd7a:bb1e:1::41/128"), service_account="robot",
                 namespace_labels={"tier": "back"}),
    pod_endpoint("other/d", {"app": "d"}, "node-2", ("198.19.0.66/32",),
                 namespace_labels={"tier": "front"}),
]


def world(docs: str = "") -> list[Resource]:
    return [*from_yaml(NAMESPACES), *PODS, *from_yaml(docs)]


def verdict(objects: list[Resource], src: str, dst: str, port: int | None = 80,
            protocol: str = "tcp", family: int | None = None,
            icmp: tuple[int, int] | None = None) -> str:
    program = build_program(snapshot_of(objects), None)
    source = find_pod(program, *src.split("/"))
    try:
        target: object = ipaddress.ip_address(dst)
    except ValueError:
        target = find_pod(program, *dst.split("/"))
    return explain(program, source, target, protocol_number(protocol), port,  # type: ignore[arg-type]
                   family=family, icmp=icmp).verdict


def np(name: str, spec: str, ns: str = "default", order: float | None = None) -> str:
    o = f"\n  order: {order}" if order is not None else ""
    return (f"apiVersion: tabby.dev/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:{o}\n{spec}\n---\n")


def gnp(name: str, spec: str, order: float | None = None) -> str:
    o = f"\n  order: {order}" if order is not None else ""
    return (f"apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n"
            f"metadata: {{name: {name}}}\nspec:{o}\n{spec}\n---\n")


def k8s(name: str, spec: str, ns: str = "default") -> str:
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n")


def test_lower_order_first_and_first_allow_or_deny_decides() -> None:
    deny_c = "  selector: app == 'a'\n  ingress: [{action: Deny, source: {selector: app == 'c'," \
             " namespaceSelector: all()}}]"
    allow_all = "  selector: app == 'a'\n  ingress: [{action: Allow}]"
    w = world(np("deny", deny_c, order=10) + np("allow", allow_all, order=20))
    assert verdict(w, "team/c", "default/a") == "deny"
    assert verdict(w, "other/d", "default/a") == "allow"
    w = world(np("deny", deny_c, order=30) + np("allow", allow_all, order=20))
    assert verdict(w, "team/c", "default/a") == "allow"


def test_kubernetes_policies_have_order_1000_and_no_order_is_last() -> None:
    k8s_allow = k8s("allow", "  podSelector: {}\n  ingress: [{}]")
    deny = "  selector: all()\n  ingress: [{action: Deny}]"
    assert verdict(world(k8s_allow + np("d", deny, order=999)), "team/c", "default/a") == "deny"
    assert verdict(world(k8s_allow + np("d", deny, order=1001)), "team/c", "default/a") == "allow"
    assert verdict(world(k8s_allow + np("d", deny)), "team/c", "default/a") == "allow"


def test_pass_skips_the_remaining_policies_to_the_profile_which_allows_pods() -> None:
    passing = gnp("pass", "  selector: all()\n  ingress: [{action: Pass, source:"
                          " {selector: app == 'c'}}]", order=1)
    deny = gnp("deny", "  selector: all()\n  ingress: [{action: Deny}]", order=2)
    w = world(passing + deny)
    assert verdict(w, "team/c", "default/a") == "allow"  # passed over the deny
    assert verdict(w, "other/d", "default/a") == "deny"


def test_log_goes_on_to_the_next_rule() -> None:
    w = world(np("log", "  selector: all()\n  ingress: [{action: Log}, {action: Allow,"
                        " protocol: TCP, destination: {ports: [80]}}]"))
    program = build_program(snapshot_of(w), None)
    r = explain(program, find_pod(program, "team", "c"), find_pod(program, "default", "a"), 6, 80)
    assert r.verdict == "allow" and r.ingress.rule is not None and r.ingress.rule.index == 1
    assert [o.index for o in r.ingress.logged] == [0]
    assert verdict(w, "team/c", "default/a", 81) == "deny"


@pytest.mark.parametrize(("selector", "selected"), [
    ("app == 'a'", {"a"}), ("app != 'a'", {"b"}), ("app in {'a', 'b'}", {"a", "b"}),
    ("app not in {'a'}", {"b"}), ("has(env)", {"a", "b"}), ("!has(env)", set()),
    ("env contains 'od-e'", {"a"}), ("env starts with 'dev'", {"b"}),
    ("env ends with 'eu'", {"a"}), ("app == 'a' && env == 'x'", set()),
    ("app == 'a' || env == 'dev-us'", {"a", "b"}), ("!(app == 'a')", {"b"}),
    ("(app == 'a' || app == 'b') && !has(missing)", {"a", "b"}), ("all()", {"a", "b"}),
])
def test_policy_selector_language(selector: str, selected: set[str]) -> None:
    w = world(np("sel", f'  selector: "{selector}"\n  types: [Ingress]'))
    for pod in ("a", "b"):
        assert (verdict(w, "team/c", f"default/{pod}") == "deny") is (pod in selected), pod


@pytest.mark.parametrize(("source", "allowed"), [
    ("{selector: app == 'b'}", {"default/b"}),  # namespaced: same namespace only
    ("{selector: app == 'c'}", set()),
    ("{namespaceSelector: tier == 'back'}", {"team/c"}),
    ("{namespaceSelector: has(tier), selector: app == 'd'}", {"other/d"}),
    ("{namespaceSelector: all()}", {"default/b", "team/c", "other/d"}),
    ("{notSelector: app == 'b'}", set()),  # scoped to own namespace, minus b
    ("{nets: [198.19.0.64/26]}", {"team/c", "other/d"}),
    ("{nets: [198.19.0.64/26], notNets: [198.19.0.66/32]}", {"team/c"}),
    ("{serviceAccounts: {names: [robot]}, namespaceSelector: all()}", {"team/c"}),
    ("{serviceAccounts: {selector: projectcalico.org/name == 'robot'}, namespaceSelector:"
     " all()}", {"team/c"}),
    ("{namespaceSelector: global()}", set()),
])
def test_rule_source_fields_in_a_namespaced_policy(source: str, allowed: set[str]) -> None:
    w = world(np("src", f"  selector: app == 'a'\n"
                        f"  ingress: [{{action: Allow, source: {source}}}]"))
    for src in ("default/b", "team/c", "other/d"):
        assert (verdict(w, src, "default/a") == "allow") is (src in allowed), src


def test_global_policy_rule_selectors_span_namespaces_and_network_sets() -> None:
    sets = """
apiVersion: tabby.dev/v1
kind: GlobalNetworkSet
metadata: {name: outside, labels: {zone: ext}}
spec: {nets: [203.0.113.0/24, "2001:db8::/32"]}
---
apiVersion: tabby.dev/v1
kind: NetworkSet
metadata: {name: partners, namespace: default, labels: {zone: partner}}
spec: {nets: [192.0.2.128/25]}
---
"""
    w = world(sets + gnp("out", "  selector: app == 'a'\n  egress:\n"
                                "  - {action: Allow, destination: {selector: \"app == 'c' ||"
                                " has(zone)\"}}"))
    assert verdict(w, "default/a", "team/c") == "allow"
    assert verdict(w, "default/a", "other/d") == "deny"
    assert verdict(w, "default/a", "203.0.113.7") == "allow"
    assert verdict(w, "default/a", "2001:db8::7") == "allow"
    assert verdict(w, "default/a", "192.0.2.200") == "allow"
    assert verdict(w, "default/a", "198.51.100.1") == "deny"
    scoped = world(sets + np("out", "  selector: app == 'a'\n  egress:\n"
                                    "  - {action: Allow, destination: {selector: has(zone)}}"))
    assert verdict(scoped, "default/a", "192.0.2.200") == "allow"  # same-namespace set
    assert verdict(scoped, "default/a", "203.0.113.7") == "deny"  # global set: needs global()
    glob = world(sets + np("out", "  selector: app == 'a'\n  egress:\n  - {action: Allow,"
                                  " destination: {selector: has(zone), namespaceSelector:"
                                  " global()}}"))
    assert verdict(glob, "default/a", "203.0.113.7") == "allow"


def test_global_policy_namespace_and_service_account_selectors() -> None:
    w = world(gnp("ns", "  namespaceSelector: tier == 'back'\n  selector: all()\n"
                        "  types: [Ingress]"))
    assert verdict(w, "default/a", "team/c") == "deny"
    assert verdict(w, "team/c", "default/a") == "allow"
    w = world(gnp("sa", "  serviceAccountSelector: projectcalico.org/name == 'robot'\n"
                        "  types: [Ingress]"))
    assert verdict(w, "default/a", "team/c") == "deny"
    assert verdict(w, "team/c", "default/b") == "allow"


@pytest.mark.parametrize(("rule", "cases"), [
    ("{action: Allow, protocol: TCP, destination: {ports: ['1000:2000', 80]}}",
     {(80, "tcp"): True, (1500, "tcp"): True, (2001, "tcp"): False, (80, "udp"): False}),
    ("{action: Allow, protocol: TCP, destination: {notPorts: [80]}}",
     {(80, "tcp"): False, (81, "tcp"): True}),
    ("{action: Allow, protocol: TCP, destination: {ports: [http]}}",
     {(80, "tcp"): True, (8080, "tcp"): False}),
    ("{action: Allow, protocol: 17}", {(53, "udp"): True, (53, "tcp"): False}),
    ("{action: Allow, notProtocol: UDP}", {(53, "udp"): False, (53, "tcp"): True}),
    ("{action: Allow, protocol: SCTP, destination: {ports: [80]}}", {(80, "sctp"): True}),
])
def test_protocols_and_ports(rule: str, cases: dict[tuple[int, str], bool]) -> None:
    w = world(np("p", f"  selector: all()\n  ingress: [{rule}]"))
    for (port, proto), ok in cases.items():
        assert (verdict(w, "team/c", "default/a", port, proto) == "allow") is ok, (port, proto)


def test_icmp_type_and_code() -> None:
    w = world(np("icmp", "  selector: all()\n  ingress:\n"
                         "  - {action: Allow, protocol: ICMP, icmp: {type: 8, code: 0}}\n"
                         "  - {action: Allow, protocol: ICMPv6, notICMP: {type: 128}}"))
    assert verdict(w, "team/c", "default/a", None, "icmp") == "allow"
    assert verdict(w, "team/c", "default/a", None, "icmp", icmp=(13, 0)) == "deny"
    assert verdict(w, "team/c", "default/a", None, "icmp", family=6) == "deny"  # echo = 128
    assert verdict(w, "team/c", "default/a", None, "icmp", family=6,
                   icmp=(129, 0)) == "allow"


def test_ip_version_limits_a_rule_to_one_family() -> None:
    w = world(np("v6", "  selector: all()\n  ingress: [{action: Allow, ipVersion: 6}]"))
    assert verdict(w, "team/c", "default/a", family=6) == "allow"
    assert verdict(w, "team/c", "default/a", family=4) == "deny"


def test_rules_with_only_other_family_nets_never_match() -> None:
    w = world(np("v4only", "  selector: all()\n  ingress: [{action: Allow, source:"
                           " {nets: [198.19.0.0/16]}}]"))
    assert verdict(w, "team/c", "default/a", family=4) == "allow"
    assert verdict(w, "team/c", "default/a", family=6) == "deny"


HEPS = """
apiVersion: tabby.dev/v1
kind: HostEndpoint
metadata: {name: node-1-eth0, labels: {role: host}}
spec: {node: node-1, interfaceName: eth0, expectedIPs: [198.18.0.11]}
---
"""


def host_verdict(objects: list[Resource], port: int, direction: str = "ingress",
                 protocol: int = 6) -> str:
    program = build_program(snapshot_of(objects), None)
    hep = program.index.entities[[e.key for e in program.index.entities].index("node-1-eth0")]
    far = ipaddress.ip_address("198.18.0.1")
    near = ipaddress.ip_address("198.18.0.11")
    src, dst = (far, near) if direction == "ingress" else (near, far)
    return evaluate(program, hep, direction, Packet(4, src, dst, protocol, port)).verdict


def test_host_endpoint_default_deny_and_failsafe() -> None:
    w = world(HEPS)
    assert host_verdict(w, 22) == "allow"  # failsafe inbound
    assert host_verdict(w, 68, protocol=17) == "allow"
    assert host_verdict(w, 8080) == "deny"
    assert host_verdict(w, 53, "egress", protocol=17) == "allow"  # failsafe outbound
    assert host_verdict(w, 443, "egress") == "deny"
    allow = gnp("web", "  selector: role == 'host'\n  ingress: [{action: Allow, protocol: TCP,"
                       " destination: {ports: [8080]}}]")
    assert host_verdict(world(HEPS + allow), 8080) == "allow"
    deny_ssh = gnp("no-ssh", "  selector: role == 'host'\n  ingress: [{action: Deny}]")
    assert host_verdict(world(HEPS + deny_ssh), 22) == "allow"  # failsafe wins


def test_failsafe_ports_are_configurable() -> None:
    felix = """
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  failsafeInboundHostPorts: [{protocol: TCP, port: 2222}]
  logSeverityScreen: Info
---
"""
    w = world(HEPS + felix)
    assert host_verdict(w, 22) == "deny"
    assert host_verdict(w, 2222) == "allow"
    assert host_verdict(w, 53, "egress", protocol=17) == "allow"  # outbound kept


def test_pod_to_host_address_meets_host_endpoint_ingress() -> None:
    w = world(HEPS)
    assert verdict(w, "default/a", "198.18.0.11", 22) == "allow"
    assert verdict(w, "default/a", "198.18.0.11", 8080) == "deny"
    profile = HEPS.replace("expectedIPs: [198.18.0.11]",
                           "expectedIPs: [198.18.0.11], profiles: [projectcalico-default-allow]")
    assert verdict(world(profile), "default/a", "198.18.0.11", 8080) == "allow"
