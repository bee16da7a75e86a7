"""Service accounts in policy: names from the pod, selectors over the ServiceAccount's labels."""

from __future__ import annotations

import dataclasses

from tabby.model import ObjectMeta, Resource, ServiceAccount, parse_manifest
from tabby.policy.explain import explain, find_pod, protocol_number
from tabby.policy.program import ProgramBuilder, build_program
from tabby.policy.synthetic import from_yaml, pod_endpoint, snapshot_of

WORLD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot, namespace: shop, labels: {team: ops}}
automountServiceAccountToken: false
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: intern, namespace: shop, labels: {team: dev}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot, namespace: elsewhere, labels: {team: dev}}
"""

PODS = [
    pod_endpoint("shop/db", {"app": "db"}, "node-1", ("198.19.0.1/32",), service_account="robot"),
    pod_endpoint("shop/ops", {"app": "x"}, "node-1", ("198.19.0.2/32",), service_account="robot"),
    pod_endpoint("shop/dev", {"app": "x"}, "node-2", ("198.19.0.3/32",),
                 service_account="intern"),
    pod_endpoint("shop/anon", {"app": "x"}, "node-2", ("198.19.0.4/32",)),
]

BY_SA_LABELS = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {serviceAccounts: {selector: team == 'ops'}}}]
"""

BY_SA_NAMES = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {serviceAccounts: {names: [intern]}}}]
"""

SA_SELECTOR = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: ops-only-egress}
spec:
  serviceAccountSelector: team == 'dev'
  types: [Egress]
"""


def allowed(objects: list[Resource], src: str, dst: str = "shop/db") -> bool:
    program = build_program(snapshot_of(objects), None)
    return explain(program, find_pod(program, *src.split("/")),
                   find_pod(program, *dst.split("/")),
                   protocol_number("tcp"), 5432).verdict == "allow"


def test_a_rule_selects_pods_by_their_service_accounts_labels() -> None:
    w = [*from_yaml(WORLD + "---" + BY_SA_LABELS), *PODS]
    got = {p: allowed(w, p) for p in ("shop/ops", "shop/dev", "shop/anon")}
    assert got == {"shop/ops": True, "shop/dev": False, "shop/anon": False}


def test_a_rule_selects_pods_by_service_account_name() -> None:
    w = [*from_yaml(WORLD + "---" + BY_SA_NAMES), *PODS]
    got = {p: allowed(w, p) for p in ("shop/ops", "shop/dev", "shop/anon")}
    assert got == {"shop/ops": False, "shop/dev": True, "shop/anon": False}


def test_service_account_selector_picks_the_pods_a_policy_applies_to() -> None:
    w = [*from_yaml(WORLD + "---" + SA_SELECTOR), *PODS]
    # the egress default deny lands on shop/dev (team=dev) only
    assert not allowed(w, "shop/dev", "shop/ops")
    assert allowed(w, "shop/ops", "shop/dev")
    assert allowed(w, "shop/anon", "shop/ops")  # default SA: no such ServiceAccount, no labels


def test_relabelling_a_service_account_changes_verdicts_in_a_long_lived_builder() -> None:
    objects = [*from_yaml(WORLD + "---" + BY_SA_LABELS), *PODS]
    builder = ProgramBuilder()

    def verdict(objs: list[Resource]) -> str:
        program = builder.build(snapshot_of(objs), None)
        return explain(program, find_pod(program, "shop", "dev"), find_pod(program, "shop", "db"),
                       protocol_number("tcp"), 5432).verdict

    assert verdict(objects) == "deny"
    intern = next(o for o in objects if isinstance(o, ServiceAccount)
                  and o.meta.name == "intern")
    promoted = dataclasses.replace(intern, meta=dataclasses.replace(
        intern.meta, labels={"team": "ops"}))
    relabelled = [promoted if o is intern else o for o in objects]
    assert verdict(relabelled) == "allow"
    assert verdict(objects) == "deny"  # and back


def test_service_account_model_keeps_what_it_does_not_read() -> None:
    doc = {"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "robot", "namespace": "shop", "labels": {"team": "ops"}},
           "secrets": [{"name": "robot-token"}], "automountServiceAccountToken": False}
    sa = parse_manifest(doc)
    assert isinstance(sa, ServiceAccount)
    assert sa.meta == ObjectMeta("robot", "shop", {"team": "ops"})
    assert sa.to_manifest() == {**doc, "metadata": sa.meta.to_dict()}
