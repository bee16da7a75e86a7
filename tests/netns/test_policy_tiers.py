"""Policy tiers on a real lab (dual stack): packets, both families.

The policy lab the netns session shares (tests/netns/conftest.py: x, y, z with pods
a, b, c on three nodes, TCP and UDP on 80 and 81); its reset deletes policies before
their tiers. The expected tables are Calico's semantics written out
by hand:

- a higher tier's Deny beats a lower tier's Allow (a user tier of order 100, and
  the built-in ``kube-admin`` at 1000 that ClusterNetworkPolicy uses, both before
  the ``default`` tier where an Allow-all of order 1 sits);
- ``Pass`` hands traffic over to the next tier: the default tier's Kubernetes
  NetworkPolicy decides it;
- the end of a tier whose policies select a pod drops what nothing decided
  (``defaultAction: Deny``), and hands it on with ``defaultAction: Pass``;
- ``tabby policy explain`` names the tier, and agrees with the probes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import yaml

from tests.netns.policy_matrix import PolicyLab, Reachability, check_explain_agrees

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

TCP80: dict[str, Any] = {"ports": (80,), "protocols": ("tcp",)}
FROM_Y = "{namespaceSelector: kubernetes.io/metadata.name == 'y'}"
FROM_Z = "{namespaceSelector: kubernetes.io/metadata.name == 'z'}"
IN_X = "projectcalico.org/namespace == 'x'"


def tier(name: str, order: int, default_action: str = "Deny") -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": name},
            "spec": {"order": order, "defaultAction": default_action}}


def gnp(name: str, tier_name: str, spec: str) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name}, "spec": {"tier": tier_name, **yaml.safe_load(spec)}}


def netpol(name: str, namespace: str, spec: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": yaml.safe_load(spec)}


@pytest.fixture
def lab(policy_lab: PolicyLab) -> PolicyLab:
    """The session's shared policy lab (tests/netns/conftest.py), reset after each test."""
    return policy_lab


def both_families(lab: PolicyLab, reach: Reachability) -> None:
    for family in ("ipv4", "ipv6"):
        lab.check(reach, family=family, **TCP80)


def explain_json(lab: PolicyLab, source: str, target: str, family: str) -> dict[str, Any]:
    out = lab.tabby("policy", "explain", "--from", source, "--to", target, "--port", "80",
                    "--family", family, "-o", "json").stdout
    return dict(json.loads(out))


def test_a_higher_tiers_deny_beats_a_lower_tiers_allow(lab: PolicyLab) -> None:
    """The default tier allows everything into x (order 1); security (order 100) denies
    y -> x/a, kube-admin (order 1000) denies z -> x/c: both win."""
    lab.apply(tier("security", 100))
    lab.apply(gnp("allow-x", "default", f"""
        order: 1
        selector: {IN_X}
        ingress: [{{action: Allow}}]"""),
              gnp("security.deny-y", "security", f"""
        selector: {IN_X} && pod == 'a'
        ingress: [{{action: Deny, source: {FROM_Y}}}, {{action: Allow}}]"""),
              gnp("admin-deny-z", "kube-admin", f"""
        order: 10
        selector: {IN_X} && pod == 'c'
        ingress: [{{action: Deny, source: {FROM_Z}}}]"""))
    both_families(lab, Reachability(lab.pods).expect("y", "x/a", False)
                  .expect("z", "x/c", False))
    got = explain_json(lab, "y/b", "x/a", "ipv6")["ingress"]
    assert (got["verdict"], got["tier"], got["policy"]["name"]) == \
        ("deny", "security", "security.deny-y"), got
    got = explain_json(lab, "z/a", "x/c", "ipv4")["ingress"]
    assert (got["verdict"], got["tier"]) == ("deny", "kube-admin"), got


def test_pass_hands_over_to_kubernetes_policy_and_the_tier_ends_in_deny(
        lab: PolicyLab) -> None:
    """Into x: security passes y (the Kubernetes policy of x, in the default tier,
    admits only pods b), allows z, and decides nothing for x itself: end of tier,
    dropped. With the tier's defaultAction Pass, x's own traffic goes on to the
    Kubernetes policy too."""
    lab.apply(tier("security", 100))
    lab.apply(gnp("gate-x", "security", f"""
        selector: {IN_X}
        ingress: [{{action: Pass, source: {FROM_Y}}}, {{action: Allow, source: {FROM_Z}}}]"""),
              netpol("only-b", "x", """
        podSelector: {}
        ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]"""))
    reach = Reachability(lab.pods).expect_ingress("x", False)
    reach.expect("y/b", "x", True).expect("z", "x", True)
    both_families(lab, reach)
    got = explain_json(lab, "y/b", "x/a", "ipv4")["ingress"]
    assert (got["verdict"], got["tier"], got["policy"]["name"]) == \
        ("allow", "default", "only-b"), got
    got = explain_json(lab, "x/b", "x/a", "ipv4")["ingress"]
    assert (got["verdict"], got["reason"], got["tier"]) == \
        ("deny", "default-deny", "security"), got
    refused = lab.tabby("delete", "tier", "security", check=False)
    assert refused.returncode != 0 and "still holds 1 policies" in refused.stderr, refused

    lab.apply(tier("security", 100, "Pass"))
    both_families(lab, reach.copy().expect("x/b", "x", True))
    check_explain_agrees(lab, keys=((80, "tcp"),))
    check_explain_agrees(lab, family="ipv6", keys=((80, "tcp"),))


def test_a_policy_in_a_missing_tier_is_refused(lab: PolicyLab) -> None:
    done = lab.tabby("apply", "-f", "-", check=False, stdin=yaml.safe_dump(
        gnp("orphan", "nowhere", "{selector: all(), ingress: [{action: Deny}]}")))
    assert done.returncode != 0 and "tier 'nowhere' does not exist" in done.stderr, done
    lab.check(Reachability(lab.pods), **TCP80)
