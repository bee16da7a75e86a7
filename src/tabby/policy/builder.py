"""Rendering a policy program into nft parts: the builder, and what it remembers.

``Builder`` declares sets (named by what they hold), policy chains (one per policy
and direction, named by the policy's key) and endpoint chains (named by their
content), and collects verdict-map entries; ``tabby.policy.nftables`` and
``tabby.policy.hostendpoints`` drive it. ``RenderMemo`` is what one node's
renderer keeps from its last pass (``PolicyRules`` owns one): a set whose
members are the same object as last pass's is reused, one that changed a
little is patched, a policy chain whose compiled policy did not change is
reused with the sets it names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from tabby.marks import (
    MARK_ALLOW,
    MARK_PASS,
    policy_counter_name,
    policy_log_prefix,
    policy_rule_comment,
)
from tabby.nft.model import Chain, NftSet, Rule
from tabby.policy.compile import CompiledPolicy
from tabby.policy.flowids import (
    ACTION_VERDICT,
    FlowLog,
    no_policy_id,
    policy_rules,
    rule_id,
    tier_end_id,
)
from tabby.policy.flowlog import statement
from tabby.policy.index import GNETSET, NETSET
from tabby.policy.ir import SetRef
from tabby.policy.program import PolicyProgram
from tabby.policy.render import CLEAR, MARK_BITS, render_rule
from tabby.policy.sets import SetBook
from tabby.policy.tiers import TierGroup

DIR_LETTER = {"ingress": "i", "egress": "e"}


class _Texts:
    """``str(value)`` for addresses, memoised (ipaddress's __str__ is slow at 10k a pass)."""

    def __init__(self) -> None:
        self.items: dict[object, str] = {}

    def text(self, value: object) -> str:
        got = self.items.get(value)
        if got is None:
            if len(self.items) > 500_000:
                self.items.clear()
            got = self.items[value] = str(value)
        return got

    def addrs(self, members: frozenset[Any]) -> frozenset[str]:
        return frozenset(map(self.text, members))

    def nets(self, members: tuple[Any, ...]) -> frozenset[str]:
        return frozenset(map(self.text, members))

    def pairs(self, members: frozenset[tuple[Any, int]]) -> frozenset[str]:
        return frozenset(f"{self.text(a)} . {p}" for a, p in members)


def _patched(previous: tuple[Any, NftSet], members: Any,
             to_text: Callable[[Any], frozenset[str]]) -> frozenset[str] | None:
    """The elements of a set whose members changed a little, from last pass's text."""
    old = previous[0]
    if not isinstance(old, frozenset) or not isinstance(members, frozenset):
        return None
    gone, new = old - members, members - old
    if len(gone) + len(new) > 256:
        return None
    return (previous[1].elements - to_text(frozenset(gone))) | to_text(frozenset(new))


class _Generations:
    """Last pass's values by name, and this pass's: what a pass did not use is dropped."""

    def __init__(self) -> None:
        self.previous: dict[Any, Any] = {}
        self.current: dict[Any, Any] = {}

    def turn(self) -> None:
        self.previous, self.current = self.current, {}


class RenderMemo:
    """What one node's renderer remembers from its last pass."""

    def __init__(self) -> None:
        self.sets = _Generations()  # set name -> (members object, NftSet)
        self.chains = _Generations()  # policy chain name -> (token, Chain, set refs used)
        self.endpoint_chains = _Generations()  # (prefix, direction, keys, ...) -> Chain
        self.texts = _Texts()

    def turn(self) -> None:
        for gen in (self.sets, self.chains, self.endpoint_chains):
            gen.turn()


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]


def policy_chain_name(key: str, direction: str) -> str:
    return f"pol-p{DIR_LETTER[direction]}-{short_hash(key)}"


class Builder:
    def __init__(self, program: PolicyProgram, memo: RenderMemo,
                 flowlog: FlowLog | None = None, counters: bool = False) -> None:
        self.program = program
        self.memo = memo
        self.flowlog = flowlog
        # per-rule named counters (tabby.marks.policy_counter_name): on, and those used
        self.counting = counters
        self.counters: set[str] = set()
        self.texts = memo.texts
        self.book: SetBook = program.book
        self.chains: dict[str, Chain] = {}
        self.sets: dict[str, NftSet] = {}
        self.maps: dict[str, set[tuple[str, str]]] = {}
        self._endpoint_chains: dict[Any, str] = {}
        self._groups: dict[tuple[str, ...], tuple[TierGroup, ...]] = {}
        index = program.index
        # Set names of selectors with network-set members depend on those members.
        self.netsets = (index.lineage, index.kind_mask(NETSET, GNETSET))

    # -- sets ---------------------------------------------------------------------
    def set_names(self, ref: SetRef) -> list[str]:
        f = ref.family
        addr = "ipv4_addr" if f == 4 else "ipv6_addr"
        if ref.kind == "nets":
            return [self._set(f"pol-n{f}-{ref.digest}", addr, ref.nets, self.texts.nets,
                              interval=True)]
        if ref.kind == "port":
            return [self._set(f"pol-np{f}-{ref.digest}", f"{addr} . inet_service",
                              self.book.ports(ref), self.texts.pairs)]
        names = [self._set(f"pol-s{f}-{ref.digest}", addr, self.book.addresses(ref),
                           self.texts.addrs, comment=ref.selector)]
        nets = self.book.netset_nets(ref)
        if nets:
            content = ",".join(map(self.texts.text, nets))
            names.append(self._set(f"pol-sn{f}-{short_hash(content)}", addr, nets,
                                   self.texts.nets, interval=True))
        return names

    def _set(self, name: str, type_: str, members: Any,
             to_text: Callable[[Any], frozenset[str]], *, interval: bool = False,
             comment: str = "") -> str:
        """Declare set ``name`` holding ``members``; reuses last pass's value if the same."""
        if name not in self.sets:
            got = self.memo.sets.previous.get(name)
            if got is None or got[0] is not members:
                elements = _patched(got, members, to_text) if got is not None else None
                if elements is None:
                    elements = to_text(members)
                got = (members, NftSet(name, type_, elements,
                                       ("interval",) if interval else (), comment[:120]))
            self.memo.sets.current[name] = got
            self.sets[name] = got[1]
        return name

    # -- policy chains --------------------------------------------------------------
    def policy_chain(self, key: str, direction: str) -> str:
        name = policy_chain_name(key, direction)
        if name in self.chains:
            return name
        c: CompiledPolicy = self.program.compiled[key]
        token = (c, direction, self.netsets, self.flowlog, self.counting)
        if self.counting:
            self.counters.update(policy_counter_name(fr.id) for fr in policy_rules(c)
                                 if fr.direction == direction)
        got = self.memo.chains.previous.get(name)
        if got is not None and got[0] == token:
            for ref in got[2]:
                self.set_names(ref)
        else:
            used: list[SetRef] = []

            def names(ref: SetRef) -> list[str]:
                used.append(ref)
                return self.set_names(ref)

            got = (token, self._render_policy(c, direction, name, names), tuple(used))
        self.memo.chains.current[name] = got
        self.chains[name] = got[1]
        return name

    def _render_policy(self, c: CompiledPolicy, direction: str, name: str,
                       names: Callable[[SetRef], list[str]]) -> Chain:
        untracked = c.policy.spec.do_not_track
        ref = c.policy.ref
        rules: list[Rule] = []
        fl = None if untracked else self.flowlog
        for r in c.rules(direction):
            o = r.origin
            comment = policy_rule_comment(ref.display, direction, o.index, o.peer)
            prefix = policy_log_prefix(ref.key, direction, o.index)
            verdict = ACTION_VERDICT.get(r.action)
            fid = rule_id(ref.key, direction, o.index, o.peer, verdict) \
                if verdict is not None else ""
            flow = statement(fl, fid) if fl is not None and fid else ""
            counter = policy_counter_name(fid) if self.counting and fid else ""
            rules += render_rule(r, names, comment, untracked=untracked, log_prefix=prefix,
                                 flow=flow, counter=counter)
        return Chain(name, tuple(rules))

    # -- endpoint chains -------------------------------------------------------------
    def endpoint_chain(self, prefix: str, direction: str, keys: tuple[str, ...],
                       head: tuple[Rule, ...] = (), tail: tuple[Rule, ...] = (),
                       pass_rule: Rule | None = None) -> str:
        """A chain trying ``keys`` tier by tier (``endpoint_rules``)."""
        groups = self._groups.get(keys)
        if groups is None:  # many endpoints share one policy list: group it once a pass
            groups = self._groups[keys] = self.program.groups(keys)
        memo_key = (prefix, direction, groups, head, tail, pass_rule, self.flowlog,
                    self.counting)
        if self.counting:  # tier ends count too (declared whether or not the chain drops)
            self.counters.update(policy_counter_name(tier_end_id(g.tier.name, direction))
                                 for g in groups)
        got = self._endpoint_chains.get(memo_key)
        if got is not None:
            return got
        names = {key: self.policy_chain(key, direction) for key in keys}
        chain: Chain | None = self.memo.endpoint_chains.previous.get(memo_key)
        if chain is None:
            jumps = {key: (name, self.program.compiled[key].policy.ref.display)
                     for key, name in names.items()}
            fl = self.flowlog
            log = None if fl is None else (lambda fid: statement(fl, fid))
            count = (lambda fid: f'counter name "{policy_counter_name(fid)}"') \
                if self.counting else None
            rules = endpoint_rules(groups, jumps, head, tail, pass_rule,
                                   log=log, direction=direction, count=count)
            body = "\n".join(f"{r.body}|{r.comment}" for r in rules)
            chain = Chain(f"{prefix}-{short_hash(body)}", tuple(rules))
        self.memo.endpoint_chains.current[memo_key] = chain
        self.chains[chain.name] = chain
        self._endpoint_chains[memo_key] = chain.name
        return chain.name

    def map_entry(self, map_name: str, key: str, chain: str) -> None:
        self.maps.setdefault(map_name, set()).add((key, f"jump {chain}"))


PASS_CLEAR = f"meta mark & {MARK_PASS:#x} == 0"  # no policy of this tier passed (yet)


def endpoint_rules(groups: tuple[TierGroup, ...], jumps: Mapping[str, tuple[str, str]],
                   head: tuple[Rule, ...], tail: tuple[Rule, ...], pass_rule: Rule | None,
                   *, log: Callable[[str], str] | None = None, direction: str = "ingress",
                   count: Callable[[str], str] | None = None) -> list[Rule]:
    """An endpoint chain's rules: ``head``, then each tier's policies (``jumps``: key ->
    (policy chain, comment)), as Felix renders them with its pass mark.

    In every tier but the last, a policy that allows returns at once (allow bit); one
    that passes sets the pass bit, and the tier's later jumps are skipped; at the end of
    the tier, a packet nothing passed is dropped if the tier's defaultAction is Deny
    and the chain has a default (``tail``: not for preDNAT, untracked or default-allow
    host endpoints); the next tier starts by clearing the pass bit. The last tier
    returns on either bit (pass: the profile, which allows) unless ``pass_rule`` says
    what a pass meets instead (a host endpoint without profile: drop); its end is
    ``tail`` for Deny, and for Pass the profile (nothing, or a drop after
    ``pass_rule``).

    With ``log`` (flow id -> a flow log statement), every drop of a tier's end is
    preceded by a rule logging the tier end's flow id (a host endpoint's drop for
    want of a profile: "no policy", deny). With ``count`` (flow id -> a counter
    statement), the same tier ends count their packets first (per-rule counters).
    """
    rules = list(head)
    allowed = Rule(f"meta mark & {MARK_ALLOW:#x} != 0 {CLEAR} return")
    for g, group in enumerate(groups):
        name = group.tier.name
        last = g == len(groups) - 1
        if g:
            rules.append(Rule(f"meta mark set meta mark & {0xFFFFFFFF & ~MARK_PASS:#010x}",
                              f"tier {name}"))
        done = allowed if (pass_rule is not None or not last) else \
            Rule(f"meta mark & {MARK_BITS:#x} != 0 {CLEAR} return")
        for k, key in enumerate(group.keys):
            chain, comment = jumps[key]
            guard = f"{PASS_CLEAR} " if k and not last else ""
            rules += [Rule(f"{guard}jump {chain}", comment), done]
            if last and pass_rule is not None:
                rules.append(pass_rule)
        end = "" if log is None else log(tier_end_id(name, direction))
        tally = "" if count is None else count(tier_end_id(name, direction))
        if not last:
            if tail and not group.tier.passes:
                if end:
                    rules.append(Rule(f"{PASS_CLEAR} {end}", f"flow log: end of tier {name}"))
                if tally:
                    rules.append(Rule(f"{PASS_CLEAR} {tally}", f"count: end of tier {name}"))
                rules.append(Rule(f"{PASS_CLEAR} drop",
                                  f"end of tier {name}: default deny, nothing passed"))
        elif not group.tier.passes:
            if end and tail:
                rules.append(Rule(end, f"flow log: end of tier {name}"))
            if tally and tail:
                rules.append(Rule(tally, f"count: end of tier {name}"))
            rules += tail
        elif pass_rule is not None:
            rules.append(Rule("drop", f"end of tier {name}: Pass, and no profile allows"))
    if not groups:
        if tail and log is not None:
            rules.append(Rule(log(no_policy_id(direction, "deny")), "flow log: no profile"))
        rules += tail  # no policy: the profile (a host endpoint without one: drop)
    return rules
