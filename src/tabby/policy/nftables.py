"""Policy's part of the ``inet tabby`` table, for one node: the contributor.

::

    raw-prerouting  -> pol-raw-pre: iifname "tab*" -> pol-antispoof (own addresses only;
                       unknown tab* interfaces dropped); host endpoints: doNotTrack ingress
    raw-output      -> pol-raw-out: host endpoints, doNotTrack egress
    filter-prerouting -> pol-pre: host endpoints, preDNAT ingress
    filter-forward  -> pol-fwd  \\  neighbour discovery passes; ct established,related
    filter-input    -> pol-in    > (and untracked) return; ct invalid drop; then by
    filter-output   -> pol-out  /  interface through verdict maps:
          pol-wl-out  iifname -> pod egress chain   (from a pod: forward, input)
          pol-wl-in   oifname -> pod ingress chain  (to a pod: forward, output)
          pol-hep-*   host endpoints (input, output; forward for applyOnForward)

An endpoint chain (``pol-w{i,e}-<hash>``, shared by every endpoint with the
same policies) jumps to each policy's chain in order and returns as soon as
one set the allow or pass mark bit; it ends in a drop ("default deny" of an
endpoint with policies). An endpoint no policy selects has no map entry:
open. A policy chain (``pol-p{i,e}-<hash of the policy's name>``) holds its
rules. Sets: ``pol-s4-*`` / ``pol-s6-*`` selector members, ``pol-sn*``
network-set nets of a selector (named by content), ``pol-n*`` rule nets
(named by content), ``pol-np*`` named ports, ``pol-src4/6`` anti-spoofing,
``pol-wl-ifaces`` the pods' interfaces (traffic to other ``tab*`` ones is dropped).
Every name is a function of what it holds or of a policy's name, so a pod
joining a selector is a set element, and a policy edit refills one chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from tabby.calc.nftables import contributor
from tabby.nft.model import Chain, HookEntry, NftMap, NftSet, Rule, Ruleset
from tabby.policy import hostendpoints
from tabby.policy.compile import CompiledPolicy
from tabby.policy.index import GNETSET, HEP, NETSET, WEP
from tabby.policy.ir import SetRef
from tabby.policy.program import PolicyProgram, build_program
from tabby.policy.program import reset_caches as program_reset
from tabby.policy.render import CLEAR, MARK_BITS, render_rule
from tabby.policy.sets import SetBook
from tabby.snapshot import Snapshot

ND_TYPES = ("nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
            "nd-neighbor-advert", "mld-listener-query", "mld-listener-report",
            "mld2-listener-report")
ND_RULE = Rule(f"icmpv6 type {{ {', '.join(ND_TYPES)} }} return", "neighbour discovery")
CT_RULES = (Rule("ct state established,related,untracked return",
                 "replies to allowed connections"),
            Rule("ct state invalid drop", "invalid"))
UNKNOWN_POD = Rule('oifname "tab*" oifname != @pol-wl-ifaces drop',
                   "to a pod tabby does not know (yet)")
HOOK_ORDER = 10
DIR_LETTER = {"ingress": "i", "egress": "e"}


_TEXT: dict[object, str] = {}


def text(value: object) -> str:
    """``str(value)`` for addresses, memoised (ipaddress's __str__ is slow at 10k a pass)."""
    got = _TEXT.get(value)
    if got is None:
        if len(_TEXT) > 500_000:
            _TEXT.clear()
        got = _TEXT[value] = str(value)
    return got


def _addrs_text(members: frozenset[Any]) -> frozenset[str]:
    return frozenset(text(a) for a in members)


def _nets_text(members: tuple[Any, ...]) -> frozenset[str]:
    return frozenset(text(n) for n in members)


def _pairs_text(members: frozenset[tuple[Any, int]]) -> frozenset[str]:
    return frozenset(f"{text(a)} . {p}" for a, p in members)


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


_SETS = _Generations()  # set name -> (members object, NftSet)
_CHAINS = _Generations()  # policy chain name -> (token, Chain, set refs used)
_ENDPOINT_CHAINS = _Generations()  # (prefix, direction, keys, head, tail, pass) -> Chain


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]


def policy_chain_name(key: str, direction: str) -> str:
    return f"pol-p{DIR_LETTER[direction]}-{short_hash(key)}"


class _Builder:
    def __init__(self, program: PolicyProgram) -> None:
        self.program = program
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
            return [self._set(f"pol-n{f}-{ref.digest}", addr, ref.nets, _nets_text,
                              interval=True)]
        if ref.kind == "port":
            return [self._set(f"pol-np{f}-{ref.digest}", f"{addr} . inet_service",
                              self.book.ports(ref), _pairs_text)]
        names = [self._set(f"pol-s{f}-{ref.digest}", addr, self.book.addresses(ref),
                           _addrs_text, comment=ref.selector)]
        nets = self.book.netset_nets(ref)
        if nets:
            content = ",".join(text(n) for n in nets)
            names.append(self._set(f"pol-sn{f}-{short_hash(content)}", addr, nets,
                                   _nets_text, interval=True))
        return names

    def _set(self, name: str, type_: str, members: Any,
             to_text: Callable[[Any], frozenset[str]], *, interval: bool = False,
             comment: str = "") -> str:
        """Declare set ``name`` holding ``members``; reuses last pass's value if the same."""
        if name not in self.sets:
            got = _SETS.previous.get(name)
            if got is None or got[0] is not members:
                elements = _patched(got, members, to_text) if got is not None else None
                if elements is None:
                    elements = to_text(members)
                got = (members, NftSet(name, type_, elements,
                                       ("interval",) if interval else (), comment[:120]))
            _SETS.current[name] = got
            self.sets[name] = got[1]
        return name

    # -- policy chains --------------------------------------------------------------
    def policy_chain(self, key: str, direction: str) -> str:
        name = policy_chain_name(key, direction)
        if name in self.chains:
            return name
        c: CompiledPolicy = self.program.compiled[key]
        token = (c, direction, self.netsets)
        got = _CHAINS.previous.get(name)
        if got is not None and got[0] == token:
            for ref in got[2]:
                self.set_names(ref)
        else:
            used: list[SetRef] = []

            def names(ref: SetRef) -> list[str]:
                used.append(ref)
                return self.set_names(ref)

            got = (token, self._render_policy(c, direction, name, names), tuple(used))
        _CHAINS.current[name] = got
        self.chains[name] = got[1]
        return name

    def _render_policy(self, c: CompiledPolicy, direction: str, name: str,
                       names: Callable[[SetRef], list[str]]) -> Chain:
        untracked = c.policy.spec.do_not_track
        ref = c.policy.ref
        rules: list[Rule] = []
        for r in c.rules(direction):
            peer = f" peer {r.origin.peer}" if r.origin.peer is not None else ""
            comment = f"{ref.display} {direction} rule {r.origin.index}{peer}"
            prefix = f"tabby {ref.key} {direction} {r.origin.index}: "
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
        chain: Chain | None = _ENDPOINT_CHAINS.previous.get(memo_key)
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
        _ENDPOINT_CHAINS.current[memo_key] = chain
        self.chains[chain.name] = chain
        self._endpoint_chains[memo_key] = chain.name
        return chain.name

    def map_entry(self, map_name: str, key: str, chain: str) -> None:
        self.maps.setdefault(map_name, set()).add((key, f"jump {chain}"))


WL_DEFAULT = (Rule("drop", "default deny: policies select this endpoint, none allowed"),)


def _workloads(b: _Builder) -> list[Rule]:
    """Anti-spoofing sets and the workload maps; returns the anti-spoofing chain's rules."""
    src: dict[int, set[str]] = {4: set(), 6: set()}
    ifaces: set[str] = set()
    for ep in b.program.endpoints.values():
        e = ep.entity
        if e.kind != WEP or not e.interface:
            continue
        ifaces.add(f'"{e.interface}"')
        for a in e.addresses:
            src[a.version].add(f'"{e.interface}" . {text(a)}')
        for direction, map_name in (("ingress", "pol-wl-in"), ("egress", "pol-wl-out")):
            keys = ep.get("normal", direction)
            if keys:
                chain = b.endpoint_chain(f"pol-w{DIR_LETTER[direction]}", direction, keys,
                                         tail=WL_DEFAULT)
                b.map_entry(map_name, f'"{e.interface}"', chain)
    b.sets["pol-src4"] = NftSet("pol-src4", "ifname . ipv4_addr", frozenset(src[4]))
    b.sets["pol-src6"] = NftSet("pol-src6", "ifname . ipv6_addr", frozenset(src[6]))
    b.sets["pol-wl-ifaces"] = NftSet("pol-wl-ifaces", "ifname", frozenset(ifaces))
    return [
        Rule(f"icmpv6 type {{ {', '.join(ND_TYPES)} }} ip6 saddr {{ fe80::/10, :: }} return",
             "link-local neighbour discovery"),
        Rule("iifname . ip saddr @pol-src4 return", "the pod's own IPv4 address"),
        Rule("iifname . ip6 saddr @pol-src6 return", "the pod's own IPv6 address"),
        Rule("drop", "anti-spoofing: not the pod's address, or a pod tabby does not know"),
    ]


def desired_policy(snapshot: Snapshot, node: str) -> Ruleset:
    """The policy part of ``node``'s table (pure)."""
    return render_program(build_program(snapshot, node))


def render_program(program: PolicyProgram) -> Ruleset:
    _SETS.turn()
    _CHAINS.turn()
    _ENDPOINT_CHAINS.turn()
    b = _Builder(program)
    antispoof = _workloads(b)
    heps = hostendpoints.build(b, [e for e in program.endpoints.values()
                                   if e.entity.kind == HEP])
    chains = [Chain("pol-antispoof", tuple(antispoof)),
              Chain("pol-raw-pre", (Rule('iifname "tab*" jump pol-antispoof'), *heps.raw_pre)),
              Chain("pol-fwd", (*CT_RULES, Rule(CLEAR), Rule("iifname vmap @pol-wl-out",
                                                             "pod egress"),
                                UNKNOWN_POD, Rule("oifname vmap @pol-wl-in", "pod ingress"),
                                *heps.forward)),
              Chain("pol-in", (ND_RULE, *CT_RULES, Rule(CLEAR),
                               Rule("iifname vmap @pol-wl-out", "pod egress, to this host"),
                               *heps.input)),
              Chain("pol-out", (ND_RULE, *CT_RULES, Rule(CLEAR), UNKNOWN_POD,
                                Rule("oifname vmap @pol-wl-in", "pod ingress, from this host"),
                                *heps.output))]
    hooks = [HookEntry("raw-prerouting", HOOK_ORDER, Rule("jump pol-raw-pre")),
             HookEntry("filter-forward", HOOK_ORDER, Rule("jump pol-fwd")),
             HookEntry("filter-input", HOOK_ORDER, Rule("jump pol-in")),
             HookEntry("filter-output", HOOK_ORDER, Rule("jump pol-out"))]
    if heps.raw_out:
        chains.append(Chain("pol-raw-out", tuple(heps.raw_out)))
        hooks.append(HookEntry("raw-output", HOOK_ORDER, Rule("jump pol-raw-out")))
    if heps.pre:
        chains.append(Chain("pol-pre", (CT_RULES[0], *heps.pre)))
        hooks.append(HookEntry("filter-prerouting", HOOK_ORDER, Rule("jump pol-pre")))
    for chain in chains:
        b.chains[chain.name] = chain
    maps = [NftMap(name, hostendpoints.MAP_TYPES.get(name, "ifname"), "verdict",
                   frozenset(b.maps.get(name, ()))) for name in _map_names(b)]
    return Ruleset.of(chains=b.chains.values(), sets=b.sets.values(), maps=maps, hooks=hooks)


def _map_names(b: _Builder) -> list[str]:
    return sorted({"pol-wl-in", "pol-wl-out", *b.maps})


@contributor
def policy_contributor(snapshot: Snapshot, node: str) -> Ruleset:
    return desired_policy(snapshot, node)


def reset_caches() -> None:
    """Forget every memo, the program's too (a fresh computation, for tests)."""
    for gen in (_SETS, _CHAINS, _ENDPOINT_CHAINS):
        gen.previous, gen.current = {}, {}
    program_reset()
