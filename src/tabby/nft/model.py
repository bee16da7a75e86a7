"""tabby's nftables table as typed values: chains, rules, sets, maps, hook entries.

Everything tabby puts in the kernel's packet path lives in ONE table, ``inet
tabby``. Several features contribute to it (policy, services, NAT outgoing);
each returns a ``Ruleset`` *part* from a pure function, and ``Ruleset.merge``
joins the parts. A part never declares base chains itself: it asks for a rule
in one of the fixed base chains (``HookEntry``: which base chain, an order
key, the rule), and the merge sorts those entries into the base chains. So
two features can share the forward hook without knowing of each other::

    HookEntry("filter-forward", 100, Rule("jump policy-fwd", "policy"))
    HookEntry("nat-prerouting", 100, Rule("jump services", "services"))

A rule's body is nft statement text (matches and a verdict). A feature that
builds its rules from typed terms (``tabby.nft.expr``: matches, statements,
verdicts) makes them with ``Rule.of(*terms)``: the body is then the terms'
text, written by ``tabby.nft.expr.text`` alone, and the rule keeps the terms
for whoever wants to read its structure (tests: which chain it jumps to, which
map it reads). Rules compare by body and comment, the text the kernel sees.
The rest is typed too: which chain holds which rules in which order, which set
holds which elements. Names are plain nft identifiers (letters, digits, ``-``,
``_``, ``.``), at most 63 characters here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from tabby.errors import DataplaneError
from tabby.marks import NFT_FAMILY, NFT_TABLE
from tabby.nft.expr import Term, body_text

TABLE = NFT_TABLE
FAMILY = NFT_FAMILY
N = TypeVar("N", "Chain", "NftSet", "NftMap")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Hook:
    type: str  # filter | nat | route
    hook: str  # prerouting | input | forward | output | postrouting
    priority: int
    policy: str = "accept"


# The base chains of tabby's table, always present (empty ones cost nothing).
# Priorities: raw (-300) before conntrack, dstnat (-100), filter (0), srcnat (100).
BASE_CHAINS: Mapping[str, Hook] = {
    "raw-prerouting": Hook("filter", "prerouting", -300),
    "raw-output": Hook("filter", "output", -300),
    "nat-prerouting": Hook("nat", "prerouting", -100),
    "nat-output": Hook("nat", "output", -100),
    "filter-prerouting": Hook("filter", "prerouting", -150),
    "filter-input": Hook("filter", "input", 0),
    "filter-forward": Hook("filter", "forward", 0),
    "filter-output": Hook("filter", "output", 0),
    "nat-postrouting": Hook("nat", "postrouting", 100),
}


@dataclass(frozen=True, slots=True)
class Rule:
    body: str  # e.g. 'ip saddr @ns-x-pods tcp dport 80 accept'
    comment: str = ""  # names the policy / service / feature; shown by `nft list`
    # the typed form the body was written from (Rule.of); empty for a rule given as text
    terms: tuple[Term, ...] = field(default=(), compare=False)

    @classmethod
    def of(cls, *terms: Term, comment: str = "") -> Rule:
        """A rule from typed terms, its body their text."""
        return cls(body_text(terms), comment, terms)


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class NftSet:
    name: str
    type: str  # e.g. "ipv4_addr", "ipv6_addr", "inet_proto . inet_service"
    elements: frozenset[str] = frozenset()
    flags: tuple[str, ...] = ()  # e.g. ("interval",)
    comment: str = ""


@dataclass(frozen=True, slots=True)
class NftMap:
    name: str
    type: str  # key type, e.g. "ipv4_addr . inet_proto . inet_service", or "typeof EXPR"
    value: str  # "verdict" or a data type
    elements: frozenset[tuple[str, str]] = frozenset()  # (key, value) as nft text
    flags: tuple[str, ...] = ()
    comment: str = ""


@dataclass(frozen=True, slots=True)
class HookEntry:
    base: str  # a key of BASE_CHAINS
    order: int  # lower first; ties broken by the rule text
    rule: Rule


@dataclass(frozen=True, slots=True)
class Ruleset:
    chains: Mapping[str, Chain] = field(default_factory=dict)
    sets: Mapping[str, NftSet] = field(default_factory=dict)
    maps: Mapping[str, NftMap] = field(default_factory=dict)
    hooks: tuple[HookEntry, ...] = ()
    # Named counters (``counter name "X"`` in a rule): declared before the rules that
    # name them, deleted after (policy's per-rule counters, tabby.agent.policymetrics).
    counters: frozenset[str] = frozenset()

    @classmethod
    def of(cls, chains: Iterable[Chain] = (), sets: Iterable[NftSet] = (),
           maps: Iterable[NftMap] = (), hooks: Iterable[HookEntry] = (),
           counters: Iterable[str] = ()) -> Ruleset:
        """A part from lists; names must be unique within it."""
        return merge([cls(_unique(chains, "chain"), _unique(sets, "set"),
                          _unique(maps, "map"), tuple(hooks), frozenset(counters))])

    def base_chains(self) -> dict[str, Chain]:
        """The base chains with their hook entries sorted in."""
        out: dict[str, list[Rule]] = {name: [] for name in BASE_CHAINS}
        for entry in sorted(self.hooks, key=lambda e: (e.order, e.rule.body)):
            out[entry.base].append(entry.rule)
        return {name: Chain(name, tuple(rules)) for name, rules in out.items()}

    def all_chains(self) -> dict[str, Chain]:
        return {**self.base_chains(), **self.chains}


def merge(parts: Iterable[Ruleset]) -> Ruleset:
    """Join parts; a name declared twice (by two features) is a bug, raised loudly."""
    chains: dict[str, Chain] = {}
    sets: dict[str, NftSet] = {}
    maps: dict[str, NftMap] = {}
    hooks: list[HookEntry] = []
    counters: set[str] = set()
    for part in parts:
        for name in part.counters:
            _check_name(name, "counter")
            if name in counters:
                raise DataplaneError(f"nft counter {name!r} is declared twice")
            counters.add(name)
        _join(chains, part.chains, "chain")
        _join(sets, part.sets, "set")
        _join(maps, part.maps, "map")
        for entry in part.hooks:
            if entry.base not in BASE_CHAINS:
                raise DataplaneError(f"nft hook entry names unknown base chain {entry.base!r}")
            hooks.append(entry)
    return Ruleset(chains, sets, maps, tuple(hooks), frozenset(counters))


def _join(target: dict[str, N], items: Mapping[str, N], what: str) -> None:
    for name, item in items.items():
        _check_name(name, what)
        if name in target or (what == "chain" and name in BASE_CHAINS):
            raise DataplaneError(f"nft {what} {name!r} is declared twice")
        target[name] = item


def _unique(items: Iterable[N], what: str) -> dict[str, N]:
    out: dict[str, N] = {}
    for item in items:
        if item.name in out:
            raise DataplaneError(f"nft {what} {item.name!r} is declared twice")
        out[item.name] = item
    return out


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise DataplaneError(f"nft {what} name {name!r} is not a valid identifier")
