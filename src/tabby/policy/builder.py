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
from collections.abc import Callable
from typing import Any

from tabby.marks import policy_log_prefix, policy_rule_comment
from tabby.nft.model import Chain, NftSet, Rule
from tabby.policy.compile import CompiledPolicy
from tabby.policy.index import GNETSET, NETSET
from tabby.policy.ir import SetRef
from tabby.policy.program import PolicyProgram
from tabby.policy.render import CLEAR, MARK_BITS, render_rule
from tabby.policy.sets import SetBook

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
    def __init__(self, program: PolicyProgram, memo: RenderMemo) -> None:
        self.program = program
        self.memo = memo
        self.texts = memo.texts
        self.book: SetBook = program.book
        self.chains: dict[str, Chain] = {}
        self.sets: dict[str, NftSet] = {}
        self.maps: dict[str, set[tuple[str, str]]] = {}
        self._endpoint_chains: dict[Any, str] = {}
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
        token = (c, direction, self.netsets)
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
        for r in c.rules(direction):
            comment = policy_rule_comment(ref.display, direction, r.origin.index, r.origin.peer)
            prefix = policy_log_prefix(ref.key, direction, r.origin.index)
            rules += render_rule(r, names, comment, untracked=untracked, log_prefix=prefix)
        return Chain(name, tuple(rules))

    # -- endpoint chains -------------------------------------------------------------
    def endpoint_chain(self, prefix: str, direction: str, keys: tuple[str, ...],
                       head: tuple[Rule, ...] = (), tail: tuple[Rule, ...] = (),
                       pass_rule: Rule | None = None) -> str:
        """A chain trying ``keys`` in order; allow (and pass, unless ``pass_rule``) return."""
        memo_key = (prefix, direction, keys, head, tail, pass_rule)
        got = self._endpoint_chains.get(memo_key)
        if got is not None:
            return got
        names = [self.policy_chain(key, direction) for key in keys]
        chain: Chain | None = self.memo.endpoint_chains.previous.get(memo_key)
        if chain is None:
            rules = list(head)
            done = Rule(f"meta mark & {MARK_BITS:#x} != 0 {CLEAR} return")
            if pass_rule is not None:
                done = Rule(f"meta mark & 0x10000 != 0 {CLEAR} return")
            for key, name in zip(keys, names, strict=True):
                rules.append(Rule(f"jump {name}", self.program.compiled[key].policy.ref.display))
                rules.append(done)
                if pass_rule is not None:
                    rules.append(pass_rule)
            rules += tail
            body = "\n".join(f"{r.body}|{r.comment}" for r in rules)
            chain = Chain(f"{prefix}-{short_hash(body)}", tuple(rules))
        self.memo.endpoint_chains.current[memo_key] = chain
        self.chains[chain.name] = chain
        self._endpoint_chains[memo_key] = chain.name
        return chain.name

    def map_entry(self, map_name: str, key: str, chain: str) -> None:
        self.maps.setdefault(map_name, set()).add((key, f"jump {chain}"))
