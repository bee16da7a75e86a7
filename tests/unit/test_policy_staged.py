"""Staged policies (issue 16 item 4): the three kinds, their evaluation over snapshots,
the agent's annotation of flow records, and ``whatif`` over a list of records."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tabby.agent.flowrecord import FlowRecord
from tabby.agent.staged import StagedAnnotator
from tabby.cli.main import main
from tabby.cli.whatif import replay
from tabby.errors import ConfigError, ValidationError
from tabby.model import (
    StagedGlobalNetworkPolicy,
    StagedKubernetesNetworkPolicy,
    StagedNetworkPolicy,
    parse_manifest,
)
from tabby.nft.render import render_full
from tabby.policy.explain import explain, find_pod
from tabby.policy.nftables import desired_policy
from tabby.policy.program import build_program
from tabby.policy.staged import StagedView, flow_packet, proposal, staged_in
from tabby.policy.synthetic import from_yaml, pod_endpoint, snapshot_of
from tabby.snapshot import Snapshot

ENFORCED = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: tabby.dev/v1
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  selector: app == 'web'
  ingress:
  - {action: Allow, protocol: TCP, destination: {ports: [80]}}
  - {action: Deny, protocol: TCP, destination: {ports: [81]}}
"""
WEB, CLI = "198.19.0.5", "198.19.0.6"


def snap(staged: str = "") -> Snapshot:
    return snapshot_of([*from_yaml(ENFORCED + staged),
                        pod_endpoint("shop/web", {"app": "web"}, "node-1", (f"{WEB}/32",)),
                        pod_endpoint("shop/cli", {"app": "cli"}, "node-2", (f"{CLI}/32",))])


def staged_doc(kind: str, name: str, spec: str, namespace: str = "shop") -> str:
    ns = f", namespace: {namespace}" if namespace else ""
    return f"---\napiVersion: tabby.dev/v1\nkind: {kind}\nmetadata: {{name: {name}{ns}}}\n" \
           f"spec: {spec}\n"


DENY_80 = staged_doc("StagedNetworkPolicy", "web-in",
                     "{selector: app == 'web', ingress: [{action: Deny, protocol: TCP,"
                     " destination: {ports: [80]}}]}")


def decide(snapshot: Snapshot, port: int, direction: str = "ingress"):  # type: ignore[no-untyped-def]
    view = StagedView(snapshot)
    return view.decide(flow_packet(4, CLI, WEB, 6, 40000, port), direction)


# -- the model ---------------------------------------------------------------------------

def test_staged_kinds_round_trip_with_their_action() -> None:
    objs = from_yaml(DENY_80 + staged_doc("StagedGlobalNetworkPolicy", "g",
                                          "{stagedAction: Delete}", namespace="")
                     + staged_doc("StagedKubernetesNetworkPolicy", "k",
                                  "{podSelector: {matchLabels: {app: web}}}"))
    snp, sgnp, sknp = objs
    assert isinstance(snp, StagedNetworkPolicy) and snp.staged_action == "Set"
    assert isinstance(sgnp, StagedGlobalNetworkPolicy) and sgnp.staged_action == "Delete"
    assert isinstance(sknp, StagedKubernetesNetworkPolicy)
    for obj in objs:
        again = parse_manifest(obj.to_manifest())
        assert again == obj
    assert snp.enforced().KIND.kind == "NetworkPolicy"
    assert sknp.enforced().KIND.api_version == "networking.k8s.io/v1"
    calico = parse_manifest({"apiVersion": "projectcalico.org/v3", "kind": "StagedNetworkPolicy",
                             "metadata": {"name": "x", "namespace": "a"},
                             "spec": {"stagedAction": "Delete"}})
    assert isinstance(calico, StagedNetworkPolicy)


def test_bad_staged_input_names_the_field() -> None:
    doc = {"apiVersion": "tabby.dev/v1", "kind": "StagedNetworkPolicy",
           "metadata": {"name": "x", "namespace": "a"}, "spec": {"stagedAction": "Maybe"}}
    with pytest.raises(ValidationError, match=r"spec\.stagedAction: 'Maybe' is not one of"):
        parse_manifest(doc)
    doc = {"apiVersion": "tabby.dev/v1", "kind": "StagedKubernetesNetworkPolicy",
           "metadata": {"name": "x", "namespace": "a"}, "spec": {"podSelector": {},
                                                                 "ingres": []}}
    with pytest.raises(ValidationError, match=r"spec\.ingres"):
        parse_manifest(doc)
    with pytest.raises(ConfigError, match="not a policy"):
        proposal(from_yaml(ENFORCED)[0])


def test_staged_policies_are_never_rendered() -> None:
    plain = render_full(desired_policy(snap(), "node-1"))
    assert render_full(desired_policy(snap(DENY_80), "node-1")) == plain


# -- evaluation ----------------------------------------------------------------------------

def test_a_staged_set_replaces_its_counterpart() -> None:
    s = snap(DENY_80)
    program = build_program(s, None)  # what is enforced: still allowed
    enforced = explain(program, find_pod(program, "shop", "cli"),
                       find_pod(program, "shop", "web"), 6, 80)
    assert enforced.ingress.verdict == "allow"
    got = decide(s, 80)
    assert got is not None
    assert (got.verdict, got.kind, got.namespace, got.name, got.rule, got.tier) == (
        "deny", "StagedNetworkPolicy", "shop", "web-in", 0, "default")
    assert got.to_dict()["policy"] == {"kind": "StagedNetworkPolicy", "namespace": "shop",
                                       "name": "web-in", "tier": "default"}
    # 81: the staged policy has no rule for it: the end of the default tier denies
    end = decide(s, 81)
    assert end is not None and (end.verdict, end.reason, end.kind) == ("deny", "default-deny", "")
    # egress of the client: no policy selects it
    out = decide(s, 80, "egress")
    assert out is not None and (out.verdict, out.reason) == ("allow", "no-policy")


def test_a_staged_delete_removes_its_counterpart() -> None:
    s = snap(staged_doc("StagedNetworkPolicy", "web-in", "{stagedAction: Delete}"))
    got = decide(s, 81)
    assert got is not None and (got.verdict, got.reason) == ("allow", "no-policy")
    assert decide(snap(), 81) is None or StagedView(snap()).active is False


def test_staged_policies_live_in_tiers() -> None:
    gnp = staged_doc("StagedGlobalNetworkPolicy", "sec",
                     "{tier: security, selector: app == 'web', ingress: [{action: Deny,"
                     " source: {selector: app == 'cli'}}]}", namespace="")
    got = decide(snap(gnp), 80)
    assert got is not None
    assert (got.verdict, got.kind, got.name, got.tier) == (
        "deny", "StagedGlobalNetworkPolicy", "sec", "security")
    passing = gnp.replace("action: Deny", "action: Pass")
    got = decide(snap(passing), 80)  # on to the default tier: the enforced allow
    assert got is not None and (got.verdict, got.kind, got.name) == (
        "allow", "NetworkPolicy", "web-in")


def test_a_staged_kubernetes_policy_isolates_the_pod() -> None:
    k = staged_doc("StagedKubernetesNetworkPolicy", "only-api",
                   "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector:"
                   " {matchLabels: {app: api}}}]}]}")
    got = decide(snap(k), 80)
    # the Kubernetes policy sorts first in the default tier and allows nothing from cli;
    # the enforced Calico policy after it still allows port 80
    assert got is not None and (got.verdict, got.name) == ("allow", "web-in")
    got = decide(snap(k), 82)
    assert got is not None and (got.verdict, got.reason) == ("deny", "default-deny")
    assert [p.kind for p in staged_in(snap(k))] == ["StagedKubernetesNetworkPolicy"]


# -- flow records ----------------------------------------------------------------------------

def record(port: int, verdict: str = "allow", direction: str = "ingress", end: float = 100.0,
           sport: int = 40000) -> FlowRecord:
    return FlowRecord(node="node-1", start=end - 1, end=end, family=4, src=CLI, dst=WEB,
                      protocol=6, sport=sport, dport=port, direction=direction,
                      verdict=verdict, reason="allow" if verdict == "allow" else "deny",
                      flow_id="0123456789", src_ep="shop/cli", dst_ep="shop/web",
                      policy_kind="NetworkPolicy", policy_namespace="shop",
                      policy_name="web-in", tier="default",
                      rule=0 if port == 80 else 1, state="ended")


def test_the_annotator_adds_the_staged_verdict_only_with_staged_policies() -> None:
    a = StagedAnnotator("node-1")
    a.update(snap())
    rec = record(80)
    assert a.annotate(rec) is rec  # no staged policy: untouched
    a.update(snap(DENY_80))
    got = a.annotate(rec)
    staged = got.to_json()["staged"]
    assert staged["verdict"] == "deny" and staged["policy"]["kind"] == "StagedNetworkPolicy"
    assert staged["rule"] == 0
    assert FlowRecord.from_json(json.loads(json.dumps(got.to_json()))) == got
    gone = dataclasses.replace(record(80), dst="198.19.9.9")
    assert a.annotate(gone) is gone  # no endpoint there: left as it is


def test_whatif_lists_the_flows_whose_verdict_changes() -> None:
    records = [record(80, sport=1), record(80, sport=2, end=101), record(81, "deny"),
               record(80, "allow", "egress"), record(80, "pass")]
    proposals = [proposal(o) for o in from_yaml(DENY_80)]
    changes, skipped = replay(records, StagedView(snap(), proposals))
    changed = [c for c in changes if c.changed]
    assert len(changed) == 1
    c = changed[0]
    assert (c.record.dport, c.flows, c.record.end, c.after.verdict) == (80, 2, 101, "deny")
    assert c.to_json()["wouldBe"]["policy"]["name"] == "web-in"
    assert skipped == 1  # the Pass record
    assert {(x.record.dport, x.record.direction) for x in changes if not x.changed} == {
        (81, "ingress"), (80, "egress")}
    # a plain NetworkPolicy proposed as is: the same answer
    plain = [proposal(o) for o in from_yaml(DENY_80.replace("StagedNetworkPolicy",
                                                            "NetworkPolicy"))]
    again, _ = replay(records, StagedView(snap(), plain))
    assert [x.changed for x in again] == [x.changed for x in changes]
    assert again[0].after.kind == "NetworkPolicy"


def test_whatif_without_a_policy_is_a_usage_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "ns.yaml"
    empty.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    assert main(["--datastore", "memory://", "policy", "whatif", "-f", str(empty),
                 "--agent-addr", "127.0.0.1:1"]) == 1
    assert "not a policy" in capsys.readouterr().err
