"""From a ``Policy`` to its typed intermediate form: which endpoints, which IR rules.

Calico's rule semantics, made explicit here once:

- The fields of a rule's ``source`` / ``destination`` all have to hold (AND):
  ``nets``, not ``notNets``, the positive selector, not ``notSelector``,
  ``ports``, not ``notPorts``; a list inside one field is an OR.
- The positive selector is the rule's ``selector`` AND its namespace scope AND
  its ``serviceAccounts``. The namespace scope is ``namespaceSelector`` when
  given; otherwise, in a namespaced policy, the policy's own namespace — but
  only when the side names any of selector, notSelector, namespaceSelector or
  serviceAccounts (a side with only nets or ports is not scoped at all).
  ``notSelector`` is never namespace scoped.
- A named port resolves against the endpoints of the side's positive selector
  (every endpoint when there is none): it matches (address, port) pairs of
  those endpoints whose port of that name has the rule's protocol.
- A rule is compiled per IP family; a family for which a rule's ``nets`` name
  no CIDR (or not the rule's ``ipVersion``) gets no rule. A rule with no
  family-specific match is one rule for both.

A policy applies to an endpoint when the endpoint matches ``applies_to``:
namespaced policies select workload endpoints of their namespace; global ones
workload and host endpoints (``namespaceSelector`` and
``serviceAccountSelector`` narrow both).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from tabby import selector as sel
from tabby.model.policyrules import EntityRule, PortSpec, Rule
from tabby.policy.convert import Policy, RuleOrigin
from tabby.policy.index import (
    NAMESPACE,
    SA_PREFIX,
    SERVICE_ACCOUNT,
    conjunction,
    equals,
    namespace_scope,
    prefixed,
)
from tabby.policy.ir import Action, AddrMatch, IRRule, Origin, PortMatch, SetRef, Side

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    policy: Policy
    applies_to: sel.Selector  # over entities (tabby.policy.index)
    ingress: tuple[IRRule, ...]
    egress: tuple[IRRule, ...]

    @property
    def key(self) -> str:
        return self.policy.ref.key

    @property
    def tier(self) -> str:
        return self.policy.spec.tier

    def rules(self, direction: str) -> tuple[IRRule, ...]:
        return self.ingress if direction == "ingress" else self.egress

    def has_type(self, direction: str) -> bool:
        return direction.capitalize() in self.policy.spec.types

    def set_refs(self) -> set[SetRef]:
        out: set[SetRef] = set()
        for rule in (*self.ingress, *self.egress):
            for side in (rule.src, rule.dst):
                for am in side.addrs:
                    out.update(am.sets)
                for pm in side.ports:
                    out.update(pm.named)
        return out


def compile_policy(policy: Policy) -> CompiledPolicy:
    spec = policy.spec
    ns = policy.namespace
    parts: list[sel.Selector | None] = [sel.parse(spec.selector or "all()")]
    if ns:
        parts.insert(0, equals(NAMESPACE, ns))
    elif spec.namespace_selector:
        parts.append(namespace_scope(spec.namespace_selector))
    if spec.service_account_selector:
        parts += [sel.Has(SA_PREFIX + "projectcalico.org/name"),
                  prefixed(sel.parse(spec.service_account_selector), SA_PREFIX)]
    ingress = _compile_rules(policy, spec.ingress, policy.ingress_origins, "ingress")
    egress = _compile_rules(policy, spec.egress, policy.egress_origins, "egress")
    return CompiledPolicy(policy, conjunction(*parts), ingress, egress)


def _compile_rules(policy: Policy, rules: tuple[Rule, ...], origins: tuple[RuleOrigin, ...],
                   direction: str) -> tuple[IRRule, ...]:
    out: list[IRRule] = []
    for i, rule in enumerate(rules):
        o = origins[i] if i < len(origins) else RuleOrigin(i)
        origin = Origin(policy.ref.key, direction, o.index, o.peer)
        out.extend(compile_rule(rule, policy.namespace, origin))
    return tuple(out)


def compile_rule(rule: Rule, namespace: str, origin: Origin) -> list[IRRule]:
    action = Action(rule.action)
    families = (rule.ip_version,) if rule.ip_version else (4, 6)
    variants: list[tuple[int, Side, Side]] = []
    for family in families:
        src = _side(rule.source, namespace, family, rule.protocol)
        dst = _side(rule.destination, namespace, family, rule.protocol)
        if src is not None and dst is not None:
            variants.append((family, src, dst))
    base = IRRule(action=action, origin=origin, protocol=rule.protocol,
                  not_protocol=rule.not_protocol, icmp=rule.icmp, not_icmp=rule.not_icmp)
    if (not rule.ip_version and len(variants) == 2
            and all(_agnostic(s) for _, src, dst in variants for s in (src, dst))):
        _, src, dst = variants[0]
        return [dataclasses.replace(base, family=0, src=src, dst=dst)]
    return [dataclasses.replace(base, family=f, src=src, dst=dst) for f, src, dst in variants]


def _agnostic(side: Side) -> bool:
    return not side.addrs and not any(pm.named for pm in side.ports)


def positive_scope(entity: EntityRule, namespace: str) -> sel.Selector | None:
    """The side's positive selector over entities (None: no selector restriction)."""
    named = bool(entity.selector or entity.not_selector or entity.namespace_selector
                 or entity.service_accounts is not None)
    if not named:
        return None
    ns_scope: sel.Selector | None = None
    if entity.namespace_selector:
        ns_scope = namespace_scope(entity.namespace_selector)
    elif namespace:
        ns_scope = equals(NAMESPACE, namespace)
    own = sel.parse(entity.selector) if entity.selector else None
    sa: list[sel.Selector] = []
    if entity.service_accounts is not None:
        if entity.service_accounts.names:
            sa.append(sel.In(SERVICE_ACCOUNT, frozenset(entity.service_accounts.names), False))
        if entity.service_accounts.selector:
            sa.append(prefixed(sel.parse(entity.service_accounts.selector), SA_PREFIX))
        if not sa:
            sa.append(sel.Has(SERVICE_ACCOUNT))
    scope = conjunction(ns_scope, own, *sa)
    return None if isinstance(scope, sel.All) and ns_scope is None and own is None else scope


def _side(entity: EntityRule, namespace: str, family: int, protocol: int | None
          ) -> Side | None:
    addrs: list[AddrMatch] = []
    nets = family_nets(entity.nets, family)
    if entity.nets and not nets:
        return None  # only other-family nets: this family never matches
    if nets:
        addrs.append(AddrMatch((SetRef("nets", family, nets=nets),)))
    not_nets = family_nets(entity.not_nets, family)
    if not_nets:
        addrs.append(AddrMatch((SetRef("nets", family, nets=not_nets),), negate=True))
    scope = positive_scope(entity, namespace)
    if scope is not None:
        addrs.append(AddrMatch((SetRef("sel", family, selector=str(scope)),)))
    if entity.not_selector:
        text = str(sel.parse(entity.not_selector))
        addrs.append(AddrMatch((SetRef("sel", family, selector=text),), negate=True))
    ports: list[PortMatch] = []
    named_scope = str(scope) if scope is not None else "all()"
    for specs, negate in ((entity.ports, False), (entity.not_ports, True)):
        if specs:
            ports.append(_ports(specs, negate, family, named_scope, protocol or 0))
    return Side(tuple(addrs), tuple(ports))


def _ports(specs: tuple[PortSpec, ...], negate: bool, family: int, scope: str,
           protocol: int) -> PortMatch:
    ranges = tuple(sorted({(p.low, p.high) for p in specs if not p.name}))
    names = tuple(sorted({p.name for p in specs if p.name}))
    named = (SetRef("port", family, selector=scope, names=names, protocol=protocol),) \
        if names else ()
    return PortMatch(ranges, named, negate)


def family_nets(nets: tuple[IPNetwork, ...], family: int) -> tuple[IPNetwork, ...]:
    """The nets of one family, collapsed (no overlaps: nft interval sets refuse them)."""
    chosen = [n for n in nets if n.version == family]
    if not chosen:
        return ()
    return tuple(ipaddress.collapse_addresses(chosen))  # type: ignore[type-var]
