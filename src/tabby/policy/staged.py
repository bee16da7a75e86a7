"""Staged policies evaluated: what they would decide for a flow, never enforced (pure).

A staged policy (``tabby.model.stagedpolicy``) with ``stagedAction: Set`` stands in
for its enforced counterpart (same kind, namespace and name; or joins the policies
when there is none); ``Delete`` removes the counterpart. ``with_proposals`` makes
that swap in a snapshot, and ``StagedView`` builds the ``PolicyProgram`` of the
swapped snapshot with the same builder the nftables compiler and ``explain`` use,
then evaluates a flow's first packet with ``explain.evaluate``: the endpoint's
direction the flow record names (egress: the source endpoint; ingress: the
destination), tiers, Pass, end-of-tier deny and profiles as the kernel has them::

    snapshot --with_proposals(staged)--> snapshot' --build_program--> program'
    flow (family, src, dst, proto, ports, direction) --evaluate(program')--> StagedVerdict

The agent keeps one view per pass and asks it for each new flow record (only when
some staged policy exists: ``StagedView.active``); ``tabby policy whatif`` builds one
from the proposed policies and compares with the verdicts the flows got.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tabby.errors import ConfigError
from tabby.model import GlobalNetworkPolicy, K8sNetworkPolicy, NetworkPolicy, Resource
from tabby.model.stagedpolicy import STAGED_KINDS, StagedPolicy
from tabby.policy.convert import from_resource
from tabby.policy.explain import Decision, evaluate
from tabby.policy.index import Entity
from tabby.policy.ir import Packet
from tabby.policy.program import PolicyProgram, build_program
from tabby.snapshot import Snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ENFORCED_KINDS = (NetworkPolicy, GlobalNetworkPolicy, K8sNetworkPolicy)


@dataclass(frozen=True, slots=True)
class Proposal:
    """One change to the enforced policies: ``policy`` in place of ``target`` (a key
    ``(kind class, namespace, name)``), or ``policy`` None: ``target`` removed. ``kind``
    names where it came from (``StagedNetworkPolicy``, or the enforced kind itself)."""

    target: tuple[type[Resource], str, str]
    policy: Resource | None
    kind: str


def proposal(obj: Resource) -> Proposal:
    """A staged policy, or an enforced one proposed as is (``whatif``), as a Proposal;
    ConfigError for any other kind."""
    if isinstance(obj, STAGED_KINDS):
        staged: StagedPolicy = obj  # type: ignore[assignment]
        enforced = staged.enforced()
        target = (type(enforced), obj.meta.namespace, obj.meta.name)
        return Proposal(target, enforced if staged.staged_action == "Set" else None,
                        obj.KIND.kind)
    if isinstance(obj, ENFORCED_KINDS):
        return Proposal((type(obj), obj.meta.namespace, obj.meta.name), obj, obj.KIND.kind)
    raise ConfigError(f"{obj.KIND.kind}/{obj.meta.name}: not a policy (expected NetworkPolicy,"
                      " GlobalNetworkPolicy, a Kubernetes NetworkPolicy, or a staged one)")


def staged_in(snapshot: Snapshot) -> tuple[Proposal, ...]:
    """The snapshot's staged policies as proposals, in a stable order."""
    found: list[Resource] = []
    for cls in STAGED_KINDS:
        found += snapshot.of(cls)
    return tuple(proposal(o) for o in found)


def with_proposals(snapshot: Snapshot, proposals: Iterable[Proposal]
                   ) -> tuple[Snapshot, dict[str, str]]:
    """The snapshot with every proposal applied; and, by policy key, the kind of each
    policy a proposal put there (so a decision names the staged policy)."""
    props = list(proposals)
    targets = {p.target for p in props}
    others = [o for o in snapshot.others
              if (type(o), o.meta.namespace, o.meta.name) not in targets]
    kinds: dict[str, str] = {}
    for p in props:
        if p.policy is None:
            continue
        others.append(p.policy)
        converted = from_resource(p.policy)
        if converted is not None:
            kinds[converted.ref.key] = p.kind
    return dataclasses.replace(snapshot, others=tuple(others)), kinds


@dataclass(frozen=True, slots=True)
class StagedVerdict:
    """What the program with the proposals in place decides for one endpoint and
    direction: ``verdict`` allow | deny, ``reason`` as ``explain``'s (rule, no-policy,
    default-deny, pass, tier-pass, profile, ...), and the deciding policy and rule."""

    verdict: str
    reason: str
    kind: str = ""
    namespace: str = ""
    name: str = ""
    tier: str = ""
    rule: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict, "reason": self.reason,
                               "policy": None, "rule": self.rule}
        if self.kind:
            policy = {"kind": self.kind, "name": self.name, "tier": self.tier}
            if self.namespace:
                policy["namespace"] = self.namespace
            out["policy"] = policy
        elif self.tier:
            out["tier"] = self.tier
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StagedVerdict:
        policy = d.get("policy") or {}
        rule = d.get("rule")
        return cls(str(d.get("verdict", "")), str(d.get("reason", "")),
                   str(policy.get("kind", "")), str(policy.get("namespace", "")),
                   str(policy.get("name", "")), str(policy.get("tier", d.get("tier", ""))),
                   int(rule) if rule is not None else None)

    def describe(self) -> str:
        if self.kind:
            where = f"{self.namespace}/{self.name}" if self.namespace else self.name
            rule = f" rule {self.rule}" if self.rule is not None else ""
            return f"{self.verdict} by {self.kind} {where}{rule}"
        if self.reason == "default-deny" and self.tier:
            return f"{self.verdict}: end of tier {self.tier}"
        return f"{self.verdict}: {self.reason}"


class StagedView:
    """One snapshot with proposals in place: the program, built on first use."""

    def __init__(self, snapshot: Snapshot, proposals: Iterable[Proposal] | None = None,
                 node: str | None = None) -> None:
        self.snapshot = snapshot
        self.proposals = tuple(staged_in(snapshot) if proposals is None else proposals)
        self.node = node
        self._built: tuple[PolicyProgram, dict[str, str], dict[IPAddress, Entity]] | None = None

    @property
    def active(self) -> bool:
        """Is there anything to evaluate (any proposal)?"""
        return bool(self.proposals)

    def program(self) -> tuple[PolicyProgram, dict[str, str], dict[IPAddress, Entity]]:
        if self._built is None:
            swapped, kinds = with_proposals(self.snapshot, self.proposals)
            program = build_program(swapped, self.node)
            by_address: dict[IPAddress, Entity] = {}
            for e in program.index.entities:
                if e.is_endpoint:
                    for a in e.addresses:
                        by_address.setdefault(a, e)
            self._built = (program, kinds, by_address)
        return self._built

    def decide(self, pkt: Packet, direction: str) -> StagedVerdict | None:
        """The decision for the endpoint on ``direction``'s side of ``pkt`` (egress: its
        source; ingress: its destination); None if that address is no endpoint."""
        program, kinds, by_address = self.program()
        entity = by_address.get(pkt.src if direction == "egress" else pkt.dst)
        if entity is None:
            return None
        return verdict_of(evaluate(program, entity, direction, pkt), kinds)


def verdict_of(d: Decision, kinds: Mapping[str, str]) -> StagedVerdict:
    if d.policy is None:
        return StagedVerdict(d.verdict, d.reason, tier=d.tier)
    ref = d.policy
    kind = kinds.get(ref.key, ref.kind)
    return StagedVerdict(d.verdict, d.reason, kind, ref.namespace, ref.name, d.tier,
                         d.rule.index if d.rule is not None else None)


def flow_packet(family: int, src: str, dst: str, protocol: int, sport: int | None,
                dport: int | None) -> Packet:
    """A flow record's first packet (ICMP: ``dport`` is the type, as records keep it)."""
    icmp = protocol in (1, 58)
    return Packet(family, ipaddress.ip_address(src), ipaddress.ip_address(dst), protocol,
                  dport=None if icmp else dport, sport=None if icmp else sport,
                  icmp_type=dport if icmp else None, icmp_code=0 if icmp else None)
