"""tabby's own policies (Calico v3 shaped) on a real lab, and explain beside the dataplane.

The lab of test_policy_conformance, shared with it (x, y, z with pods a, b, c,
serving TCP and UDP on 80 and 81; tests/netns/conftest.py). Covered here: policy
``order`` (lower first), Deny before Allow within a policy, Pass (over the
Kubernetes policies, on to the profile), GlobalNetworkPolicy across
namespaces, NetworkSet and GlobalNetworkSet as sources (and a set's nets
changing under a policy), and ``tabby policy explain`` agreeing with the
probes on full matrices for several policy sets. Anti-spoofing and a host
endpoint's failsafe ports are tests/netns/test_policy_dataplane.py's.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml

from tests.netns.policy_matrix import PolicyLab, Reachability, check_explain_agrees, cover, host

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

TCP80: dict[str, Any] = {"ports": (80,), "protocols": ("tcp",)}


def tnp(name: str, namespace: str, spec: str) -> dict[str, Any]:
    """tabby's namespaced NetworkPolicy (Calico's fields)."""
    return {"apiVersion": "tabby.dev/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": yaml.safe_load(spec)}


def gnp(name: str, spec: str) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name}, "spec": yaml.safe_load(spec)}


def netpol(name: str, namespace: str, spec: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": yaml.safe_load(spec)}


def network_set(name: str, namespace: str, labels: dict[str, str], nets: list[str]
                ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    kind = "GlobalNetworkSet"
    if namespace:
        meta["namespace"], kind = namespace, "NetworkSet"
    return {"apiVersion": "tabby.dev/v1", "kind": kind, "metadata": meta,
            "spec": {"nets": nets}}


@pytest.fixture
def lab(policy_lab: PolicyLab) -> PolicyLab:
    """The session's shared policy lab (tests/netns/conftest.py), reset after each test."""
    return policy_lab


def everyone(lab: PolicyLab) -> Reachability:
    return Reachability(lab.pods)


Y_B = "{selector: pod == 'b', namespaceSelector: kubernetes.io/metadata.name == 'y'}"
FROM_Y = "{namespaceSelector: kubernetes.io/metadata.name == 'y'}"
FROM_Z = "{namespaceSelector: kubernetes.io/metadata.name == 'z'}"


def test_order_and_deny_before_allow(lab: PolicyLab) -> None:
    """x/a: a Deny policy of order 10 before an Allow-all of order 20, then the Deny
    moved to order 30. x/b: one policy whose Deny rule comes before its Allow, then
    the rules swapped."""
    def deny(order: int) -> dict[str, Any]:
        return tnp("deny-y-b", "x", f"""
            selector: pod == 'a'
            order: {order}
            ingress: [{{action: Deny, source: {Y_B}}}]""")

    def rules(first: str, second: str) -> dict[str, Any]:
        return tnp("deny-then-allow", "x",
                   f"{{selector: pod == 'b', ingress: [{first}, {second}]}}")

    deny_z, allow = f"{{action: Deny, source: {FROM_Z}}}", "{action: Allow}"
    lab.apply(deny(10), rules(deny_z, allow),
              tnp("allow-all", "x",
                  "{selector: pod == 'a', order: 20, ingress: [{action: Allow}]}"))
    lab.check(everyone(lab).expect("y/b", "x/a", False).expect("z", "x/b", False))
    lab.apply(deny(30), rules(allow, deny_z))
    lab.check(everyone(lab), **TCP80)


def test_pass_skips_kubernetes_policies_to_the_profile(lab: PolicyLab) -> None:
    """Kubernetes policies sit at order 1000; a GlobalNetworkPolicy of order 10 passing
    y's traffic skips x's default deny, and the profile admits it. A Log rule before
    them changes nothing (for pods no other policy selects, a Log-only policy would
    be a default deny: nothing allows)."""
    lab.apply(netpol("deny-ingress", "x", "{podSelector: {}, policyTypes: [Ingress]}"),
              gnp("log-x", """
        order: 5
        selector: projectcalico.org/namespace == 'x'
        ingress: [{action: Log}]"""),
              gnp("pass-y", f"""
        order: 10
        selector: projectcalico.org/namespace == 'x'
        ingress: [{{action: Pass, source: {FROM_Y}}}]"""))
    lab.check(everyone(lab).expect_ingress("x", False).expect("y", "x", True))


def test_global_policy_across_namespaces(lab: PolicyLab) -> None:
    """A global policy's selector takes pods of every namespace, so do its rules'
    selectors; its namespaceSelector narrows the pods it applies to."""
    lab.apply(gnp("a-from-b", """
        selector: pod == 'a'
        ingress: [{action: Allow, source: {selector: pod == 'b'}}]"""),
              gnp("z-c-not-to-b", """
        namespaceSelector: kubernetes.io/metadata.name == 'z'
        selector: pod == 'c'
        egress: [{action: Deny, destination: {selector: pod == 'b'}}, {action: Allow}]"""))
    reach = everyone(lab)
    for ns in ("x", "y", "z"):
        reach.expect_ingress(f"{ns}/a", False)
        for src in ("x", "y", "z"):
            reach.expect(f"{src}/b", f"{ns}/a", True)
        reach.expect("z/c", f"{ns}/b", False)
    lab.check(reach)


def test_network_sets_as_sources(lab: PolicyLab) -> None:
    """A NetworkSet matches a namespaced policy's selector in its namespace; a
    GlobalNetworkSet a global policy's (a namespaced one needs global()). Changing a
    set's nets moves who is admitted."""
    y_b = [host(lab.ip("y/b", 4)), host(lab.ip("y/b", 6))]
    z_a = [host(lab.ip("z/a", 4)), host(lab.ip("z/a", 6))]
    z_c = [host(lab.ip("z/c", 4)), host(lab.ip("z/c", 6))]
    trusted = network_set("trusted", "x", {"role": "trusted"}, y_b)
    lab.apply(trusted, network_set("external", "", {"zone": "ext"}, z_c),
              tnp("a-from-trusted", "x", """
        selector: pod == 'a'
        ingress: [{action: Allow, source: {selector: role == 'trusted'}}]"""),
              gnp("x-b-from-ext", """
        selector: projectcalico.org/namespace == 'x' && pod == 'b'
        ingress: [{action: Allow, source: {selector: zone == 'ext'}}]"""),
              tnp("c-from-ext-needs-global", "x", """
        selector: pod == 'c'
        ingress: [{action: Allow, source: {selector: zone == 'ext'}}]"""))
    closed = everyone(lab).expect_ingress("x/a", False).expect_ingress("x/b", False)
    closed.expect_ingress("x/c", False)
    lab.check(closed.copy().expect("y/b", "x/a", True).expect("z/c", "x/b", True), **TCP80)
    lab.check(closed.copy().expect("y/b", "x/a", True).expect("z/c", "x/b", True),
              family="ipv6", **TCP80)
    lab.apply(network_set("trusted", "x", {"role": "trusted"}, z_a))
    lab.check(closed.copy().expect("z/a", "x/a", True).expect("z/c", "x/b", True), **TCP80)


# -- explain agrees with the dataplane ---------------------------------------------------

def kubernetes_set(lab: PolicyLab) -> list[dict[str, Any]]:
    everything = cover(lab.ip(p, 4) for p in lab.pods)
    return [
        netpol("deny-all", "x", "{podSelector: {}, policyTypes: [Ingress, Egress]}"),
        netpol("x-a-in", "x", """
            podSelector: {matchLabels: {pod: a}}
            ingress:
            - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
              ports: [{port: 80}, {port: serve-81-udp, protocol: UDP}]
            - from: [{podSelector: {matchLabels: {pod: c}}}]"""),
        netpol("x-out", "x", """
            podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}
            policyTypes: [Egress]
            egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}]}]"""),
        netpol("z-c-out", "z", f"""
            podSelector: {{matchLabels: {{pod: c}}}}
            policyTypes: [Egress]
            egress: [{{to: [{{ipBlock: {{cidr: "{everything}",
                                       except: ["{host(lab.ip('y/a'))}"]}}}}],
                       ports: [{{port: 80, endPort: 81, protocol: TCP}}]}}]"""),
    ]


def calico_set(lab: PolicyLab) -> list[dict[str, Any]]:
    return [
        netpol("deny-y", "y", "{podSelector: {}, policyTypes: [Ingress]}"),
        gnp("pass-x-to-y", """
            order: 10
            selector: projectcalico.org/namespace == 'y'
            ingress: [{action: Pass, protocol: TCP,
                       source: {namespaceSelector: kubernetes.io/metadata.name == 'x'}}]"""),
        tnp("y-a-order", "y", """
            order: 20
            selector: pod == 'a'
            ingress:
            - {action: Deny, protocol: UDP, destination: {ports: [81]}}
            - {action: Allow, source: {namespaceSelector: all(), selector: pod != 'b'}}"""),
        network_set("partners", "z", {"role": "partner"},
                    [host(lab.ip("x/c", 4)), host(lab.ip("y/c", 4))]),
        tnp("z-from-partners", "z", """
            selector: all()
            ingress:
            - {action: Allow, source: {selector: role == 'partner'}}
            - {action: Allow, protocol: TCP, source: {notNets: ["198.19.0.0/16"]}}"""),
    ]


def egress_set(lab: PolicyLab) -> list[dict[str, Any]]:
    return [
        gnp("no-udp-out-of-z", """
            namespaceSelector: kubernetes.io/metadata.name == 'z'
            selector: all()
            egress: [{action: Deny, protocol: UDP}, {action: Allow}]"""),
        netpol("x-egress-named", "x", """
            podSelector: {}
            policyTypes: [Egress]
            egress: [{ports: [{port: serve-80-tcp}, {port: serve-81-udp, protocol: UDP}]}]"""),
        tnp("y-b-out", "y", f"""
            selector: pod == 'b'
            egress:
            - {{action: Deny, destination: {{nets: ["{host(lab.ip('z/a', 4))}",
                                                   "{host(lab.ip('z/a', 6))}"]}}}}
            - {{action: Allow, destination: {{ports: [80]}}, protocol: TCP}}"""),
    ]


@pytest.mark.parametrize("policies", [kubernetes_set, calico_set, egress_set])
def test_explain_agrees_with_the_dataplane(lab: PolicyLab, policies: Any) -> None:
    lab.apply(*policies(lab))
    tables = check_explain_agrees(lab)
    verdicts = {ok for t in tables.values() for ok in t.table.values()}
    assert verdicts == {True, False}  # a set that decides nothing would prove nothing
    if policies is egress_set:
        check_explain_agrees(lab, family="ipv6", keys=((80, "tcp"), (81, "udp")))
