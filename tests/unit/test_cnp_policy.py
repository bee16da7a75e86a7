"""ClusterNetworkPolicy converted into tabby's policy engine: tiers, order, rules, peers, memo."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import yaml

from tabby.model import ClusterNetworkPolicy, Node, parse_manifest
from tabby.model.policyrules import EntityRule, PortSpec
from tabby.policy.clusternetworkpolicy import (
    K8S_POD,
    ClusterPolicies,
    node_addresses,
    to_policy,
)
from tabby.policy.program import build_program
from tabby.snapshot import Snapshot


def cnp(text: str) -> ClusterNetworkPolicy:
    obj = parse_manifest(yaml.safe_load(text))
    assert isinstance(obj, ClusterNetworkPolicy)
    return obj


def node(name: str, labels: dict[str, str], v4: str, v6: str = "",
         addresses: tuple[str, ...] = ()) -> Node:
    bgp: dict[str, Any] = {"ipv4Address": v4}
    if v6:
        bgp["ipv6Address"] = v6
    spec: dict[str, Any] = {"bgp": bgp}
    if addresses:
        spec["addresses"] = [{"address": a} for a in addresses]
    obj = parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                          "metadata": {"name": name, "labels": labels}, "spec": spec})
    assert isinstance(obj, Node)
    return obj


NODES = (node("node-1", {"kubernetes.io/os": "linux", "rack": "a"}, "198.18.0.11/24",
              "fd7a:bb1e::11/64", ("198.18.0.11", "203.0.113.11", "node-1.lab")),
         node("node-2", {"kubernetes.io/os": "linux", "rack": "b"}, "198.18.0.12/24"))

EGRESS = """
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: egress}
spec:
  tier: Baseline
  priority: 30
  subject:
    pods:
      namespaceSelector: {matchLabels: {house: gryffindor}}
      podSelector: {matchLabels: {app: web}}
  egress:
  - name: nodes
    action: Accept
    to:
    - nodes: {matchLabels: {rack: a}}
    - networks: [10.0.0.0/8, "fd00::/8"]
    protocols:
    - tcp: {destinationPort: {number: 6443}}
    - udp: {destinationPort: {range: {start: 5000, end: 5100}}}
  - action: Pass
    to:
    - nodes: {matchLabels: {rack: nowhere}}
    - namespaces: {}
  - action: Deny
    to:
    - pods:
        namespaceSelector: {}
        podSelector: {matchLabels: {app: db}}
    protocols:
    - destinationNamedPort: pg
    - tcp: {destinationPort: {number: 5432}}
"""

INGRESS = """
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: ingress}
spec:
  tier: Admin
  priority: 0
  subject: {namespaces: {matchLabels: {house: gryffindor}}}
  ingress:
  - action: Deny
    from: [{namespaces: {matchLabels: {house: slytherin}}}]
"""


def test_tier_order_and_subject() -> None:
    admin = to_policy(cnp(INGRESS))
    assert (admin.spec.tier, admin.spec.order) == ("kube-admin", 0.0)
    assert admin.spec.selector == K8S_POD
    assert admin.spec.namespace_selector == "house == 'gryffindor'"
    assert admin.spec.types == ("Ingress",)
    assert admin.ref.key == "cnp/ingress"
    assert admin.ref.display == "ClusterNetworkPolicy.policy.networking.k8s.io ingress"
    baseline = to_policy(cnp(EGRESS), node_addresses(NODES))
    assert (baseline.spec.tier, baseline.spec.order) == ("kube-baseline", 30.0)
    assert baseline.spec.selector == f"{K8S_POD} && (app == 'web')"
    assert baseline.spec.types == ("Egress",)


def test_ingress_peers_are_sources_and_ports_the_destination() -> None:
    [rule] = to_policy(cnp(INGRESS)).spec.ingress
    assert rule.action == "Deny" and rule.protocol is None
    assert rule.source == EntityRule(selector=K8S_POD,
                                     namespace_selector="house == 'slytherin'")
    assert rule.destination == EntityRule()


def test_egress_rules_per_peer_and_protocol_with_their_origins() -> None:
    policy = to_policy(cnp(EGRESS), node_addresses(NODES))
    rules, origins = policy.spec.egress, policy.egress_origins
    node_1 = tuple(ipaddress.ip_network(a) for a in (
        "198.18.0.11/32", "203.0.113.11/32", "fd7a:bb1e::11/128"))
    # rule 0: peers nodes (rack a: node-1's addresses, hostnames skipped) and networks,
    # each with TCP 6443 and UDP 5000-5100
    assert [(o.index, o.peer) for o in origins[:4]] == [(0, 0), (0, 0), (0, 1), (0, 1)]
    assert [(r.action, r.protocol) for r in rules[:4]] == [
        ("Allow", 6), ("Allow", 17), ("Allow", 6), ("Allow", 17)]
    assert rules[0].destination == EntityRule(nets=node_1, ports=(PortSpec(6443, 6443),))
    assert rules[1].destination.ports == (PortSpec(5000, 5100),)
    assert rules[2].destination.nets == (ipaddress.ip_network("10.0.0.0/8"),
                                         ipaddress.ip_network("fd00::/8"))
    # rule 1: the nodes peer matches no node: left out (empty nets would match all)
    assert [(o.index, o.peer) for o in origins[4:5]] == [(1, 1)]
    assert rules[4].action == "Pass" and rules[4].protocol is None
    assert rules[4].destination == EntityRule(selector=K8S_POD, namespace_selector="all()")
    # rule 2: the named port goes with TCP (beside 5432), UDP and SCTP
    assert [(r.protocol, r.destination.ports) for r in rules[5:]] == [
        (6, (PortSpec(5432, 5432), PortSpec(name="pg"))),
        (17, (PortSpec(name="pg"),)), (132, (PortSpec(name="pg"),))]
    assert all(r.destination.selector == f"{K8S_POD} && (app == 'db')" for r in rules[5:])
    assert {o.index for o in origins[5:]} == {2}


def test_a_policy_without_rules_selects_nothing() -> None:
    policy = to_policy(cnp("""
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: empty}
spec: {tier: Admin, priority: 3, subject: {namespaces: {}}}
"""))
    assert policy.spec.types == () and policy.spec.namespace_selector == "all()"


def snapshot(*objs: Any, nodes: tuple[Node, ...] = NODES) -> Snapshot:
    return Snapshot.build(nodes=nodes, others=objs)


def test_compiled_policies_are_kept_while_nothing_they_read_changes() -> None:
    memo = ClusterPolicies()
    a, b = cnp(INGRESS), cnp(EGRESS)
    first = memo.compiled(snapshot(a, b))
    assert [c.key for c in first] == ["cnp/egress", "cnp/ingress"]
    again = memo.compiled(snapshot(a, b))
    assert all(x is y for x, y in zip(first, again, strict=True))
    # node-1 moves: the policy with a nodes peer is compiled afresh, the other is kept
    moved = (dataclasses.replace(NODES[0], spec=dataclasses.replace(
        NODES[0].spec, addresses=())), NODES[1])
    third = memo.compiled(snapshot(a, b, nodes=moved))
    assert third[0] is not first[0] and third[1] is first[1]
    assert ipaddress.ip_network("203.0.113.11/32") not in third[0].policy.spec.egress[0] \
        .destination.nets
    assert memo.compiled(snapshot()) == []


def test_the_program_places_them_in_their_tiers() -> None:
    program = build_program(snapshot(cnp(INGRESS), cnp(EGRESS)), None)
    assert {k: c.tier for k, c in program.compiled.items()} == {
        "cnp/ingress": "kube-admin", "cnp/egress": "kube-baseline"}
