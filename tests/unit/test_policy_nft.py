"""The policy part of the nft table: structure, stable names, deltas touching only changes."""

from __future__ import annotations

import dataclasses
import time

from tabby.calc.node import desired_ruleset
from tabby.model import Resource, WorkloadEndpoint
from tabby.nft.render import render_delta, render_full
from tabby.policy import synthetic
from tabby.policy.builder import policy_chain_name
from tabby.policy.nftables import PolicyRules, desired_policy
from tabby.policy.synthetic import from_yaml, pod_endpoint, snapshot_of
from tabby.snapshot import Snapshot

BASE = """
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 80}, {port: http}]
"""


def web(i: int, node: str = "node-1", labels: dict[str, str] | None = None) -> WorkloadEndpoint:
    return pod_endpoint(f"default/web-{i}", labels or {"app": "web"}, node,
                        (f"198.19.0.{i}/32",), (("http", "TCP", 8080),))


def client(i: int, node: str = "node-2") -> WorkloadEndpoint:
    return pod_endpoint(f"default/client-{i}", {"role": "client"}, node, (f"198.19.1.{i}/32",))


def snap(*extra: Resource, docs: str = BASE) -> Snapshot:
    return snapshot_of([*from_yaml(docs), *extra])


def test_policy_is_in_the_node_table() -> None:
    table = render_full(desired_ruleset(snap(web(1)), "node-1"))
    assert "add rule inet tabby filter-forward jump pol-fwd" in table


def test_equal_inputs_give_equal_rulesets_and_names_are_stable() -> None:
    a = desired_policy(snap(web(1), client(1)), "node-1")
    b = desired_policy(snap(client(1), web(1)), "node-1")
    assert a == b
    chain = policy_chain_name("knp/default/web", "ingress")
    assert chain in a.chains and chain.startswith("pol-pi-")
    assert render_delta(a, b) == ""


def test_a_new_client_is_one_set_element_not_a_chain_rewrite() -> None:
    before = desired_policy(snap(web(1), client(1)), "node-1")
    after = desired_policy(snap(web(1), client(1), client(2)), "node-1")
    lines = render_delta(before, after).splitlines()
    assert len(lines) == 1 and lines[0].startswith("add element inet tabby pol-s4-")
    assert lines[0].endswith("{ 198.19.1.2 }")


def test_a_new_local_pod_is_map_and_set_elements() -> None:
    before = desired_policy(snap(web(1), client(1)), "node-1")
    after = desired_policy(snap(web(1), web(2), client(1)), "node-1")
    lines = render_delta(before, after).splitlines()
    assert all(line.startswith("add element ") for line in lines), lines
    joined = "\n".join(lines)
    assert '"' + web(2).spec.interface_name + '" . 198.19.0.2' in joined  # anti-spoofing
    assert "pol-wl-in" in joined and "198.19.0.2 . 8080" in joined  # dispatch, named port
    gone = render_delta(after, before).splitlines()
    assert all(line.startswith("delete element ") for line in gone), gone


def test_relabelling_a_remote_pod_changes_set_members_only() -> None:
    before = desired_policy(snap(web(1), client(1)), "node-1")
    moved = dataclasses.replace(client(1), meta=dataclasses.replace(
        client(1).meta, labels={**client(1).meta.labels, "role": "other"}))
    lines = render_delta(before, desired_policy(snap(web(1), moved), "node-1")).splitlines()
    assert lines == ["delete element inet tabby pol-s4-"
                     + lines[0].split("pol-s4-")[1].split(" ")[0] + " { 198.19.1.1 }"]


def test_a_policy_edit_refills_only_its_chain() -> None:
    before = desired_policy(snap(web(1), client(1)), "node-1")
    edited = BASE.replace("{port: 80}", "{port: 443}")
    lines = render_delta(before, desired_policy(snap(web(1), client(1), docs=edited),
                                                "node-1")).splitlines()
    chain = policy_chain_name("knp/default/web", "ingress")
    assert lines[0] == f"flush chain inet tabby {chain}"
    assert all(line.startswith(f"add rule inet tabby {chain} ") for line in lines[1:])
    assert any("tcp dport 443" in line for line in lines)


def test_endpoints_without_policy_have_no_dispatch_entry() -> None:
    rs = desired_policy(snap(web(1, labels={"app": "other"}), client(1, "node-1")), "node-1")
    assert rs.maps["pol-wl-in"].elements == frozenset()
    assert len(rs.sets["pol-src4"].elements) == 2  # but anti-spoofing knows them


def test_endpoint_chains_are_shared_by_endpoints_with_the_same_policies() -> None:
    rs = desired_policy(snap(*(web(i) for i in range(1, 20)), client(1)), "node-1")
    targets = {v for _, v in rs.maps["pol-wl-in"].elements}
    assert len(rs.maps["pol-wl-in"].elements) == 19 and len(targets) == 1


def test_other_nodes_endpoints_are_not_dispatched_here() -> None:
    rs = desired_policy(snap(web(1, node="node-2"), client(1)), "node-1")
    assert rs.maps["pol-wl-in"].elements == frozenset()
    assert not any(c.startswith("pol-pi-") for c in rs.chains)


def test_update_sequences_match_a_fresh_computation() -> None:
    steps: list[list[Resource]] = [[web(1)], [web(1), client(1)], [web(1), web(2), client(1)],
                                   [web(2), client(1), client(3)], [client(3)]]
    for objs in steps:  # computed in sequence (memoised compile) ...
        got = desired_policy(snap(*objs), "node-1")
    fresh = desired_policy(snapshot_of([*from_yaml(BASE), client(3)]), "node-1")
    assert got == fresh


def test_calc_time_at_scale(record_property: object) -> None:
    """Micro-benchmark (not asserted): 1000 policies over 10000 endpoints on 10 nodes."""
    cluster = synthetic.cluster(policies=1000, endpoints=10000, nodes=10)
    timings = {}
    start = time.perf_counter()
    full = desired_policy(cluster, "node-1")
    timings["full_s"] = time.perf_counter() - start
    start = time.perf_counter()
    again = desired_policy(synthetic.with_pod(cluster, 10000, 10), "node-1")
    timings["pod_added_s"] = time.perf_counter() - start
    start = time.perf_counter()
    changed = desired_policy(synthetic.with_policy(cluster, 100, 443), "node-1")
    timings["policy_changed_s"] = time.perf_counter() - start
    assert render_delta(full, again).count("\n") <= 4  # elements only
    assert 0 < render_delta(full, changed).count("\n") < 20
    for key, value in timings.items():
        record_property(key, round(value, 4))  # type: ignore[operator]


NETSET = """
apiVersion: tabby.dev/v1
kind: GlobalNetworkSet
metadata: {{name: ext, labels: {{role: client}}}}
spec: {{nets: [{nets}]}}
"""


def _random_steps(seed: int, count: int) -> list[Snapshot]:
    """A random walk of snapshots: pods come, go and change labels; policies and sets change."""
    import random
    rnd = random.Random(seed)
    pods: dict[int, WorkloadEndpoint] = {}
    port, nets = 80, "203.0.113.0/24"
    steps = []
    for _ in range(count):
        op = rnd.random()
        i = rnd.randrange(40)
        if op < 0.45:
            labels = rnd.choice([{"app": "web"}, {"role": "client"}, {"app": "web", "x": "1"},
                                 {"other": "y"}])
            node = rnd.choice(["node-1", "node-2"])
            # i % 25: now and then two pods hold one address (a stale endpoint)
            pods[i] = pod_endpoint(f"default/p{i}", labels, node, (f"198.19.2.{i % 25}/32",),
                                   (("http", "TCP", rnd.choice([8080, 9090])),))
        elif op < 0.75:
            pods.pop(i, None)
        elif op < 0.88:
            port = rnd.choice([80, 443, 8443])
        else:
            nets = rnd.choice(["203.0.113.0/24", "203.0.113.0/25, 198.51.100.7/32",
                               "198.19.2.0/24"])
        docs = BASE.replace("{port: 80}", f"{{port: {port}}}") + "---\n" + \
            NETSET.format(nets=nets)
        steps.append(snapshot_of([*from_yaml(docs), *pods.values()]))
    return steps


def test_random_update_sequences_match_fresh_computations() -> None:
    steps = _random_steps(2, 150)
    rules = PolicyRules("node-1")  # one long-lived renderer, as the agent's calculator holds
    incremental = [rules.part(s) for s in steps]
    fresh = [desired_policy(s, "node-1") for s in steps]  # a new one every time
    for k, (a, b) in enumerate(zip(incremental, fresh, strict=True)):
        assert a == b, f"step {k}"


def nets_policy(cidrs: list[str]) -> str:
    return BASE + f"""---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: nets, namespace: default}}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    source: {{nets: [{", ".join(cidrs)}]}}
"""


def test_short_cidr_lists_are_inline_and_long_ones_named_sets() -> None:
    short = [f"198.18.{i}.0/24" for i in range(0, 16, 2)]  # 8, not adjacent
    rs = desired_policy(snap(web(1), docs=nets_policy(short)), "node-1")
    assert "ip saddr { " + ", ".join(short) + " } meta mark set" in render_full(rs)
    assert not [n for n in rs.sets if n.startswith("pol-n4-")]
    long = [f"198.18.{i}.0/24" for i in range(0, 18, 2)]  # 9: a named interval set
    rs = desired_policy(snap(web(1), docs=nets_policy(long)), "node-1")
    [name] = [n for n in rs.sets if n.startswith("pol-n4-")]
    assert rs.sets[name].elements == frozenset(long)
    assert f"ip saddr @{name} meta mark set" in render_full(rs)


def test_random_sequences_reusing_objects_match_fresh_computations() -> None:
    """Unchanged objects kept (identity memos hit); namespace labels change now and then."""
    import random

    rnd = random.Random(7)
    parsed: dict[str, list[Resource]] = {}
    team = "a"
    steps = []
    for s in _random_steps(3, 120):
        if rnd.random() < 0.15:
            team = rnd.choice(["a", "b"])
        ns_doc = f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: default, labels: " \
                 f"{{team: {team}}}}}\n---\n" + NS_POLICY
        others = [o for o in s.others]
        key = repr([(type(o).__name__, o) for o in others]) + ns_doc
        objs = parsed.setdefault(key, [*others, *from_yaml(ns_doc)])
        steps.append(snapshot_of([*objs, *s.endpoints]))
    rules = PolicyRules("node-1")
    incremental = [rules.part(s) for s in steps]
    for k, s in enumerate(steps):
        assert desired_policy(s, "node-1") == incremental[k], f"step {k}"


NS_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: team, namespace: default}
spec:
  podSelector: {matchLabels: {role: client}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
"""
