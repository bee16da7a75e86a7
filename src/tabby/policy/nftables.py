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
same policies) jumps to each policy's chain in order, tier by tier
(``builder.endpoint_rules``): it returns as soon as one set the allow bit; a
pass bit skips the rest of the tier; a tier that decided nothing ends in a drop
when its defaultAction is Deny; a pass out of the last tier returns (the
profile allows pods). An endpoint no policy selects has no map entry: open. A
policy chain (``pol-p{i,e}-<hash of the policy's name>``) holds its rules.
Sets: ``pol-s4-*`` / ``pol-s6-*`` selector members, ``pol-sn*`` network-set nets
of a selector (named by content), ``pol-n*`` rule nets (named by content),
``pol-np*`` named ports, ``pol-src4/6`` anti-spoofing,
``pol-wl-ifaces`` the pods' interfaces (traffic to other ``tab*`` ones is dropped).
Every name is a function of what it holds or of a policy's name, so a pod
joining a selector is a set element, and a policy edit refills one chain.
"""

from __future__ import annotations

from tabby.nft.model import Chain, HookEntry, NftMap, NftSet, Rule, Ruleset
from tabby.policy import flowlog, hostendpoints
from tabby.policy.builder import DIR_LETTER, Builder, RenderMemo
from tabby.policy.flowids import FlowIds, FlowLog, flow_ids
from tabby.policy.index import HEP, WEP
from tabby.policy.program import PolicyProgram, ProgramBuilder
from tabby.policy.render import CLEAR
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


class PolicyRules:
    """Policy's part of one node's table, pass after pass (the NodeCalculator holds one).

    Its state is every memo policy keeps between passes: the program builder's, and
    last pass's sets, chains and endpoint chains by name (reused when their inputs are
    the same objects, patched when a set changed a little). A fresh ``PolicyRules`` fed
    the same snapshot gives an equal part.
    """

    def __init__(self, node: str, flowlog: FlowLog | None = None, *,
                 counters: bool = False) -> None:
        self.node = node
        self.flowlog = flowlog
        self.counters = counters  # per-rule named counters (tabby.agent.policymetrics)
        self.programs = ProgramBuilder()
        self.memo = RenderMemo()
        # What the flow ids of the last rendered program name (tabby.policy.flowids);
        # the agent's flow collector reads it after each pass.
        self.flow_ids = FlowIds({})
        self._ids_of: tuple[object, object] = (None, None)  # (compiled, tiers) of flow_ids

    def part(self, snapshot: Snapshot) -> Ruleset:
        return self.render(self.programs.build(snapshot, self.node))

    def render(self, program: PolicyProgram) -> Ruleset:
        if (self.flowlog is not None or self.counters) and (
                self._ids_of[0] is not program.compiled or self._ids_of[1] != program.tiers):
            self.flow_ids = flow_ids(program)
            self._ids_of = (program.compiled, program.tiers)
        return _render(program, self.memo, self.flowlog, self.counters)


def desired_policy(snapshot: Snapshot, node: str, flowlog: FlowLog | None = None, *,
                   counters: bool = False) -> Ruleset:
    """The policy part of ``node``'s table, computed afresh (pure)."""
    return PolicyRules(node, flowlog, counters=counters).part(snapshot)


def render_program(program: PolicyProgram, flowlog: FlowLog | None = None, *,
                   counters: bool = False) -> Ruleset:
    """``program`` rendered afresh (no memory of other calls)."""
    return _render(program, RenderMemo(), flowlog, counters)


WL_DEFAULT = (Rule("drop", "default deny: policies select this endpoint, none allowed"),)


def _workloads(b: Builder) -> list[Rule]:
    """Anti-spoofing sets and the workload maps; returns the anti-spoofing chain's rules."""
    src: dict[int, set[str]] = {4: set(), 6: set()}
    ifaces: set[str] = set()
    open_: dict[str, set[str]] = {"ingress": set(), "egress": set()}  # no policy selects
    for ep in b.program.endpoints.values():
        e = ep.entity
        if e.kind != WEP or not e.interface:
            continue
        ifaces.add(f'"{e.interface}"')
        for a in e.addresses:
            src[a.version].add(f'"{e.interface}" . {b.texts.text(a)}')
        for direction, map_name in (("ingress", "pol-wl-in"), ("egress", "pol-wl-out")):
            keys = ep.get("normal", direction)
            if keys:
                chain = b.endpoint_chain(f"pol-w{DIR_LETTER[direction]}", direction, keys,
                                         tail=WL_DEFAULT)
                b.map_entry(map_name, f'"{e.interface}"', chain)
            else:
                open_[direction].add(f'"{e.interface}"')
    if b.flowlog is not None:
        for direction, name in flowlog.OPEN_SETS.items():
            b.sets[name] = NftSet(name, "ifname", frozenset(open_[direction]))
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


def _render(program: PolicyProgram, memo: RenderMemo, fl: FlowLog | None = None,
            counters: bool = False) -> Ruleset:
    memo.turn()
    b = Builder(program, memo, fl, counters)
    both, egress, ingress = ("egress", "ingress"), ("egress",), ("ingress",)
    end = flowlog.tail_rules(fl)
    antispoof = _workloads(b)
    heps = hostendpoints.build(b, [e for e in program.endpoints.values()
                                   if e.entity.kind == HEP])
    chains = [Chain("pol-antispoof", tuple(antispoof)),
              Chain("pol-raw-pre", (Rule('iifname "tab*" jump pol-antispoof'), *heps.raw_pre)),
              Chain("pol-fwd", (*CT_RULES, Rule(CLEAR), *flowlog.head_rules(fl, both),
                                Rule("iifname vmap @pol-wl-out", "pod egress"),
                                UNKNOWN_POD, Rule("oifname vmap @pol-wl-in", "pod ingress"),
                                *heps.forward, *end)),
              Chain("pol-in", (ND_RULE, *CT_RULES, Rule(CLEAR), *flowlog.head_rules(fl, egress),
                               Rule("iifname vmap @pol-wl-out", "pod egress, to this host"),
                               *heps.input, *end)),
              Chain("pol-out", (ND_RULE, *CT_RULES, Rule(CLEAR), UNKNOWN_POD,
                                *flowlog.head_rules(fl, ingress),
                                Rule("oifname vmap @pol-wl-in", "pod ingress, from this host"),
                                *heps.output, *end))]
    if fl is not None:
        chains.append(flowlog.gate_chain(fl))
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
    return Ruleset.of(chains=b.chains.values(), sets=b.sets.values(), maps=maps, hooks=hooks,
                      counters=b.counters)


def _map_names(b: Builder) -> list[str]:
    return sorted({"pol-wl-in", "pol-wl-out", *b.maps})
