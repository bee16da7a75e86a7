"""ClusterNetworkPolicy semantics as upstream's conformance suite checks them, on explain's engine.

The world is the suite's (network-policy-api conformance/base/manifests.yaml): four houses
(namespaces ``gryffindor``, ``slytherin``, ``hufflepuff``, ``ravenclaw``, labelled
``conformance-house``), two pods each (``harry-potter-0/1``, ``draco-malfoy-0/1``,
``cedric-diggory-0/1``, ``luna-lovegood-0/1``) with container ports ``web`` 80/TCP and
``dns`` 53/UDP, on two nodes. The policies are the suite's (standard-priority-field,
standard-anp-np-banp, standard-egress-tcp-rules, the cidr and node peers); each case
states who reaches whom the way the suite's PokeServer calls do. ``explain`` evaluates
the very rules the nftables compiler renders (tests/netns/test_cnp_lab.py sends packets).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml

from tabby.model import Namespace, Resource, WorkloadEndpoint, parse_manifest
from tabby.policy.explain import Explanation, explain, find_pod, protocol_number
from tabby.policy.program import build_program
from tabby.policy.synthetic import pod_endpoint
from tabby.snapshot import Snapshot
from tests.unit.test_cnp_policy import NODES

HOUSES = {"gryffindor": "harry-potter", "slytherin": "draco-malfoy",
          "hufflepuff": "cedric-diggory", "ravenclaw": "luna-lovegood"}
NS = {house: f"network-policy-conformance-{house}" for house in HOUSES}


def world() -> list[Resource]:
    out: list[Resource] = []
    for h, (house, person) in enumerate(HOUSES.items()):
        out.append(parse_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": NS[house], "labels": {"conformance-house": house,
                                          "kubernetes.io/metadata.name": NS[house]}}}))
        for i in range(2):
            n = h * 2 + i + 1
            out.append(pod_endpoint(
                f"{NS[house]}/{person}-{i}", {"conformance-house": house},
                f"node-{i + 1}", (f"198.19.0.{n}/32", f"fd7a:bb1e:1::{n:x}/128"),
                (("web", "TCP", 80), ("dns", "UDP", 53)),
                namespace_labels={"conformance-house": house}))
    return out


def pod(house: str, i: int) -> str:
    return f"{NS[house]}/{HOUSES[house]}-{i}"


def docs(text: str) -> list[Resource]:
    return [parse_manifest(d) for d in yaml.safe_load_all(text) if d]


def run(policies: list[Resource], src: str, dst: str, port: int | None = 80,
        protocol: str = "tcp", family: int = 4) -> Explanation:
    objs = world()
    snap = Snapshot.build(nodes=NODES,
                          endpoints=[o for o in objs if isinstance(o, WorkloadEndpoint)],
                          namespaces=[o for o in objs if isinstance(o, Namespace)],
                          others=policies)
    program = build_program(snap, None)
    source = find_pod(program, *src.split("/"))
    target: Any
    try:
        target = ipaddress.ip_address(dst)
    except ValueError:
        target = find_pod(program, *dst.split("/"))
    return explain(program, source, target, protocol_number(protocol), port, family=family)


def reach(policies: list[Resource], src: str, dst: str, port: int | None = 80,
          protocol: str = "tcp") -> bool:
    """Both families agree (every case here is family-blind), and that is the answer."""
    verdicts = {run(policies, src, dst, port, protocol, f).verdict for f in (4, 6)}
    assert len(verdicts) == 1, f"{src} -> {dst}: the families disagree"
    return verdicts == {"allow"}


def cnp(name: str, tier: str, priority: int, spec: str) -> Resource:
    body = {"tier": tier, "priority": priority, **yaml.safe_load(spec)}
    return parse_manifest({"apiVersion": "policy.networking.k8s.io/v1alpha2",
                           "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
                           "spec": body})


def house_pods(house: str) -> str:
    return (f"pods: {{namespaceSelector: {{matchLabels: {{conformance-house: {house}}}}},"
            f" podSelector: {{matchLabels: {{conformance-house: {house}}}}}}}")


def both_ways(action: str, house: str) -> str:
    return f"""
subject: {{{house_pods('gryffindor')}}}
ingress: [{{action: {action}, from: [{{{house_pods(house)}}}]}}]
egress: [{{action: {action}, to: [{{{house_pods(house)}}}]}}]
"""


# -- priority (standard-priority-field) -----------------------------------------------

def test_lower_priority_number_wins_and_an_update_reorders() -> None:
    deny50 = cnp("priority-50-example", "Admin", 50, both_ways("Deny", "slytherin"))
    baseline = cnp("default", "Baseline", 10, both_ways("Accept", "slytherin"))
    for prio, expected in ((60, False), (40, True)):  # the suite updates 60 -> 40
        passing = cnp("old-priority-60-new-priority-40-example", "Admin", prio,
                      both_ways("Pass", "slytherin"))
        policies = [deny50, passing, baseline]
        for i in (0, 1):
            assert reach(policies, pod("slytherin", i), pod("gryffindor", 0)) is expected
            assert reach(policies, pod("gryffindor", i), pod("slytherin", 1), 8080) is expected
    # Others are not the policies' business
    assert reach([deny50], pod("hufflepuff", 0), pod("gryffindor", 0))


def test_equal_priorities_are_decided_by_name() -> None:
    a = cnp("a-allow", "Admin", 5, both_ways("Accept", "slytherin"))
    b = cnp("b-deny", "Admin", 5, both_ways("Deny", "slytherin"))
    assert reach([a, b], pod("slytherin", 0), pod("gryffindor", 0))
    got = run([a, b], pod("slytherin", 0), pod("gryffindor", 0))
    assert got.ingress.policy is not None and got.ingress.policy.name == "a-allow"


# -- the tiers together (standard-anp-np-banp) --------------------------------------------

INTEGRATION = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-gress-from-to-slytherin-to-gryffindor,
           namespace: network-policy-conformance-gryffindor}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {conformance-house: slytherin}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {conformance-house: slytherin}}}]}]
"""
NAMESPACES_SUBJECT = """
subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}
ingress: [{action: %s, from: [{namespaces: {matchLabels: {conformance-house: slytherin}}}]}]
egress: [{action: %s, to: [{namespaces: {matchLabels: {conformance-house: slytherin}}}]}]
"""


def test_admin_deny_beats_an_allowing_network_policy() -> None:
    policies = [cnp("pass-example", "Admin", 10, NAMESPACES_SUBJECT % ("Deny", "Deny")),
                *docs(INTEGRATION),
                cnp("default", "Baseline", 10, NAMESPACES_SUBJECT % ("Deny", "Deny"))]
    assert not reach(policies, pod("slytherin", 0), pod("gryffindor", 0))
    assert not reach(policies, pod("gryffindor", 1), pod("slytherin", 0), 8080)
    got = run(policies, pod("slytherin", 0), pod("gryffindor", 0))
    assert "ClusterNetworkPolicy" in got.ingress.summary()


def test_pass_hands_over_to_network_policy_then_to_baseline() -> None:
    admin = cnp("pass-example", "Admin", 10, NAMESPACES_SUBJECT % ("Pass", "Pass"))
    baseline = cnp("default", "Baseline", 10, NAMESPACES_SUBJECT % ("Deny", "Deny"))
    with_np = [admin, *docs(INTEGRATION), baseline]
    assert reach(with_np, pod("slytherin", 0), pod("gryffindor", 0))  # NP allows
    assert reach(with_np, pod("gryffindor", 0), pod("slytherin", 1))
    # the NP selects gryffindor: it decides, so hufflepuff is denied by it, not baseline
    got = run(with_np, pod("hufflepuff", 0), pod("gryffindor", 0))
    assert got.verdict == "deny" and got.ingress.tier == "default"
    without_np = [admin, baseline]  # the suite deletes the NP: baseline denies
    assert not reach(without_np, pod("slytherin", 1), pod("gryffindor", 0))
    assert not reach(without_np, pod("gryffindor", 1), pod("slytherin", 0))
    assert reach(without_np, pod("hufflepuff", 0), pod("gryffindor", 0))


def test_baseline_comes_after_network_policy() -> None:
    baseline = cnp("default", "Baseline", 10, NAMESPACES_SUBJECT % ("Deny", "Deny"))
    assert reach([*docs(INTEGRATION), baseline], pod("slytherin", 0), pod("gryffindor", 1))
    assert not reach([baseline], pod("slytherin", 0), pod("gryffindor", 1))
    got = run([baseline], pod("slytherin", 0), pod("gryffindor", 1))
    assert got.ingress.tier == "kube-baseline"


def test_undecided_traffic_falls_through_the_admin_tier() -> None:
    admin = cnp("deny-slytherin", "Admin", 1, NAMESPACES_SUBJECT % ("Deny", "Deny"))
    # gryffindor is selected, hufflepuff's traffic matches no rule: on to the pod's profile
    assert reach([admin], pod("hufflepuff", 0), pod("gryffindor", 0))
    assert reach([admin], pod("gryffindor", 0), pod("ravenclaw", 0))


# -- subjects and peers ---------------------------------------------------------------------

def test_subject_by_pod_selects_only_those_pods() -> None:
    one = cnp("one-pod", "Admin", 1, """
subject: {pods: {namespaceSelector: {},
                 podSelector: {matchLabels: {conformance-house: gryffindor}}}}
ingress: [{action: Deny, from: [{pods: {
    namespaceSelector: {matchLabels: {conformance-house: slytherin}}, podSelector: {}}}]}]
""")
    assert not reach([one], pod("slytherin", 0), pod("gryffindor", 1))
    narrow = cnp("one-pod", "Admin", 1, """
subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}
ingress: [{action: Deny, from: [{pods: {namespaceSelector: {},
                                        podSelector: {matchExpressions: [{key: conformance-house,
                                            operator: In, values: [slytherin]}]}}}]}]
""")
    assert not reach([narrow], pod("slytherin", 1), pod("gryffindor", 0))
    assert reach([narrow], pod("hufflepuff", 1), pod("gryffindor", 0))
    # the subject is pods only: a pod of slytherin is not the policy's subject
    assert reach([narrow], pod("gryffindor", 0), pod("slytherin", 0))


def test_network_peers_match_both_families_and_ordered_rules_carve_them() -> None:
    cidr = cnp("inline-cidr-as-peers-example", "Admin", 85, f"""
subject: {{{house_pods('gryffindor')}}}
egress:
- {{action: Accept, to: [{{{house_pods('slytherin')}}}]}}
- {{action: Deny, to: [{{networks: [0.0.0.0/0, "::/0"]}}]}}
""")
    assert reach([cidr], pod("gryffindor", 0), pod("slytherin", 1))
    assert not reach([cidr], pod("gryffindor", 0), pod("hufflepuff", 1))
    assert not reach([cidr], pod("gryffindor", 0), pod("ravenclaw", 0), 53, "udp")
    assert not reach([cidr], pod("gryffindor", 0), pod("ravenclaw", 0), None, "icmp")
    # the suite then allows two pod IPs by CIDR, ahead of the deny
    luna = cnp("inline-cidr-as-peers-example", "Admin", 85, f"""
subject: {{{house_pods('gryffindor')}}}
egress:
- {{action: Accept, to: [{{networks: [198.19.0.7/32, "fd7a:bb1e:1::7/128"]}}]}}
- {{action: Deny, to: [{{networks: [0.0.0.0/0, "::/0"]}}]}}
""")
    assert reach([luna], pod("gryffindor", 1), pod("ravenclaw", 0))
    assert not reach([luna], pod("gryffindor", 1), pod("ravenclaw", 1))


NODE_PEERS = f"""
subject: {{{house_pods('gryffindor')}}}
egress:
- {{action: Accept, to: [{{nodes: {{matchLabels: {{kubernetes.io/os: linux}}}}}}],
   protocols: [{{tcp: {{destinationPort: {{number: 10250}}}}}}]}}
- {{action: Pass, to: [{{nodes: {{matchLabels: {{kubernetes.io/os: linux}}}}}}],
   protocols: [{{udp: {{destinationPort: {{number: 53}}}}}}]}}
- {{action: Deny, to: [{{{house_pods('slytherin')}}}, {{nodes: {{matchLabels: {{rack: a}}}}}},
                       {{networks: [203.0.113.0/24]}}]}}
"""


@pytest.mark.parametrize(("dst", "port", "protocol", "allowed"), [
    ("198.18.0.11", 10250, "tcp", True),  # node-1: accepted port
    ("198.18.0.12", 10250, "tcp", True),  # node-2 too (both linux)
    ("198.18.0.11", 53, "udp", True),  # passed, nothing else decides
    ("198.18.0.11", 22, "tcp", False),  # node-1 is rack a: denied
    ("198.18.0.12", 22, "tcp", True),  # node-2 is not
    ("fd7a:bb1e::11", 22, "tcp", False),  # node-1's IPv6 address
    ("203.0.113.11", 22, "tcp", False),  # by node-1's spec.addresses and by networks
    ("203.0.113.99", 22, "tcp", False),  # networks
    ("198.51.100.1", 22, "tcp", True),  # nobody
])
def test_node_peers_select_node_addresses_by_label(dst: str, port: int, protocol: str,
                                                   allowed: bool) -> None:
    policy = cnp("node-and-cidr-as-peers-example", "Admin", 75, NODE_PEERS)
    family = ipaddress.ip_address(dst).version
    got = run([policy], pod("gryffindor", 0), dst, port, protocol, family)
    assert (got.verdict == "allow") is allowed, got.egress.summary()


# -- ports (standard-egress-tcp-rules) and named ports ---------------------------------------

def by_name(house: str) -> str:
    return f"{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: {NS[house]}}}}}}}"


EGRESS_TCP = f"""
subject: {by_name('gryffindor')}
egress:
- {{name: allow-to-ravenclaw-everything, action: Accept, to: [{by_name('ravenclaw')}]}}
- {{name: deny-to-ravenclaw-everything, action: Deny, to: [{by_name('ravenclaw')}]}}
- {{name: deny-to-slytherin-at-port-80, action: Deny, to: [{by_name('slytherin')}],
   protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}
- {{name: allow-to-hufflepuff-at-port-8080, action: Accept, to: [{by_name('hufflepuff')}],
   protocols: [{{tcp: {{destinationPort: {{number: 8080}}}}}}]}}
- {{name: deny-to-hufflepuff-everything-else, action: Deny, to: [{by_name('hufflepuff')}]}}
"""


@pytest.mark.parametrize(("dst", "port", "protocol", "allowed"), [
    (("ravenclaw", 0), 80, "tcp", True),
    (("ravenclaw", 1), 53, "udp", True),
    (("slytherin", 0), 80, "tcp", False),
    (("slytherin", 1), 8080, "tcp", True),
    (("slytherin", 1), 80, "udp", True),  # the port is TCP's only
    (("hufflepuff", 0), 8080, "tcp", True),
    (("hufflepuff", 0), 80, "tcp", False),
    (("hufflepuff", 1), 5353, "udp", False),
])
def test_tcp_ports_as_the_suite_checks_them(dst: tuple[str, int], port: int, protocol: str,
                                            allowed: bool) -> None:
    policy = cnp("egress-tcp", "Admin", 6, EGRESS_TCP)
    assert reach([policy], pod("gryffindor", 0), pod(*dst), port, protocol) is allowed


@pytest.mark.parametrize(("port", "protocol", "allowed"), [
    (80, "tcp", False),  # web is 80/TCP
    (80, "udp", True),
    (53, "udp", False),  # dns is 53/UDP
    (53, "tcp", True),
    (5000, "udp", False), (5353, "udp", False), (5354, "udp", True),  # the range
    (9003, "sctp", False), (9005, "sctp", True),
])
def test_named_ports_and_ranges(port: int, protocol: str, allowed: bool) -> None:
    policy = cnp("ingress-ports", "Baseline", 1, f"""
subject: {{{house_pods('gryffindor')}}}
ingress:
- action: Deny
  from: [{{namespaces: {{matchLabels: {{conformance-house: slytherin}}}}}}]
  protocols:
  - destinationNamedPort: web
  - destinationNamedPort: dns
  - udp: {{destinationPort: {{range: {{start: 5000, end: 5353}}}}}}
  - sctp: {{destinationPort: {{number: 9003}}}}
""")
    assert reach([policy], pod("slytherin", 0), pod("gryffindor", 1), port, protocol) is allowed


def test_pass_in_the_baseline_tier_skips_the_rest_of_it() -> None:
    passing = cnp("a-pass", "Baseline", 1, NAMESPACES_SUBJECT % ("Pass", "Pass"))
    deny = cnp("b-deny", "Baseline", 2, NAMESPACES_SUBJECT % ("Deny", "Deny"))
    assert not reach([deny], pod("slytherin", 0), pod("gryffindor", 0))
    assert reach([passing, deny], pod("slytherin", 0), pod("gryffindor", 0))
    assert reach([passing, deny], pod("gryffindor", 1), pod("slytherin", 1))
