"""Kubernetes NetworkPolicy conformance, in the shape of upstream's e2e "netpol" suite.

One lab (3 nodes, dual stack), the policy lab the netns session shares with
test_policy_extended, test_policy_tiers and test_cnp_lab (tests/netns/conftest.py):
namespaces x, y, z, pods a, b, c in each, every pod serving TCP and UDP on 80 and 81
(named ports ``serve-80-tcp`` ...). Each test applies ``networking.k8s.io/v1``
NetworkPolicies with ``tabby apply``, writes down what Kubernetes' semantics
say must happen as a ``Reachability`` (all pairs, then the blocked ones
marked), and probes the 9x9 matrix with ``tabby lab probe -o json`` until it
matches (see tests/netns/policy_matrix.py). The policies are deleted and
labels restored after each test. Test names follow upstream's
("should support a 'default-deny-ingress' policy" -> test_default_deny_ingress).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml

from tests.netns.policy_matrix import PolicyLab, Reachability, cover, host

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

TCP80: dict[str, Any] = {"ports": (80,), "protocols": ("tcp",)}
TCP: dict[str, Any] = {"protocols": ("tcp",)}


def netpol(name: str, namespace: str, spec: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": yaml.safe_load(spec)}


@pytest.fixture
def lab(policy_lab: PolicyLab) -> PolicyLab:
    """The session's shared policy lab (tests/netns/conftest.py), reset after each test."""
    return policy_lab


def everyone(lab: PolicyLab) -> Reachability:
    return Reachability(lab.pods)


DENY_INGRESS_X = netpol("deny-ingress", "x", "{podSelector: {}, policyTypes: [Ingress]}")
DENY_EGRESS_X = netpol("deny-egress", "x", "{podSelector: {}, policyTypes: [Egress]}")


# -- default deny and allow all ---------------------------------------------------------

def test_default_deny_ingress(lab: PolicyLab) -> None:
    lab.apply(DENY_INGRESS_X)
    lab.check(everyone(lab).expect_ingress("x", False))


def test_default_deny_egress(lab: PolicyLab) -> None:
    """Replies to connections x's pods accept are not egress: only x's own
    connections are cut."""
    lab.apply(DENY_EGRESS_X)
    lab.check(everyone(lab).expect_egress("x", False))


def test_default_deny_all(lab: PolicyLab) -> None:
    lab.apply(netpol("deny-all", "x", "{podSelector: {}, policyTypes: [Ingress, Egress]}"))
    lab.check(everyone(lab).expect_ingress("x", False).expect_egress("x", False))


def test_allow_all_ingress_takes_precedence(lab: PolicyLab) -> None:
    """should enforce multiple ingress policies with ingress allow-all policy taking
    precedence"""
    lab.apply(netpol("only-81", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{ports: [{port: 81}]}]"""))
    lab.check({(80, "tcp"): everyone(lab).expect_ingress("x/a", False),
               (81, "tcp"): everyone(lab)})
    lab.apply(netpol("allow-all", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{}]"""))
    lab.check(everyone(lab))


def test_allow_all_egress_takes_precedence(lab: PolicyLab) -> None:
    lab.apply(netpol("only-81", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress: [{ports: [{port: 81}]}]"""))
    lab.check({(80, "tcp"): everyone(lab).expect_egress("x/a", False),
               (81, "tcp"): everyone(lab)})
    lab.apply(netpol("allow-all", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress: [{}]"""))
    lab.check(everyone(lab))


def test_stop_enforcing_policies_after_they_are_deleted(lab: PolicyLab) -> None:
    deny_all = netpol("deny-all", "x", "{podSelector: {}, policyTypes: [Ingress, Egress]}")
    lab.apply(deny_all)
    lab.check(everyone(lab).expect_ingress("x", False).expect_egress("x", False), **TCP80)
    lab.delete(deny_all)
    lab.check(everyone(lab))


# -- peers: pod and namespace selectors -------------------------------------------------

def test_pod_selector_within_the_server_namespace(lab: PolicyLab) -> None:
    """should enforce policy to allow traffic from pods within server namespace based
    on PodSelector"""
    lab.apply(netpol("allow-b", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"""))
    lab.check(everyone(lab).expect_ingress("x/a", False).expect("x/b", "x/a", True))


def test_namespace_selector_with_the_default_namespace_label(lab: PolicyLab) -> None:
    """should enforce policy to allow traffic only from a different namespace, based on
    NamespaceSelector (kubernetes.io/metadata.name)"""
    lab.apply(netpol("allow-y", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]"""))
    lab.check(everyone(lab).expect_ingress("x/a", False).expect("y", "x/a", True))


def test_match_expressions(lab: PolicyLab) -> None:
    """should enforce policy based on PodSelector with MatchExpressions (x/a), and on
    NamespaceSelector with MatchExpressions (y/a)."""
    lab.apply(netpol("allow-in-b", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]
    """), netpol("allow-not-y", "y", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector:
              matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn,
                                  values: [y]}]"""))
    lab.check(everyone(lab).expect_ingress("x/a", False).expect("x/b", "x/a", True)
              .expect("y", "y/a", False), **TCP)


def test_exists_and_does_not_exist(lab: PolicyLab) -> None:
    """DoesNotExist on a namespace label, Exists on a pod label (one peer: AND), and
    NotIn choosing the pods a policy applies to."""
    lab.relabel_namespace("y", {"team": "blue"})
    lab.apply(netpol("not-team", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}
            podSelector: {matchExpressions: [{key: pod, operator: Exists}]}"""),
              netpol("isolate-not-a", "z", """
        podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}
        policyTypes: [Ingress]"""))
    lab.check(everyone(lab).expect("y", "x/a", False)
              .expect_ingress("z/b", False).expect_ingress("z/c", False), **TCP)


def test_pod_selector_or_namespace_selector(lab: PolicyLab) -> None:
    """Two peers in one rule: either one admits."""
    lab.apply(netpol("or", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector:
              matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn,
                                  values: [x]}]
          - podSelector: {matchLabels: {pod: b}}"""))
    lab.check(everyone(lab).expect("x/c", "x/a", False), **TCP)


def test_pod_selector_and_namespace_selector(lab: PolicyLab) -> None:
    """One peer with both selectors: pods matching the podSelector in namespaces
    matching the namespaceSelector."""
    lab.apply(netpol("and", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector:
              matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn,
                                  values: [x]}]
            podSelector: {matchLabels: {pod: b}}"""))
    lab.check(everyone(lab).expect_ingress("x/a", False)
              .expect("y/b", "x/a", True).expect("z/b", "x/a", True), **TCP)


def test_multiple_and_several_pod_selectors(lab: PolicyLab) -> None:
    """should enforce policy based on Multiple PodSelectors and NamespaceSelectors (x/a),
    and on any PodSelectors (two peers, y/a)."""
    lab.apply(netpol("multi", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
            podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}"""),
              netpol("b-or-c", "y", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]
    """))
    lab.check(everyone(lab).expect_ingress("x/a", False).expect_ingress("y/a", False)
              .expect("y/b", "x/a", True).expect("y/c", "x/a", True)
              .expect("y/b", "y/a", True).expect("y/c", "y/a", True), **TCP80)


def test_deny_ingress_from_pods_in_other_namespaces(lab: PolicyLab) -> None:
    lab.apply(netpol("same-ns", "x", """
        podSelector: {}
        ingress: [{from: [{podSelector: {}}]}]"""))
    lab.check(everyone(lab).expect_ingress("x", False).expect("x", "x", True), **TCP80)


# -- ports and protocols ----------------------------------------------------------------

def test_ports(lab: PolicyLab) -> None:
    """should enforce policy based on Ports: TCP when no protocol is given."""
    lab.apply(netpol("tcp-81-from-y", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
          ports: [{port: 81}]"""))
    closed = everyone(lab).expect_ingress("x/a", False)
    lab.check({(80, "tcp"): closed, (80, "udp"): closed, (81, "udp"): closed,
               (81, "tcp"): closed.copy().expect("y", "x/a", True)})


def test_protocols(lab: PolicyLab) -> None:
    """A protocol without a port admits every port of it (x/a); should not allow access
    by TCP when a policy specifies only UDP (x/b); should not mistakenly treat
    'protocol: SCTP' as 'protocol: TCP', and a pod only an SCTP rule admits to is
    isolated for TCP and UDP (x/c)."""
    lab.apply(netpol("udp-only", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{ports: [{protocol: UDP}]}]"""), netpol("udp-81", "x", """
        podSelector: {matchLabels: {pod: b}}
        ingress: [{ports: [{port: 81, protocol: UDP}]}]"""), netpol("sctp-80", "x", """
        podSelector: {matchLabels: {pod: c}}
        ingress: [{ports: [{port: 80, protocol: SCTP}]}]"""))
    closed = everyone(lab).expect_ingress("x", False)
    lab.check({(80, "tcp"): closed, (81, "tcp"): closed,
               (80, "udp"): closed.copy().expect_ingress("x/a", True),
               (81, "udp"): closed.copy().expect_ingress("x/a", True).expect_ingress("x/b", True)})


def test_named_port_ingress(lab: PolicyLab) -> None:
    """should allow ingress access on one named port"""
    lab.apply(netpol("named-81", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{ports: [{port: serve-81-tcp}, {port: serve-80-udp, protocol: UDP}]}]"""))
    closed = everyone(lab).expect_ingress("x/a", False)
    lab.check({(80, "tcp"): closed, (81, "udp"): closed,
               (81, "tcp"): everyone(lab), (80, "udp"): everyone(lab)})


def test_named_port_from_namespace(lab: PolicyLab) -> None:
    """should allow ingress access from namespace on one named port"""
    lab.apply(netpol("named-80-from-y", "x", """
        podSelector: {}
        ingress:
        - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
          ports: [{port: serve-80-tcp}]"""))
    closed = everyone(lab).expect_ingress("x", False)
    lab.check({(80, "tcp"): closed.copy().expect("y", "x", True), (81, "tcp"): closed})


def test_named_port_egress(lab: PolicyLab) -> None:
    """should allow egress access on one named port (the destination pod's name)"""
    lab.apply(netpol("egress-named-81", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress: [{ports: [{port: serve-81-tcp}]}]"""))
    closed = everyone(lab).expect_egress("x/a", False)
    lab.check({(80, "tcp"): closed, (81, "tcp"): everyone(lab), (81, "udp"): closed})


def test_end_port_ranges(lab: PolicyLab) -> None:
    """should support allowing a range of ports (endPort), and an update of the range."""
    ranged = """
        podSelector: {{matchLabels: {{pod: a}}}}
        ingress: [{{ports: [{{port: {first}, endPort: {last}, protocol: TCP}}]}}]"""
    lab.apply(netpol("range", "x", ranged.format(first=81, last=82)))
    closed = everyone(lab).expect_ingress("x/a", False)
    lab.check({(80, "tcp"): closed, (81, "tcp"): everyone(lab), (81, "udp"): closed})
    lab.apply(netpol("range", "x", ranged.format(first=80, last=81)))
    lab.check({(80, "tcp"): everyone(lab), (81, "tcp"): everyone(lab), (80, "udp"): closed})


def test_multiple_policies_are_a_union(lab: PolicyLab) -> None:
    """should enforce multiple, stacked policies with overlapping podSelectors"""
    lab.apply(netpol("y-on-80", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
          ports: [{port: 80, protocol: TCP}]"""),
              netpol("z-on-81", "x", """
        podSelector: {}
        ingress:
        - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]
          ports: [{port: 81, protocol: TCP}]"""))
    closed = everyone(lab).expect_ingress("x", False)
    lab.check({(80, "tcp"): closed.copy().expect("y", "x/a", True),
               (81, "tcp"): closed.copy().expect("z", "x", True), (80, "udp"): closed})


# -- egress -----------------------------------------------------------------------------

def test_egress_to_a_pod_in_another_namespace(lab: PolicyLab) -> None:
    """should enforce egress policy allowing traffic to a server in a different namespace
    based on PodSelector and NamespaceSelector"""
    lab.apply(netpol("to-y-b", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress:
        - to:
          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
            podSelector: {matchLabels: {pod: b}}"""))
    lab.check(everyone(lab).expect_egress("x/a", False).expect("x/a", "y/b", True))


def test_client_side_egress_deny_wins_over_server_allow(lab: PolicyLab) -> None:
    """should support denying of egress traffic on the client side (even if the server
    explicitly allows this traffic)"""
    lab.apply(netpol("deny-egress-a", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]"""),
              netpol("allow-all-in-y", "y", "{podSelector: {}, ingress: [{}]}"))
    lab.check(everyone(lab).expect_egress("x/a", False), **TCP80)


def test_ingress_and_egress_together(lab: PolicyLab) -> None:
    lab.apply(netpol("both", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Ingress, Egress]
        ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
        egress:
        - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
          ports: [{port: 80, protocol: TCP}]"""))
    closed = everyone(lab).expect_ingress("x/a", False).expect("x/b", "x/a", True)
    closed.expect_egress("x/a", False)
    lab.check({(80, "tcp"): closed.copy().expect("x/a", "y", True), (81, "tcp"): closed})


def test_ingress_and_egress_are_controlled_independently(lab: PolicyLab) -> None:
    lab.apply(netpol("egress-to-y", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]
    """))
    egress = everyone(lab).expect_egress("x/a", False).expect("x/a", "y", True)
    lab.check(egress, **TCP80)
    lab.apply(netpol("deny-ingress-a", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Ingress]"""))
    lab.check(egress.copy().expect_ingress("x/a", False), **TCP80)


def test_egress_rules_without_policy_types_isolate_both_ways(lab: PolicyLab) -> None:
    """No policyTypes: Ingress always, Egress because there are egress rules. The
    egress rule admits every pod, so only ingress to x/a is cut."""
    lab.apply(netpol("implied", "x", """
        podSelector: {matchLabels: {pod: a}}
        egress: [{to: [{namespaceSelector: {}}]}]"""))
    lab.check(everyone(lab).expect_ingress("x/a", False), **TCP)


# -- ipBlock ----------------------------------------------------------------------------

def test_egress_to_one_address_of_each_family(lab: PolicyLab) -> None:
    """should allow egress access to server in CIDR block (a /32 and a /128)"""
    lab.apply(netpol("to-y-b", "x", f"""
        podSelector: {{matchLabels: {{pod: a}}}}
        policyTypes: [Egress]
        egress:
        - to: [{{ipBlock: {{cidr: "{host(lab.ip('y/b', 4))}"}}}},
               {{ipBlock: {{cidr: "{host(lab.ip('y/b', 6))}"}}}}]"""))
    reach = everyone(lab).expect_egress("x/a", False).expect("x/a", "y/b", True)
    lab.check(reach, **TCP80)
    lab.check(reach, family="ipv6", **TCP80)


def test_egress_ip_block_except(lab: PolicyLab) -> None:
    """should enforce except clause while egress access to server in CIDR block"""
    cidr = cover(lab.ip(p, 4) for p in lab.pods)
    lab.apply(netpol("all-but-y-b", "x", f"""
        podSelector: {{matchLabels: {{pod: a}}}}
        policyTypes: [Egress]
        egress: [{{to: [{{ipBlock: {{cidr: "{cidr}", except: ["{host(lab.ip('y/b'))}"]}}}}]}}]
    """))
    lab.check(everyone(lab).expect("x/a", "y/b", False))


def test_ip_in_both_cidr_and_except_is_allowed_by_another_policy(lab: PolicyLab) -> None:
    """should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed"""
    cidr = cover(lab.ip(p, 4) for p in lab.pods)
    y_b = host(lab.ip("y/b"))
    lab.apply(netpol("all-but-y-b", "x", f"""
        podSelector: {{matchLabels: {{pod: a}}}}
        policyTypes: [Egress]
        egress: [{{to: [{{ipBlock: {{cidr: "{cidr}", except: ["{y_b}"]}}}}]}}]"""))
    lab.check(everyone(lab).expect("x/a", "y/b", False), **TCP80)
    lab.apply(netpol("y-b", "x", f"""
        podSelector: {{matchLabels: {{pod: a}}}}
        policyTypes: [Egress]
        egress: [{{to: [{{ipBlock: {{cidr: "{y_b}"}}}}]}}]"""))
    lab.check(everyone(lab), **TCP80)


def test_ingress_ip_block_except_and_families(lab: PolicyLab) -> None:
    """An IPv4 ipBlock admits IPv4 sources only: over IPv6 the pod is isolated with
    nothing admitted."""
    cidr = cover(lab.ip(p, 4) for p in lab.pods)
    lab.apply(netpol("from-all-but-two", "x", f"""
        podSelector: {{matchLabels: {{pod: a}}}}
        ingress:
        - from:
          - ipBlock:
              cidr: "{cidr}"
              except: ["{host(lab.ip('y/b'))}", "{host(lab.ip('z/c'))}"]"""))
    lab.check(everyone(lab).expect("y/b", "x/a", False).expect("z/c", "x/a", False), **TCP80)
    lab.check(everyone(lab).expect_ingress("x/a", False), family="ipv6", **TCP80)


def test_ipv6_ip_block_except(lab: PolicyLab) -> None:
    cidr = cover(lab.ip(p, 6) for p in lab.pods)
    lab.apply(netpol("v6-all-but-y-b", "x", f"""
        podSelector: {{matchLabels: {{pod: a}}}}
        policyTypes: [Egress]
        egress: [{{to: [{{ipBlock: {{cidr: "{cidr}", except: ["{host(lab.ip('y/b', 6))}"]}}}}]}}]
    """))
    lab.check(everyone(lab).expect("x/a", "y/b", False), family="ipv6", **TCP)
    lab.check(everyone(lab).expect_egress("x/a", False), **TCP80)


def test_ipv6_selectors(lab: PolicyLab) -> None:
    lab.apply(DENY_INGRESS_X, DENY_EGRESS_X, netpol("a-from-y-b", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress:
        - from:
          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
            podSelector: {matchLabels: {pod: b}}
          ports: [{port: serve-80-udp, protocol: UDP}, {port: 80}]"""))
    closed = everyone(lab).expect_ingress("x", False).expect_egress("x", False)
    open_ = closed.copy().expect("y/b", "x/a", True)
    lab.check({(80, "tcp"): open_, (80, "udp"): open_, (81, "tcp"): closed}, family="ipv6")


# -- changes: updates, relabelling, new pods --------------------------------------------

def test_updated_policy(lab: PolicyLab) -> None:
    """should enforce updated policy"""
    lab.apply(netpol("from-ns", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]
    """))
    lab.check(everyone(lab).expect_ingress("x/a", False).expect("y", "x/a", True), **TCP80)
    lab.apply(netpol("from-ns", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]
    """))
    lab.check(everyone(lab).expect_ingress("x/a", False).expect("z", "x/a", True), **TCP80)


def test_ingress_from_an_updated_pod(lab: PolicyLab) -> None:
    """should allow ingress access from updated pod, and take it back"""
    lab.apply(netpol("from-updated", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{from: [{podSelector: {matchLabels: {pod2: updated}}}]}]"""))
    closed = everyone(lab).expect_ingress("x/a", False)
    lab.check(closed, **TCP80)
    lab.relabel_pod("x/b", {"pod": "b", "pod2": "updated"})
    lab.check(closed.copy().expect("x/b", "x/a", True), **TCP80)
    lab.relabel_pod("x/b", {"pod": "b"})
    lab.check(closed, **TCP80)


def test_ingress_from_an_updated_namespace(lab: PolicyLab) -> None:
    """should allow ingress access from updated namespace"""
    lab.apply(netpol("from-updated", "x", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]"""))
    closed = everyone(lab).expect_ingress("x/a", False)
    lab.check(closed, **TCP80)
    lab.relabel_namespace("y", {"ns2": "updated"})
    lab.check(closed.copy().expect("y", "x/a", True), **TCP80)


def test_deny_ingress_to_an_updated_pod(lab: PolicyLab) -> None:
    """should deny ingress access to updated pod"""
    lab.apply(netpol("isolate-target", "x", """
        podSelector: {matchLabels: {target: isolated}}
        policyTypes: [Ingress]"""))
    lab.check(everyone(lab), **TCP80)
    lab.relabel_pod("x/a", {"pod": "a", "target": "isolated"})
    lab.check(everyone(lab).expect_ingress("x/a", False), **TCP80)


def test_a_new_pod_is_selected(lab: PolicyLab) -> None:
    """A pod created under a namespace-wide policy is isolated; when it goes, its
    address no longer matches the policy's peers."""
    lab.apply(DENY_INGRESS_X, netpol("from-x-d", "y", """
        podSelector: {}
        ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}},
                           podSelector: {matchLabels: {pod: d}}}]}]"""))
    lab.check(everyone(lab).expect_ingress("x", False).expect_ingress("y", False), **TCP80)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "d", "namespace": "x", "labels": {"pod": "d"}},
           "spec": {"nodeName": "node-2", "containers": [
               {"name": "cont", "image": "busybox",
                "ports": [{"name": "serve-80-tcp", "containerPort": 80}]}]}}
    lab.tabby("apply", "-f", "-", stdin=yaml.safe_dump(pod))
    try:
        lab.wait_probes({("z/a", "x/d"): False, ("x/d", "z/a"): True, ("x/d", "y/a"): True,
                         ("x/d", "y/c"): True, ("x/a", "y/c"): False}, port=80)
    finally:
        lab.tabby("delete", "pod", "d", "-n", "x")
