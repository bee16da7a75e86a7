"""Flow ids: a compact, stable name for every policy decision the kernel can log.

Every (direction, policy, rule, verdict) of a compiled policy, every end of a
tier (its default deny) and "no policy selects the endpoint" gets a flow id: 10
hex digits of a hash of what it names, so the same decision has the same id on
every node, after every restart, and in every pass. The renderer puts the id in
the nft log rule (``log group 7 prefix "tf:<id>"``, ``tabby.marks``); the agent
turns an NFLOG record's id back into its ``FlowRule`` with the ``FlowIds`` map
built here from the same ``PolicyProgram`` the rules were rendered from. The
ids name rules, not endpoints (policy chains are shared by every endpoint they
apply to): the endpoint is the packet's source (egress) or destination
(ingress).

Verdicts: ``allow``, ``deny``, ``pass`` (a Pass rule: on to the next tier),
``tier-deny`` (end of a tier, its defaultAction Deny), ``no-policy`` (allow: no
policy selects the endpoint; deny for a host endpoint without a profile).
Another reader (per-rule counters, staged policies) can reuse the same ids.

``FlowLog`` is the renderer's setting: off (None), or the NFLOG group and the
kernel's rate limit on logged packets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tabby.errors import ConfigError
from tabby.marks import FLOW_ID_LEN, FLOWLOG_GROUP
from tabby.policy.compile import CompiledPolicy
from tabby.policy.ir import Action
from tabby.policy.program import DIRECTIONS, PolicyProgram

VERDICTS = ("allow", "deny", "pass", "tier-deny", "no-policy")
ACTION_VERDICT = {Action.ALLOW: "allow", Action.DENY: "deny", Action.PASS: "pass"}


@dataclass(frozen=True, slots=True)
class FlowLog:
    """Flow logging as the renderer writes it: NFLOG group, and at most ``rate`` logged
    packets a second (``burst`` at once) on the node, the rest counted."""

    group: int = FLOWLOG_GROUP
    rate: int = 1000
    burst: int = 200

    def __post_init__(self) -> None:
        if not 0 <= self.group <= 65535:
            raise ConfigError(f"flow log group {self.group}: expected 0..65535")
        if self.rate < 1 or self.burst < 1:
            raise ConfigError(f"flow log rate {self.rate}/s burst {self.burst}: both must be"
                              " at least 1")


@dataclass(frozen=True, slots=True)
class FlowRule:
    """What one flow id names."""

    id: str
    verdict: str  # allow | deny | pass | tier-deny | no-policy
    direction: str  # ingress | egress (of the endpoint)
    kind: str = ""  # the policy's kind ("" for tier-deny and no-policy)
    api_version: str = ""
    namespace: str = ""
    name: str = ""
    tier: str = ""
    rule: int | None = None  # the rule's index in the manifest's ingress/egress list
    peer: int | None = None  # Kubernetes NetworkPolicy: which from/to entry

    @property
    def outcome(self) -> str:
        """What happened to the packet at this rule: allow, deny, or pass (next tier)."""
        if self.verdict in ("allow", "no-policy"):
            return "allow"
        return "pass" if self.verdict == "pass" else "deny"

    def policy(self) -> dict[str, str] | None:
        """The JSON ``policy`` of a flow record: None when no policy decided it."""
        if not self.kind:
            return None
        out = {"kind": self.kind, "name": self.name, "tier": self.tier}
        if self.namespace:
            out["namespace"] = self.namespace
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "verdict": self.verdict, "direction": self.direction,
                "policy": self.policy(), "rule": self.rule, "peer": self.peer,
                "tier": self.tier}


def flow_id(*parts: object) -> str:
    text = "|".join("" if p is None else str(p) for p in parts)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:FLOW_ID_LEN]


def rule_id(policy_key: str, direction: str, index: int, peer: int | None, verdict: str) -> str:
    return flow_id("rule", policy_key, direction, index, peer, verdict)


def tier_end_id(tier: str, direction: str) -> str:
    return flow_id("tier-end", tier, direction)


def no_policy_id(direction: str, verdict: str = "allow") -> str:
    return flow_id("no-policy", direction, verdict)


def policy_rules(c: CompiledPolicy) -> Iterable[FlowRule]:
    """The flow rules of one compiled policy (Log rules decide nothing: none)."""
    ref = c.policy.ref
    for direction in DIRECTIONS:
        for r in c.rules(direction):
            verdict = ACTION_VERDICT.get(r.action)
            if verdict is None:
                continue
            o = r.origin
            yield FlowRule(rule_id(ref.key, direction, o.index, o.peer, verdict), verdict,
                           direction, ref.kind, ref.api_version, ref.namespace, ref.name,
                           c.tier, o.index, o.peer)


def fixed_rules(tiers: Iterable[str]) -> Iterable[FlowRule]:
    """Tier ends and "no policy" for both directions."""
    for direction in DIRECTIONS:
        for tier in tiers:
            yield FlowRule(tier_end_id(tier, direction), "tier-deny", direction, tier=tier)
        yield FlowRule(no_policy_id(direction), "no-policy", direction)
        yield FlowRule(no_policy_id(direction, "deny"), "deny", direction)


class FlowIds:
    """flow id -> FlowRule for one program; built once per program (pure)."""

    __slots__ = ("items",)

    def __init__(self, items: Mapping[str, FlowRule]) -> None:
        self.items = dict(items)

    def get(self, fid: str) -> FlowRule | None:
        return self.items.get(fid)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlowIds) and self.items == other.items

    def __hash__(self) -> int:
        return hash(frozenset(self.items))

    def merged(self, newer: FlowIds, limit: int = 100_000) -> FlowIds:
        """``newer`` over these (a record logged just before a policy changed still
        resolves), kept under ``limit`` entries (the older ones go first)."""
        items = {**self.items, **newer.items}
        if len(items) > limit:
            items = dict(newer.items)
        return FlowIds(items)


def flow_ids(program: PolicyProgram) -> FlowIds:
    """Every flow id the rendered ``program`` can log, with what it names."""
    items: dict[str, FlowRule] = {}
    for c in program.compiled.values():
        for fr in policy_rules(c):
            items[fr.id] = fr
    tiers = {*program.tiers.items, *(c.tier for c in program.compiled.values())}
    for fr in fixed_rules(sorted(tiers)):
        items[fr.id] = fr
    return FlowIds(items)
