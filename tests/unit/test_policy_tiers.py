"""Policy tiers: the Tier kind, admission, Calico's evaluation order, and the nft chain.

The expected verdicts are written by hand from Calico's semantics (tiers in order;
in a tier, the first Allow/Deny decides, Pass goes to the next tier; a tier whose
policies select the endpoint and decide nothing ends in its defaultAction; tiers
selecting nothing are skipped; after the last tier the profile allows pods).
``test_rendered_chains_agree_with_explain`` runs the rendered nft endpoint and
policy chains through a small interpreter and compares with ``explain`` for every
combination of outcomes of four policies over three tiers.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.errors import ValidationError
from tabby.model import BUILTIN_TIERS, GlobalNetworkPolicy, NetworkPolicy, Resource, Tier
from tabby.model.base import parse_manifest
from tabby.nft.model import Ruleset
from tabby.policy.builder import policy_chain_name
from tabby.policy.explain import explain, find_pod
from tabby.policy.nftables import desired_policy
from tabby.policy.program import build_program
from tabby.policy.synthetic import from_yaml, pod_endpoint, snapshot_of
from tabby.store import open_store
from tabby.store.client import Client
from tabby.store.memory import MemoryStore

NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
"""
PODS = [
    pod_endpoint("default/a", {"app": "a"}, "node-1", ("198.19.0.1/32", "fd7a:bb1e:1::1/128")),
    pod_endpoint("team/c", {"app": "c"}, "node-2", ("198.19.0.65/32", "fd7a:bb1e:1::41/128")),
]
TIERS = """
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: platform}
spec: {order: 500, defaultAction: Pass}
"""


def gnp(name: str, tier: str, spec: str, order: int | None = None) -> str:
    tier_line = f"  tier: {tier}\n" if tier else ""
    order_line = f"  order: {order}\n" if order is not None else ""
    return (f"---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n"
            f"metadata: {{name: {name}}}\nspec:\n{tier_line}{order_line}{spec}\n")


K8S_ALLOW_C = """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-c, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {}}]}]
"""
TO_A = "  selector: app == 'a'\n"


def world(docs: str) -> list[Resource]:
    return [*from_yaml(NAMESPACES), *PODS, *from_yaml(TIERS + docs)]


def ingress_of_a(docs: str, family: int = 4) -> Any:
    program = build_program(snapshot_of(world(docs)), None)
    r = explain(program, find_pod(program, "team", "c"), find_pod(program, "default", "a"),
                6, 80, family=family)
    return r.ingress


# -- the model -------------------------------------------------------------------------------

def tier(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": name},
            "spec": spec or {}}


def test_tier_defaults_as_calicos_client_does() -> None:
    t = Tier.from_manifest(tier("security"))
    assert (t.spec.order, t.spec.default_action) == (1_000_000.0, "Deny")
    assert t.to_manifest()["spec"] == {"order": 1000000, "defaultAction": "Deny"}
    assert Tier.from_manifest(tier("x", {"order": 2.5})).to_manifest()["spec"]["order"] == 2.5


def test_builtin_tiers_are_calicos() -> None:
    assert {n: (s.order, s.default_action) for n, s in BUILTIN_TIERS.items()} == {
        "kube-admin": (1000.0, "Pass"), "default": (1_000_000.0, "Deny"),
        "kube-baseline": (10_000_000.0, "Pass")}
    Tier.from_manifest(tier("kube-admin", {"order": 1000, "defaultAction": "Pass"}))
    with pytest.raises(ValidationError, match="built-in tier 'default' has order 1000000"
                                              " and defaultAction Deny"):
        Tier.from_manifest(tier("default", {"defaultAction": "Pass"}))


@pytest.mark.parametrize(("doc", "line"), [
    (tier("sec.urity"), "metadata.name: 'sec.urity' is not a valid name"),
    (tier("x" * 64), "metadata.name: is longer than 63 characters"),
    (tier("s", {"defaultAction": "Allow"}), "spec.defaultAction: 'Allow' is not one of Deny, Pass"),
    (tier("s", {"order": "1"}), "spec.order: must be a number, not str"),
    (tier("s", {"ordr": 1}), "spec.ordr: unknown field"),
])
def test_bad_tiers_name_the_field(doc: dict[str, Any], line: str) -> None:
    with pytest.raises(ValidationError) as err:
        Tier.from_manifest(doc)
    assert any(line in text for text in err.value.lines()), err.value.lines()


def test_policy_names_with_or_without_the_tier_prefix() -> None:
    """Calico 3.32+: the name is opaque, spec.tier places the policy (default: default)."""
    docs = from_yaml(gnp("security.block", "security", TO_A) + gnp("block", "security", TO_A)
                     + gnp("other.block", "", TO_A))
    assert [(p.meta.name, p.spec.tier) for p in docs if isinstance(p, GlobalNetworkPolicy)] \
        == [("security.block", "security"), ("block", "security"), ("other.block", "default")]
    assert docs[2].to_manifest()["spec"]["tier"] == "default"


# -- admission: the tier must exist; built-in and non-empty tiers stay -------------------------

@pytest.fixture(params=["memory", "sqlite"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    store = MemoryStore() if request.param == "memory" else \
        open_store(f"sqlite:///{tmp_path / 'tabby.db'}")
    try:
        yield Client(store)
    finally:
        store.close()


def test_admission_of_tiers_and_tiered_policies(client: Client) -> None:
    assert [t.meta.name for t in client.list(Tier)] == ["default", "kube-admin",
                                                        "kube-baseline"]
    policy = parse_manifest(from_yaml(gnp("block", "security", TO_A))[0].to_manifest())
    with pytest.raises(ValidationError, match=r"spec\.tier: tier 'security' does not exist;"
                                              r" apply a Tier named 'security' first"):
        client.create(policy)
    client.create(Tier.from_manifest(tier("security", {"order": 100})))
    client.create(policy)
    client.create(parse_manifest(from_yaml(gnp("admin", "kube-admin", TO_A))[0].to_manifest()))
    assert client.apply(Tier.from_manifest(tier("default", {"order": 1000000})))[1] == "unchanged"
    with pytest.raises(ValidationError, match="Tier/security: still holds 1 policies"
                                              r" \(GlobalNetworkPolicy/block\)"):
        client.delete(Tier, "security")
    with pytest.raises(ValidationError, match="Tier/default: is a built-in tier"):
        client.delete(Tier, "default")
    client.delete(GlobalNetworkPolicy, "block")
    client.delete(Tier, "security")
    assert client.try_get(Tier, "security") is None
    assert client.get(Tier, "kube-baseline").spec.order == 10_000_000.0
    assert client.list(NetworkPolicy) == []


# -- evaluation order ---------------------------------------------------------------------------

def test_a_higher_tier_deny_beats_a_lower_tier_allow() -> None:
    deny = gnp("deny-team", "security", TO_A + "  ingress: [{action: Deny}]", order=900)
    allow = gnp("allow-all", "", TO_A + "  ingress: [{action: Allow}]", order=1)
    assert ingress_of_a(allow).verdict == "allow"
    d = ingress_of_a(allow + deny)
    assert (d.verdict, d.reason, d.tier, d.policy.name) == ("deny", "rule", "security",
                                                            "deny-team")
    assert "(tier security)" in d.summary()


def test_pass_hands_over_to_the_next_tier() -> None:
    """security passes team's traffic: the default tier's Kubernetes policy decides."""
    passing = gnp("pass-team", "security", TO_A + "  ingress: [{action: Pass, source:"
                  " {namespaceSelector: kubernetes.io/metadata.name == 'team'}},"
                  " {action: Deny}]", order=10)
    later = gnp("later-deny", "security", TO_A + "  ingress: [{action: Deny}]", order=5000)
    d = ingress_of_a(passing + later + K8S_ALLOW_C)
    assert (d.verdict, d.reason, d.tier, d.policy.name) == ("allow", "rule", "default",
                                                            "allow-c")
    deny_all = K8S_ALLOW_C.replace("ingress: [{from: [{namespaceSelector: {}}]}]",
                                   "policyTypes: [Ingress]")
    d = ingress_of_a(passing + deny_all)
    assert (d.verdict, d.reason, d.tier) == ("deny", "default-deny", "default")
    d = ingress_of_a(passing)  # passed, no later tier selects a: the profile
    assert (d.verdict, d.reason, d.tier, d.policy.name) == ("allow", "pass", "security",
                                                            "pass-team")


def test_end_of_tier_deny_for_endpoints_the_tier_selects() -> None:
    nothing = gnp("only-udp", "security", TO_A + "  ingress: [{action: Allow, protocol: UDP}]")
    d = ingress_of_a(nothing + K8S_ALLOW_C)
    assert (d.verdict, d.reason, d.tier) == ("deny", "default-deny", "security")
    assert "end of tier security, default deny" in d.summary()
    assert d.to_dict()["tier"] == "security"


def test_default_action_pass_goes_on_to_the_next_tier() -> None:
    nothing = gnp("only-udp", "platform", TO_A + "  ingress: [{action: Allow, protocol: UDP}]")
    d = ingress_of_a(nothing + K8S_ALLOW_C)
    assert (d.verdict, d.tier, d.policy.name) == ("allow", "default", "allow-c")
    d = ingress_of_a(nothing)
    assert (d.verdict, d.reason, d.tier) == ("allow", "tier-pass", "platform")


def test_a_tier_whose_policies_select_nothing_is_skipped() -> None:
    elsewhere = gnp("others", "security", "  selector: app == 'zzz'\n"
                    "  ingress: [{action: Deny}]")
    egress_only = gnp("egress", "security", TO_A + "  types: [Egress]\n"
                      "  egress: [{action: Deny}]")
    d = ingress_of_a(elsewhere + egress_only + K8S_ALLOW_C)
    assert (d.verdict, d.tier, d.policy.name) == ("allow", "default", "allow-c")
    assert [p.name for p in d.evaluated] == ["allow-c"]


def test_tier_order_ties_by_name_and_a_missing_tier_comes_last() -> None:
    """Tier "aaa" without order ties with default (1000000) and sorts first by name; a
    policy naming no existing tier is enforced after every tier, ending in Deny."""
    docs = ("---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: aaa}\n"
            + gnp("x-deny", "aaa", TO_A + "  ingress: [{action: Deny}]")
            + gnp("y-allow", "", TO_A + "  ingress: [{action: Allow}]", order=1))
    assert ingress_of_a(docs).policy.name == "x-deny"
    ghost = gnp("ghost", "nowhere", TO_A + "  ingress: [{action: Allow, protocol: UDP}]")
    program = build_program(snapshot_of(world(ghost + gnp("pass", "", TO_A + "  ingress:"
                                                          " [{action: Pass}]"))), None)
    a = program.endpoints[find_pod(program, "default", "a").key]
    assert [g.tier.name for g in program.groups(a.get("normal", "ingress"))] \
        == ["default", "nowhere"]
    d = ingress_of_a(ghost + gnp("pass", "", TO_A + "  ingress: [{action: Pass}]"))
    assert (d.verdict, d.reason, d.tier) == ("deny", "default-deny", "nowhere")


def test_kube_admin_tier_comes_before_the_default_tier_and_passes() -> None:
    """What ClusterNetworkPolicy (Admin) uses: a GlobalNetworkPolicy in kube-admin."""
    admin_deny = gnp("admin", "kube-admin", TO_A + "  ingress: [{action: Deny}]", order=10)
    allow = gnp("allow-all", "", TO_A + "  ingress: [{action: Allow}]", order=1)
    assert ingress_of_a(admin_deny + allow).tier == "kube-admin"
    admin_none = gnp("admin", "kube-admin", TO_A + "  ingress: [{action: Deny, protocol: UDP}]")
    d = ingress_of_a(admin_none + allow, family=6)
    assert (d.verdict, d.tier) == ("allow", "default")
    base_deny = gnp("base", "kube-baseline", TO_A + "  ingress: [{action: Deny}]")
    assert ingress_of_a(base_deny + K8S_ALLOW_C).tier == "default"


# -- the rendered chains, interpreted, against explain ---------------------------------------

OUTCOMES = ("Allow", "Deny", "Pass", "none")
RULE_OF = {"Allow": "[{action: Allow}]", "Deny": "[{action: Deny}]", "Pass": "[{action: Pass}]",
           "none": "[{action: Allow, protocol: UDP}]"}
ALLOW_BIT, PASS_BIT = 0x10000, 0x20000


def run_chain(table: Ruleset, name: str, mark: int) -> tuple[str | None, int]:
    """Interpret the few rule forms policy chains use, for a TCP packet: (verdict or None
    when the chain returns, the mark)."""
    for rule in table.chains[name].rules:
        body = rule.body
        m = re.match(r"meta mark & (0x[0-9a-f]+) (==|!=) (0x[0-9a-f]+|0) (.*)$", body)
        if m:
            bits = mark & int(m[1], 16)
            if (bits == int(m[3], 16)) != (m[2] == "=="):
                continue
            body = m[4]
        if body.startswith("meta l4proto udp"):
            continue  # the packet is TCP
        if body.startswith("meta mark set meta mark & "):
            mark &= int(body.split()[6], 16)
            body = " ".join(body.split()[7:])
        if body.startswith("meta mark set meta mark | "):
            mark |= int(body.split()[6], 16)
            body = " ".join(body.split()[7:])
        if body == "drop":
            return "drop", mark
        if body == "return":
            return None, mark
        if body.startswith("jump "):
            verdict, mark = run_chain(table, body.split()[1], mark)
            if verdict is not None:
                return verdict, mark
            continue
        assert body == "", f"unexpected rule {rule.body!r}"
    return None, mark


@pytest.mark.parametrize("tiers", [("security", "platform", "default"),
                                   ("platform", "default", "kube-baseline")])
def test_rendered_chains_agree_with_explain(tiers: tuple[str, str, str]) -> None:
    slots = [(tiers[0], 1), (tiers[0], 2), (tiers[1], 1), (tiers[2], 1)]
    for outcomes in itertools.product(OUTCOMES, repeat=len(slots)):
        docs = "".join(gnp(f"p-{t}-{n}", t, TO_A + f"  ingress: {RULE_OF[o]}", order=n)
                       for (t, n), o in zip(slots, outcomes, strict=True))
        snapshot = snapshot_of(world(docs))
        table = desired_policy(snapshot, "node-1")
        iface = PODS[0].spec.interface_name
        entry = next(v for k, v in table.maps["pol-wl-in"].elements if k == f'"{iface}"')
        verdict, mark = run_chain(table, entry.split()[1], 0)
        kernel = "deny" if verdict == "drop" else "allow"
        told = ingress_of_a(docs)
        assert kernel == told.verdict, (tiers, outcomes, told.summary())
        assert mark & (ALLOW_BIT | PASS_BIT) == 0 or verdict == "drop", (tiers, outcomes)
        assert policy_chain_name(f"gnp/p-{tiers[0]}-2", "ingress") in table.chains
