"""All-interfaces host endpoints (``interfaceName: "*"``): the model and their nft dispatch."""

from __future__ import annotations

import pytest

from tabby.errors import ValidationError
from tabby.model import HostEndpoint, parse_manifest
from tabby.nft.model import Ruleset
from tabby.policy.nftables import desired_policy
from tabby.policy.synthetic import from_yaml, pod_endpoint, snapshot_of

HEPS = """
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-1-all, labels: {role: host}}
spec: {node: node-1, interfaceName: "*", expectedIPs: [198.18.0.11]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-1-mgmt, labels: {role: mgmt}}
spec: {node: node-1, interfaceName: mgmt0}
"""

NO_8080 = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: no-8080}
spec:
  selector: role == 'host'
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [8080]}}, {action: Allow}]
  egress: [{action: Allow}]
"""

FORWARD = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: fwd}
spec:
  selector: role == 'host'
  applyOnForward: true
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [81]}}, {action: Allow}]
  egress: [{action: Deny, protocol: TCP, destination: {ports: [81]}}, {action: Allow}]
"""

PRE_DNAT = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pre}
spec:
  selector: role == 'host'
  preDNAT: true
  applyOnForward: true
  types: [Ingress]
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [30080]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: untracked}
spec:
  selector: role == 'host'
  doNotTrack: true
  applyOnForward: true
  ingress: [{action: Allow, protocol: UDP}]
"""


def hep(iface: object) -> HostEndpoint:
    obj = parse_manifest({"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint",
                          "metadata": {"name": "h"}, "spec": {"node": "n",
                                                              "interfaceName": iface}})
    assert isinstance(obj, HostEndpoint)
    return obj


def policy(docs: str, node: str = "node-1") -> Ruleset:
    pod = pod_endpoint("default/a", {"app": "a"}, "node-1", ("198.19.0.1/32",))
    return desired_policy(snapshot_of([*from_yaml(docs), pod]), node)


def bodies(part: Ruleset, chain: str) -> list[str]:
    return [r.body for r in part.chains[chain].rules]


def wildcard_jump(part: Ruleset, chain: str, word: str) -> str:
    """The chain the all-interfaces rule of ``chain`` jumps to."""
    found = [b for b in bodies(part, chain) if f"{word} != @pol-hep-ifaces" in b]
    assert len(found) == 1, bodies(part, chain)
    return found[0].rsplit(" ", 1)[1]


def test_model_accepts_star_and_refuses_patterns() -> None:
    assert hep("*").spec.all_interfaces
    assert not hep("eth0").spec.all_interfaces
    assert hep("*").to_manifest()["spec"]["interfaceName"] == "*"
    for bad in ("eth*", "**", "a b", "x" * 16):
        with pytest.raises(ValidationError, match=r"spec\.interfaceName"):
            hep(bad)


def test_star_is_the_default_after_named_endpoints_and_skips_pods() -> None:
    part = policy(HEPS + "---" + NO_8080)
    rule_in = next(b for b in bodies(part, "pol-in") if "pol-hep-ifaces" in b)
    assert rule_in.startswith('iifname != "tab*" iifname != @pol-hep-ifaces jump pol-hi-')
    # after the named endpoints' map, never before
    assert bodies(part, "pol-in").index("iifname vmap @pol-hep-in") < \
        bodies(part, "pol-in").index(rule_in)
    assert part.sets["pol-hep-ifaces"].elements == frozenset({'"mgmt0"'})
    rule_out = next(b for b in bodies(part, "pol-out") if "pol-hep-ifaces" in b)
    assert rule_out.startswith('oifname != "tab*" oifname != @pol-hep-ifaces jump pol-he-')
    chain = part.chains[wildcard_jump(part, "pol-in", "iifname")]
    texts = [r.body for r in chain.rules]
    assert texts[0].startswith("tcp dport") and "22" in texts[0]  # failsafe first
    assert texts[-1] == "drop"  # default deny after the policies
    # no applyOnForward policy: forwarded traffic is not the endpoint's business
    assert not [b for b in bodies(part, "pol-fwd") if "pol-hep-ifaces" in b]


def test_forwarded_traffic_meets_only_apply_on_forward_policies() -> None:
    part = policy(HEPS + "---" + NO_8080 + "---" + FORWARD)
    fwd_in = part.chains[wildcard_jump(part, "pol-fwd", "iifname")]
    fwd_out = part.chains[wildcard_jump(part, "pol-fwd", "oifname")]
    for chain in (fwd_in, fwd_out):
        jumps = [r.comment for r in chain.rules if r.body.startswith("jump ")]
        assert len(jumps) == 1 and jumps[0].endswith(" fwd"), jumps  # not no-8080
        assert not [r for r in chain.rules if "dport" in r.body and "22" in r.body]  # no failsafe
    normal = part.chains[wildcard_jump(part, "pol-in", "iifname")]
    assert len([r for r in normal.rules if r.body.startswith("jump ")]) == 2  # both, in order


def test_pre_dnat_applies_to_every_interface_and_untracked_not_at_all() -> None:
    part = policy(HEPS + "---" + PRE_DNAT)
    pre = bodies(part, "pol-pre")
    rule = next(b for b in pre if "pol-hep-ifaces" in b)
    assert rule.startswith("iifname != @pol-hep-ifaces jump pol-hpi-")  # pods' too
    assert "pol-raw-out" not in part.chains
    assert bodies(part, "pol-raw-pre") == ['iifname "tab*" jump pol-antispoof']


def test_one_star_endpoint_per_node_the_first_by_name() -> None:
    second = """
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-1-zz, labels: {role: other}}
spec: {node: node-1, interfaceName: "*"}
"""
    part = policy(HEPS + second + "---" + NO_8080)
    chain = part.chains[wildcard_jump(part, "pol-in", "iifname")]
    jumps = [r.comment for r in chain.rules if r.body.startswith("jump ")]
    assert len(jumps) == 1 and jumps[0].endswith(" no-8080")  # node-1-all's, not node-1-zz's
    other_node = policy(HEPS.replace("node: node-1, interfaceName: \"*\"",
                                     "node: node-2, interfaceName: \"*\"") + "---" + NO_8080)
    assert not [b for b in bodies(other_node, "pol-in") if "pol-hep-ifaces" in b]
