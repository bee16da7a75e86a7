"""Per-rule counters and the agent's policy, nft, BGP and IPAM metrics (issue 16 item 3):
counter rendering and its transactions (FakeNft), the scrape's label sets and their
bound, one nft read per scrape, IPAM usage from a snapshot."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tabby.agent.flowrecord import FlowRecord
from tabby.agent.metrics import Registry
from tabby.agent.policymetrics import (
    MAX_DENIED_SERIES,
    PolicyMetrics,
    RuleCounters,
    bounded,
    counter_values,
    ipam_usage,
)
from tabby.dataplane.nft import NftReconciler
from tabby.errors import DataplaneError
from tabby.marks import flow_id_of_counter, policy_counter_name
from tabby.model import IPAMBlock, IPPool, parse_manifest
from tabby.nft.render import render_delta, render_full
from tabby.policy.flowids import flow_ids, rule_id, tier_end_id
from tabby.policy.nftables import PolicyRules, desired_policy
from tabby.policy.program import build_program
from tabby.policy.synthetic import from_yaml, pod_endpoint, snapshot_of
from tabby.snapshot import Snapshot
from tabby.testing.fakes.nft import FakeNft

DOCS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, destination: {ports: [80]}}
  - {action: Log}
  - {action: Deny, protocol: TCP, destination: {ports: [81]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: k8s, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 198.18.0.0/24}}, {podSelector: {}}]
"""


def snap(docs: str = DOCS) -> Snapshot:
    return snapshot_of([*from_yaml(docs),
                        pod_endpoint("shop/web", {"app": "web"}, "node-1",
                                     ("198.19.0.5/32", "fd7a:bb1e::5/128"))])


ALLOW = rule_id("np/shop/web-in", "ingress", 0, None, "allow")
DENY = rule_id("np/shop/web-in", "ingress", 2, None, "deny")


def test_every_verdict_rule_counts_into_its_named_counter() -> None:
    part = desired_policy(snap(), "node-1", counters=True)
    assert policy_counter_name(ALLOW) in part.counters
    assert policy_counter_name(DENY) in part.counters
    rules = [r for c in part.chains.values() for r in c.rules]
    counted = [r for r in rules if "counter name" in r.body]
    assert all(r.body.split('counter name "')[1][:13] in part.counters for r in counted)
    assert any(r.body.endswith(f'counter name "pc-{DENY}" drop') for r in counted)
    # the two peers of the Kubernetes rule are two counters; its v4 and v6 alternatives of
    # one peer share one
    k8s = {r.body.split('"')[1] for r in counted if "k8s" in r.comment}
    assert len(k8s) == 2 and len([r for r in counted if "k8s" in r.comment]) == 3
    assert "counter" not in render_full(desired_policy(snap(), "node-1"))  # off: none
    text = render_full(part)
    assert text.index(f"add counter inet tabby pc-{DENY}") < text.index(f'"pc-{DENY}" drop')
    assert flow_id_of_counter(policy_counter_name(DENY)) == DENY
    assert flow_id_of_counter("pc-short") is None and flow_id_of_counter("x") is None


def test_counters_come_and_go_with_their_rules_in_one_transaction() -> None:
    nft = FakeNft()
    rec = NftReconciler(nft)
    rules = PolicyRules("node-1", counters=True)
    assert not rec.apply(rules.part(snap()), full=True).errors
    assert set(nft.tables[("inet", "tabby")].counters) == set(rules.part(snap()).counters)
    # the Deny rule goes: its counter is deleted after the chain is refilled
    fewer = DOCS.replace("  - {action: Deny, protocol: TCP, destination: {ports: [81]}}\n", "")
    before = rules.part(snap())
    after = rules.part(snap(fewer))
    script = render_delta(before, after)
    assert f"delete counter inet tabby pc-{DENY}" in script
    assert script.index("add rule") < script.index("delete counter")
    result = rec.apply(after)
    assert result.mode == "delta" and not result.errors
    assert f"pc-{DENY}" not in nft.tables[("inet", "tabby")].counters
    # a full pass (periodic resync) replaces the table: the counts are declared again
    nft.count(f"pc-{ALLOW}", 7, 420)
    assert rec.apply(after, full=True).mode == "full"
    assert nft.tables[("inet", "tabby")].counters[f"pc-{ALLOW}"] == (7, 420)
    assert "counters table inet tabby" in nft.reads
    # the fake refuses what nft refuses: a rule naming a counter nobody declared
    with pytest.raises(DataplaneError, match="No such file"):
        nft.run('add rule inet tabby pol-fwd counter name "pc-0000000000" drop\n')


def listing(*items: tuple[str, int, int]) -> dict[str, object]:
    return {"nftables": [{"metainfo": {}}, *(
        {"counter": {"family": "inet", "table": "tabby", "name": n, "packets": p, "bytes": b}}
        for n, p, b in items)]}


def test_counter_values_are_labelled_by_policy_rule_and_summed_over_peers() -> None:
    ids = flow_ids(build_program(snap(), "node-1"))
    k8s = [fr.id for fr in ids.items.values() if fr.name == "k8s"]
    got = counter_values(listing((f"pc-{ALLOW}", 3, 180), (f"pc-{DENY}", 2, 120),
                                 *((f"pc-{i}", 1, 60) for i in k8s),
                                 ("pc-ffffffffff", 9, 9), ("other", 9, 9)), ids)
    assert got[("NetworkPolicy", "shop", "web-in", "default", "ingress", "0", "allow")] == \
        (3, 180)
    assert got[("NetworkPolicy", "shop", "web-in", "default", "ingress", "2", "deny")] == \
        (2, 120)
    assert got[("NetworkPolicy", "shop", "k8s", "default", "ingress", "0", "allow")] == (2, 120)
    assert len(got) == 3  # unknown ids and foreign counters are no series
    end = counter_values(listing((f"pc-{tier_end_id('default', 'ingress')}", 4, 240)), ids)
    assert end == {("", "", "", "default", "ingress", "", "tier-deny"): (4, 240)}


def test_tier_ends_count_before_their_drop() -> None:
    part = desired_policy(snap(), "node-1", counters=True)
    name = policy_counter_name(tier_end_id("default", "ingress"))
    assert name in part.counters
    chain = next(c for n, c in part.chains.items() if n.startswith("pol-wi-"))
    bodies = [r.body for r in chain.rules]
    at = bodies.index(f'counter name "{name}"')
    assert bodies[at + 1] == "drop"  # the endpoint chain's default deny follows


def test_series_are_bounded_and_the_rest_counted() -> None:
    values: dict[tuple[str, ...], tuple[int, int]] = {(str(i),): (i, i) for i in range(10)}
    kept, dropped = bounded(values, 4)
    assert len(kept) == 4 and dropped == 6 and ("0",) in kept


def test_one_nft_read_per_scrape_for_packets_and_bytes() -> None:
    reads: list[str] = []
    ids = flow_ids(build_program(snap(), "node-1"))

    def read(what: str) -> str:
        reads.append(what)
        return json.dumps(listing((f"pc-{DENY}", 5, 300)))

    r = Registry()
    now = [0.0]
    m = PolicyMetrics(r, nft_read=read, ids=lambda: ids)
    m.rules = RuleCounters(read, lambda: ids, clock=lambda: now[0])
    text = r.render()
    assert reads == ["counters table inet tabby"]
    assert ('tabby_policy_rule_packets_total{kind="NetworkPolicy",namespace="shop",'
            'name="web-in",tier="default",direction="ingress",rule="2",action="deny"} 5') in text
    assert 'action="deny"} 300' in text and "tabby_policy_rule_series_dropped 0" in text
    now[0] = 0.5
    r.render()
    assert len(reads) == 2  # every scrape reads afresh, once


def test_an_unreadable_table_gives_no_series_not_an_error() -> None:
    def read(what: str) -> str:
        raise DataplaneError("nft list counters table inet tabby: No such file or directory")
    c = RuleCounters(read, lambda: flow_ids(build_program(snap(), "node-1")))
    assert c.values() == ({}, 0) and c.errors == 1


def test_nft_programming_and_denied_flows_are_counted_with_a_bound() -> None:
    r = Registry()
    m = PolicyMetrics(r, nft_read=lambda w: "{}", ids=lambda: flow_ids(
        build_program(snap(), "node-1")))
    m.observe("full", 0.02, False, snap())
    m.observe("delta", 0.001, True, snap())
    m.observe("none", 0.0, False, snap())
    assert m.nft_seconds.count("full") == 1 and m.nft_failures.value("delta") == 1
    base = FlowRecord(node="n", start=0, end=0, family=4, src="198.19.0.6", dst="198.19.0.5",
                      protocol=6, sport=1, dport=81, direction="ingress", verdict="deny",
                      reason="deny", flow_id="x", policy_kind="NetworkPolicy",
                      policy_namespace="shop", policy_name="web-in", tier="default", rule=2)
    assert m.flow(base) is base
    assert m.denied.value("NetworkPolicy", "shop", "web-in", "default", "deny") == 1
    for i in range(MAX_DENIED_SERIES + 5):
        m.flow(dataclasses.replace(base, policy_name=f"p{i}"))
    assert m.denied.value("", "", "(other)", "", "deny") == 6
    assert r.render().count("tabby_policy_denied_flows_total{") == MAX_DENIED_SERIES + 1


def test_ipam_usage_per_pool_from_the_snapshot() -> None:
    pool = parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                           "metadata": {"name": "p4"}, "spec": {"cidr": "198.19.0.0/24",
                                                                "blockSize": 26}})
    block = parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPAMBlock",
                            "metadata": {"name": "198-19-0-0-26"},
                            "spec": {"cidr": "198.19.0.0/26", "affinity": "host:node-1",
                                     "allocations": [0, None, 1] + [None] * 61,
                                     "unallocated": [*range(3, 64), 1],
                                     "attributes": [{"handle_id": "a"}, {"handle_id": "b"}]}})
    assert isinstance(pool, IPPool) and isinstance(block, IPAMBlock)
    s = Snapshot.build(blocks=[block], others=[pool])
    assert ipam_usage(s) == {"p4": (1, 2, 256 - 2)}
    r = Registry()
    m = PolicyMetrics(r, nft_read=lambda w: "{}", ids=lambda: flow_ids(
        build_program(snap(), "node-1")))
    m.observe("none", 0.0, False, s)
    text = r.render()
    assert 'tabby_ipam_blocks{pool="p4"} 1' in text
    assert 'tabby_ipam_addresses{pool="p4",state="used"} 2' in text
    assert "tabby_bgp_peers" in text and "tabby_bgp_peer_up{" not in text  # no BIRD
