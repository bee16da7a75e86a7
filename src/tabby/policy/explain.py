"""Why would A reach B on port P? The verdict and the policy and rule that decided it.

``explain(program, source, destination, protocol, port)`` evaluates a new
connection's first packet twice, as the kernel does: egress of the source
endpoint, then ingress of the destination endpoint (when the destination is
an endpoint: a pod, or a host endpoint's address). Both walk the same
``CompiledPolicy`` IR rules, in the same order, with the same set membership
(``SetBook``) as the nftables compiler renders, so what ``explain`` says is
what the table does:

- no policy selects the endpoint for that direction: allowed ("no-policy");
- tiers in order (``tabby.policy.tiers``), only those with a policy selecting
  the endpoint; in each, policies in order; a rule whose matches all hold
  decides: Allow, Deny; Log is noted and evaluation goes on; Pass ends the
  tier and goes on to the next one;
- a tier where no rule decided nor passed ends in its defaultAction: Deny
  denies ("default-deny", naming the tier), Pass goes on to the next tier;
- past the last tier, the profile: it allows pods (tabby's reading of Calico:
  a pod's profile is its namespace's, which allows everything) and denies host
  endpoints unless they carry the default-allow profile ("pass" when a Pass
  rule got there, naming it; "tier-pass" when a tier's defaultAction did);
- host endpoints: failsafe ports are allowed before any policy; one with the
  default-allow profile has no end-of-tier deny (tabby's reading, as before
  tiers: the profile allows what the policies leave).

A destination address is the endpoint that carries it (a pod's address, a host
endpoint's ``expectedIPs``); failing that, given ``hosts`` (``host_addresses``: a
node's BGP, ``spec.addresses`` and VXLAN tunnel addresses), a node's address is
that node's all-interfaces host endpoint, as the dataplane sends traffic to the
host from any interface no other endpoint names through its chains.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tabby.errors import TabbyError
from tabby.model.hostendpoint import HostEndpoint
from tabby.model.node import Node
from tabby.model.policyrules import PROTOCOL_NUMBERS
from tabby.policy.clusternetworkpolicy import node_addresses
from tabby.policy.compile import CompiledPolicy
from tabby.policy.convert import PolicyRef
from tabby.policy.hostendpoints import all_interfaces_endpoint
from tabby.policy.index import HEP, WEP, Entity
from tabby.policy.ir import Action, IRRule, Origin, Packet
from tabby.policy.program import PolicyProgram

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOW, DENY = "allow", "deny"


@dataclass(frozen=True, slots=True)
class Decision:
    direction: str  # ingress | egress
    endpoint: Entity | None
    verdict: str  # allow | deny
    # no-policy | rule | pass | tier-pass | profile | default-deny | failsafe | not-an-endpoint
    reason: str
    policy: PolicyRef | None = None
    rule: Origin | None = None
    action: str = ""
    evaluated: tuple[PolicyRef, ...] = ()
    logged: tuple[Origin, ...] = ()
    tier: str = ""  # the tier of the deciding policy, or whose end decided

    def summary(self) -> str:
        if self.reason == "not-an-endpoint":
            return "allow: not a tabby endpoint (no policy applies)"
        if self.reason == "no-policy":
            return f"allow: no policy selects it for {self.direction}"
        if self.reason == "failsafe":
            return "allow: failsafe port of a host endpoint"
        if self.reason == "default-deny":
            names = ", ".join(p.display for p in self.evaluated)
            end = f"end of tier {self.tier}, " if self.tier else ""
            return f"deny: no rule allowed it ({end}default deny; policies: {names})"
        if self.reason == "profile":
            return "allow: no rule decided; the host endpoint's default-allow profile allows"
        if self.reason == "tier-pass":
            return (f"{self.verdict}: tier {self.tier} passes what it does not decide,"
                    " then the profile")
        assert self.policy is not None and self.rule is not None
        peer = f" peer {self.rule.peer}" if self.rule.peer is not None else ""
        where = (f"{self.policy.display} {self.direction} rule {self.rule.index}{peer}"
                 f" (tier {self.tier})")
        if self.reason == "pass":
            return f"{self.verdict}: Pass by {where}, then the profile"
        return f"{self.verdict}: {self.action} by {where}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.endpoint.ref if self.endpoint else None,
            "node": self.endpoint.node if self.endpoint else None,
            "verdict": self.verdict, "reason": self.reason, "tier": self.tier or None,
            "policy": self.policy.to_dict() if self.policy else None,
            "rule": None, "summary": self.summary(),
            "policies": [p.to_dict() for p in self.evaluated],
        }
        if self.rule is not None:
            out["rule"] = {"direction": self.rule.direction, "index": self.rule.index,
                           "peer": self.rule.peer, "action": self.action}
        if self.logged:
            out["logged"] = [{"policy": o.policy, "index": o.index} for o in self.logged]
        return out


@dataclass(frozen=True, slots=True)
class Explanation:
    packet: Packet
    source: Entity
    destination: Entity | None
    egress: Decision
    ingress: Decision

    @property
    def verdict(self) -> str:
        return ALLOW if self.egress.verdict == ALLOW and self.ingress.verdict == ALLOW else DENY

    def to_dict(self) -> dict[str, Any]:
        p = self.packet
        return {
            "from": self.source.ref,
            "to": self.destination.ref if self.destination else str(p.dst),
            "family": f"ipv{p.family}", "source": str(p.src), "destination": str(p.dst),
            "protocol": protocol_name(p.protocol), "port": p.dport,
            "verdict": self.verdict,
            "egress": self.egress.to_dict(), "ingress": self.ingress.to_dict(),
        }


def protocol_number(text: str) -> int:
    by_name = {k.lower(): v for k, v in PROTOCOL_NUMBERS.items()}
    by_name["icmp6"] = by_name["icmpv6"]
    if text.lower() in by_name:
        return by_name[text.lower()]
    if text.isdigit() and 1 <= int(text) <= 255:
        return int(text)
    raise TabbyError(f"unknown protocol {text!r} (tcp, udp, sctp, icmp, icmpv6 or 1..255)")


def protocol_name(number: int) -> str:
    return {v: k.lower() for k, v in PROTOCOL_NUMBERS.items()}.get(number, str(number))


def host_addresses(nodes: Iterable[Node]) -> dict[IPAddress, str]:
    """Each node's own addresses (BGP, ``spec.addresses``, VXLAN tunnel) -> its name."""
    nodes = tuple(nodes)
    out = {a: n.name for n in node_addresses(nodes) for a in n.addresses}
    for node in nodes:
        for version in (4, 6):
            tunnel = node.spec.vxlan.address(version)
            if tunnel is not None:
                out.setdefault(tunnel, node.meta.name)
    return out


def explain(program: PolicyProgram, source: Entity, destination: Entity | IPAddress,
            protocol: int, port: int | None, *, family: int | None = None,
            source_port: int | None = None, icmp: tuple[int, int] | None = None,
            hosts: Mapping[IPAddress, str] | None = None) -> Explanation:
    """Evaluate a new connection from ``source`` to ``destination`` (endpoint or address).

    ICMP defaults to an echo request of the family. ``hosts`` (``host_addresses``) lets
    a node's address stand for its all-interfaces host endpoint (module docstring).
    """
    if isinstance(destination, Entity):
        dst_entity: Entity | None = destination
        fam = family or _common_family(source, destination)
        dst_ip = _address(destination, fam)
    else:
        dst_ip = destination
        fam = dst_ip.version
        dst_entity = program.endpoint_by_address(dst_ip)
        host = (hosts or {}).get(dst_ip)
        if dst_entity is None and host is not None:
            dst_entity = all_interfaces_endpoint(program.index.entities, host)
    src_ip = _address(source, fam)
    if protocol in (1, 58):
        protocol = 1 if fam == 4 else 58
        icmp = icmp or ((8, 0) if fam == 4 else (128, 0))  # echo request
    icmp = icmp or (0, 0)
    pkt = Packet(fam, src_ip, dst_ip, protocol,
                 dport=port if protocol not in (1, 58) else None, sport=source_port,
                 icmp_type=icmp[0] if protocol in (1, 58) else None,
                 icmp_code=icmp[1] if protocol in (1, 58) else None)
    egress = evaluate(program, source, "egress", pkt)
    ingress = (evaluate(program, dst_entity, "ingress", pkt) if dst_entity is not None
               else Decision("ingress", None, ALLOW, "not-an-endpoint"))
    return Explanation(pkt, source, dst_entity, egress, ingress)


def _common_family(a: Entity, b: Entity) -> int:
    for fam in (4, 6):
        if any(x.version == fam for x in a.addresses) and any(
                x.version == fam for x in b.addresses):
            return fam
    raise TabbyError(f"{a.ref} and {b.ref} share no IP family")


def _address(e: Entity, family: int) -> IPAddress:
    for a in e.addresses:
        if a.version == family:
            return a
    raise TabbyError(f"{e.ref} has no IPv{family} address")


def evaluate(program: PolicyProgram, entity: Entity, direction: str, pkt: Packet,
             stage: str = "normal") -> Decision:
    """One endpoint, one direction: the decision the endpoint's chain reaches."""
    ep = program.endpoints.get(entity.key)
    keys = ep.get(stage, direction) if ep is not None else ()
    is_hep = entity.kind == HEP
    default_allow = is_hep and isinstance(entity.source, HostEndpoint) and \
        entity.source.spec.default_allow
    if is_hep and stage == "normal" and _failsafe(program, entity.node, direction, pkt):
        return Decision(direction, entity, ALLOW, "failsafe")
    if not keys:
        if is_hep and stage == "normal" and not default_allow:
            return Decision(direction, entity, DENY, "default-deny")
        return Decision(direction, entity, ALLOW, "no-policy")
    logged: list[Origin] = []
    refs = tuple(program.compiled[k].policy.ref for k in keys)
    profile = ALLOW if entity.kind == WEP or default_allow else DENY
    last = Decision(direction, entity, profile, "profile", evaluated=refs)
    for group in program.groups(keys):
        got = _first_match(program, group.keys, direction, pkt, logged)
        if got is None:  # the end of the tier
            if not group.tier.passes and not default_allow:
                return Decision(direction, entity, DENY, "default-deny", evaluated=refs,
                                logged=tuple(logged), tier=group.tier.name)
            if group.tier.passes:
                last = Decision(direction, entity, profile, "tier-pass", evaluated=refs,
                                tier=group.tier.name)
            continue
        c, rule = got
        if rule.action is Action.PASS:  # on to the next tier
            last = Decision(direction, entity, profile, "pass", c.policy.ref, rule.origin,
                            rule.action.value, refs, tier=c.tier)
            continue
        verdict = ALLOW if rule.action is Action.ALLOW else DENY
        return Decision(direction, entity, verdict, "rule", c.policy.ref, rule.origin,
                        rule.action.value, refs, tuple(logged), c.tier)
    return dataclasses.replace(last, logged=tuple(logged))


def _first_match(program: PolicyProgram, keys: tuple[str, ...], direction: str, pkt: Packet,
                 logged: list[Origin]) -> tuple[CompiledPolicy, IRRule] | None:
    """The first rule of ``keys``' policies that matches and is not a Log (noted)."""
    for key in keys:
        c = program.compiled[key]
        for rule in c.rules(direction):
            if not rule.matches(pkt, program.book):
                continue
            if rule.action is Action.LOG:
                logged.append(rule.origin)
                continue
            return c, rule
    return None


def _failsafe(program: PolicyProgram, node: str, direction: str, pkt: Packet) -> bool:
    inbound, outbound = program.failsafe(node)
    ports = inbound if direction == "ingress" else outbound
    far = pkt.src if direction == "ingress" else pkt.dst
    for p in ports:
        if PROTOCOL_NUMBERS.get(p.protocol) != pkt.protocol or p.port != pkt.dport:
            continue
        if p.net is None or (p.net.version == far.version and far in p.net):
            return True
    return False


def find_pod(program: PolicyProgram, namespace: str, pod: str) -> Entity:
    for e in program.index.entities:
        if e.kind == WEP and e.namespace == namespace and e.name == pod:
            return e
    raise TabbyError(f"pod {namespace}/{pod} has no workload endpoint (not wired yet, or"
                     " no such pod)")
