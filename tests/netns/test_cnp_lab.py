"""ClusterNetworkPolicy with real packets: a SQLite lab and a Kubernetes one.

Both are the policy labs the netns session shares (tests/netns/conftest.py; the shape of
tests/netns/policy_matrix.py: namespaces x, y, z with pods a, b, c, serving TCP and UDP
on 80 and 81 with named ports ``serve-<port>-<proto>``), three nodes, both families.
Covered: an Admin Deny beating a NetworkPolicy that allows; Pass handing over to the
NetworkPolicy (past a lower-precedence Admin Deny); Baseline applying only where no
NetworkPolicy selects the pod; egress by pods peer and by networks (both families) with
a port; ingress by named port, where ``tabby policy explain`` also agrees with the
probes on every pair. In Kubernetes mode the CNP goes in with kubectl, through the
upstream-shaped CRD the lab installs (which refuses what upstream's refuses). Stored as
written on a real etcd cluster too. The semantics in full (priorities, ties, nodes
peers, ranges) are tests/unit/test_cnp_matrix.py's.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.netns.kube_lab import KUBE_MISSING
from tests.netns.policy_matrix import PolicyLab, Reachability, check_explain_agrees

if TYPE_CHECKING:
    from tests.netns.test_kube_conformance import KubePolicyLab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

FAMILIES = ("ipv4", "ipv6")


def cnp(name: str, tier: str, priority: int, spec: str) -> dict[str, Any]:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"tier": tier, "priority": priority, **yaml.safe_load(spec)}}


def ns_sel(name: str) -> str:
    return f"{{matchLabels: {{kubernetes.io/metadata.name: {name}}}}}"


# x admits y and itself; z is left out by it.
NP_X = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "x-from-y-and-x", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}},
            {"podSelector": {}}]}]}}
DENY_Y_TO_X = cnp("deny-y-to-x", "Admin", 10, f"""
subject: {{namespaces: {ns_sel('x')}}}
ingress: [{{name: deny-y, action: Deny, from: [{{namespaces: {ns_sel('y')}}}]}}]
""")
PASS_Y_TO_X = cnp("pass-y-to-x", "Admin", 5, f"""
subject: {{namespaces: {ns_sel('x')}}}
ingress: [{{action: Pass, from: [{{namespaces: {ns_sel('y')}}}]}}]
""")
BASELINE_Y = cnp("baseline-y", "Baseline", 1, f"""
subject: {{namespaces: {ns_sel('y')}}}
ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]
""")
NP_Y = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "y-from-z", "namespace": "y"},
        "spec": {"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}}


def deny_y_to_x(lab: PolicyLab) -> Reachability:
    return (Reachability(lab.pods).expect("z", "x", False).expect("y", "x", False))


@pytest.fixture
def lab(policy_lab: PolicyLab) -> PolicyLab:
    """The session's shared policy lab (tests/netns/conftest.py), reset after each test."""
    return policy_lab


def check_both(lab: PolicyLab, expect: Reachability, **kwargs: Any) -> None:
    for family in FAMILIES:
        lab.check(expect, family=family, **kwargs)


def test_admin_deny_beats_an_allowing_network_policy(lab: PolicyLab) -> None:
    lab.apply(NP_X)
    check_both(lab, Reachability(lab.pods).expect("z", "x", False), ports=(80,),
               protocols=("tcp",))
    lab.apply(DENY_Y_TO_X)
    check_both(lab, deny_y_to_x(lab), ports=(80,), protocols=("tcp", "udp"))


def test_pass_goes_to_network_policy_and_baseline_to_the_unselected(lab: PolicyLab) -> None:
    # The Deny (priority 10) would block y -> x; the Pass (priority 5) comes first and
    # hands y's traffic to x's NetworkPolicy, which admits it. Nothing selects y but the
    # Baseline policy, which denies everything into y.
    lab.apply(NP_X, DENY_Y_TO_X, PASS_Y_TO_X, BASELINE_Y)
    expect = Reachability(lab.pods).expect("z", "x", False).expect_ingress("y", False)
    check_both(lab, expect, ports=(80,), protocols=("tcp",))
    # A NetworkPolicy for y decides for y's pods: Baseline is no longer reached.
    lab.apply(NP_Y)
    expect = (Reachability(lab.pods).expect("z", "x", False).expect_ingress("y", False)
              .expect("z", "y", True))
    check_both(lab, expect, ports=(80,), protocols=("tcp",))


def test_egress_peers_networks_and_named_ports(lab: PolicyLab) -> None:
    egress = cnp("x-a-egress", "Admin", 20, """
subject: {pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}},
                 podSelector: {matchLabels: {pod: a}}}}
egress:
- {action: Accept, to: [{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}},
                                podSelector: {matchLabels: {pod: b}}}}]}
- {action: Deny, to: [{networks: [0.0.0.0/0, "::/0"]}],
   protocols: [{tcp: {destinationPort: {number: 80}}}]}
""")
    named = cnp("z-no-81-tcp", "Admin", 30, """
subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: z}}}
ingress:
- {action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: serve-81-tcp}]}
""")
    lab.apply(egress, named)
    tcp80 = Reachability(lab.pods).expect_egress("x/a", False).expect("x/a", "y/b", True)
    tcp81 = Reachability(lab.pods).expect_ingress("z", False)
    open_ = Reachability(lab.pods)
    expect = {(80, "tcp"): tcp80, (81, "tcp"): tcp81, (80, "udp"): open_, (81, "udp"): open_}
    check_both(lab, expect)  # type: ignore[arg-type]
    check_explain_agrees(lab, family="ipv6")


# -- Kubernetes mode ----------------------------------------------------------------------

@pytest.mark.skipif(bool(KUBE_MISSING), reason=KUBE_MISSING)
def test_kubectl_applies_a_cluster_network_policy(kube_policy_lab: KubePolicyLab) -> None:
    net, kubectl = kube_policy_lab, kube_policy_lab.k
    net.check(Reachability(net.pods), ports=(80,), protocols=("tcp",))
    net.apply(NP_X, DENY_Y_TO_X)
    listed = kubectl.run("get", "cnp", "deny-y-to-x").stdout
    assert "Admin" in listed and "10" in listed, listed
    stored = kubectl.get_json("clusternetworkpolicies.policy.networking.k8s.io",
                              "deny-y-to-x")
    assert stored["spec"]["ingress"][0]["name"] == "deny-y"
    for family in FAMILIES:
        net.check(deny_y_to_x(net), family=family, ports=(80,), protocols=("tcp",))
    # The API server refuses what upstream's CRD refuses.
    bad = cnp("bad", "Admin", 1001, "subject: {namespaces: {}, pods: {podSelector: {}}}")
    refused = kubectl.apply(bad, check=False)
    assert refused.returncode != 0 and "priority" in refused.stderr, refused.stderr
    net.delete(DENY_Y_TO_X)
    net.check(Reachability(net.pods).expect("z", "x", False), ports=(80,),
              protocols=("tcp",))


@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs the etcd binary")
def test_stored_as_written_on_etcd() -> None:
    from tabby.model import ClusterNetworkPolicy, parse_manifest
    from tabby.store import open_store
    from tabby.store.client import Client
    from tabby.testing.etcd import EtcdCluster
    with EtcdCluster(3) as etcd:
        store = open_store(etcd.url)
        try:
            client = Client(store)
            client.create(parse_manifest(DENY_Y_TO_X))
            [item] = store.list(ClusterNetworkPolicy.KIND.resource)
            assert item.value["apiVersion"] == "policy.networking.k8s.io/v1alpha2"
            assert item.value["spec"] == DENY_Y_TO_X["spec"]
            got = client.get(ClusterNetworkPolicy, "deny-y-to-x")
            assert got.spec.ingress[0].name == "deny-y"
        finally:
            store.close()
