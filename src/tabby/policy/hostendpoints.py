"""Host endpoints in nft: failsafe first, then policies by stage, then the default.

For each host endpoint of this node and each stage it has:

    normal ingress / egress   (pol-hi / pol-he)  traffic to / from the host itself:
        failsafe ports return; policies; allow returns; pass goes to the profile
        (default deny, unless the endpoint has the default-allow profile); drop.
    forward ingress / egress  (pol-hfi / pol-hfe) routed through the interface, only
        when applyOnForward policies select it: policies; otherwise as normal, no failsafe.
    preDNAT ingress           (pol-hpi) before DNAT: failsafe; policies; no default.
    untracked in / out        (pol-hri / pol-hre) raw table, stateless: failsafe;
        policies (allow = notrack); no default.

An endpoint with ``interfaceName`` is dispatched by interface; one with only
``expectedIPs`` by address (traffic to those addresses in, from them out;
normal stage only). Traffic between the host and its own pods never meets
host endpoint policy (Calico's rule).

An all-interfaces endpoint (``interfaceName: "*"``; with several on one node
the first by name, as Felix picks) is the default after the named ones, as in
Felix's dispatch chains: its chains run for every interface that no
interface-named endpoint of the node names (``pol-hep-ifaces``) and that is
not a pod's (``tab*``): traffic to and from the host (``lo`` included, as in
Calico), forwarded traffic in and out through such interfaces when
applyOnForward policies select it (none: forwarded traffic passes), and
preDNAT ingress (from every interface, pods' included, as Felix's mangle
dispatch). doNotTrack policies do not apply to it (Felix ignores them there
with a warning). An endpoint with only ``expectedIPs`` keeps its address
dispatch; traffic to its addresses then meets both its chains and the
all-interfaces ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tabby.model.felixconfig import ProtoPort
from tabby.model.hostendpoint import HostEndpoint
from tabby.nft.model import NftSet, Rule
from tabby.policy.builder import Builder
from tabby.policy.index import HEP, Entity
from tabby.policy.program import EndpointPolicies

MAP_TYPES = {"pol-hepa-in4": "ipv4_addr", "pol-hepa-out4": "ipv4_addr",
             "pol-hepa-in6": "ipv6_addr", "pol-hepa-out6": "ipv6_addr"}
DENY = Rule("drop", "default deny: host endpoint")
PASS_DENY = Rule("meta mark & 0x20000 != 0 drop", "pass: no profile allows")


@dataclass(slots=True)
class HostRules:
    """Rules to append to the dispatch chains."""

    raw_pre: list[Rule] = field(default_factory=list)
    raw_out: list[Rule] = field(default_factory=list)
    pre: list[Rule] = field(default_factory=list)
    forward: list[Rule] = field(default_factory=list)
    input: list[Rule] = field(default_factory=list)
    output: list[Rule] = field(default_factory=list)


def failsafe_rules(ports: tuple[ProtoPort, ...], direction: str) -> tuple[Rule, ...]:
    """``tcp dport { 22, 179 } return`` per protocol (and per net when one is given)."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for p in ports:
        net = ""
        if p.net is not None:
            word = "saddr" if direction == "inbound" else "daddr"
            net = f"{'ip' if p.net.version == 4 else 'ip6'} {word} {p.net} "
        groups[(net, p.protocol.lower())].append(p.port)
    out = []
    for (net, proto), numbers in sorted(groups.items()):
        items = sorted(set(numbers))
        ports_text = str(items[0]) if len(items) == 1 else \
            "{ " + ", ".join(map(str, items)) + " }"
        out.append(Rule(f"{net}{proto} dport {ports_text} return", f"failsafe {direction}"))
    return tuple(out)


def all_interfaces_endpoint(entities: Iterable[Entity], node: str) -> Entity | None:
    """The all-interfaces host endpoint whose chains ``node``'s dataplane runs: of several,
    the first by name (as ``build`` picks, and Felix)."""
    found = [e for e in entities if e.kind == HEP and e.node == node
             and isinstance(e.source, HostEndpoint) and e.source.spec.all_interfaces]
    return min(found, key=lambda e: e.key) if found else None


@dataclass(slots=True)
class _Wildcard:
    """The all-interfaces endpoint's chains, dispatched after the named ones."""

    normal: dict[str, str]
    forward: dict[str, str] = field(default_factory=dict)
    pre: str = ""


def build(b: Builder, heps: list[EndpointPolicies]) -> HostRules:
    out = HostRules()
    if not heps:
        return out
    fs_in = failsafe_rules(b.program.failsafe_in, "inbound")
    fs_out = failsafe_rules(b.program.failsafe_out, "outbound")
    wildcard: _Wildcard | None = None
    named: set[str] = set()
    for ep in sorted(heps, key=lambda e: e.entity.key):
        hep = ep.entity.source
        assert isinstance(hep, HostEndpoint)
        allow = hep.spec.default_allow
        pass_rule = None if allow else PASS_DENY
        tail = () if allow else (DENY,)
        if hep.spec.all_interfaces and wildcard is not None:
            continue  # Felix's rule: one all-interfaces endpoint, the first by name
        normal = {d: b.endpoint_chain(f"pol-h{d[0]}", d, ep.get("normal", d), head=fs,
                                      tail=tail, pass_rule=pass_rule)
                  for d, fs in (("ingress", fs_in), ("egress", fs_out))}
        iface = ep.entity.interface
        if hep.spec.all_interfaces:
            wildcard = _Wildcard(normal)
            for d in ("ingress", "egress"):
                if ep.get("forward", d):
                    wildcard.forward[d] = b.endpoint_chain(
                        f"pol-hf{d[0]}", d, ep.get("forward", d), tail=tail,
                        pass_rule=pass_rule)
            if ep.get("predNAT", "ingress"):
                wildcard.pre = b.endpoint_chain("pol-hpi", "ingress",
                                                ep.get("predNAT", "ingress"), head=fs_in)
            continue
        if not iface:
            for a in ep.entity.addresses:
                b.map_entry(f"pol-hepa-in{a.version}", str(a), normal["ingress"])
                b.map_entry(f"pol-hepa-out{a.version}", str(a), normal["egress"])
            continue
        named.add(f'"{iface}"')
        _named(b, ep, f'"{iface}"', normal, fs_in, fs_out, tail, pass_rule)
    _dispatch(b, out)
    if wildcard is not None:
        _dispatch_wildcard(b, out, wildcard, named)
    return out


def _named(b: Builder, ep: EndpointPolicies, key: str, normal: dict[str, str],
           fs_in: tuple[Rule, ...], fs_out: tuple[Rule, ...], tail: tuple[Rule, ...],
           pass_rule: Rule | None) -> None:
    """Map entries for an endpoint with an interface name, every stage."""
    b.map_entry("pol-hep-in", key, normal["ingress"])
    b.map_entry("pol-hep-out", key, normal["egress"])
    for d, map_name in (("ingress", "pol-hep-fwd-in"), ("egress", "pol-hep-fwd-out")):
        keys = ep.get("forward", d)
        if keys:
            b.map_entry(map_name, key, b.endpoint_chain(
                f"pol-hf{d[0]}", d, keys, tail=tail, pass_rule=pass_rule))
    if ep.get("predNAT", "ingress"):
        b.map_entry("pol-hep-pre", key, b.endpoint_chain(
            "pol-hpi", "ingress", ep.get("predNAT", "ingress"), head=fs_in))
    for d, map_name, fs in (("ingress", "pol-hep-raw-in", fs_in),
                            ("egress", "pol-hep-raw-out", fs_out)):
        if ep.get("untracked", d):
            b.map_entry(map_name, key, b.endpoint_chain(
                f"pol-hr{d[0]}", d, ep.get("untracked", d), head=fs))


WILDCARD_IFACES = "pol-hep-ifaces"


def _dispatch_wildcard(b: Builder, out: HostRules, w: _Wildcard, named: set[str]) -> None:
    """The all-interfaces endpoint's rules, after the named endpoints' dispatch: for any
    interface not named by another endpoint (and, but for preDNAT, not a pod's)."""
    b.sets[WILDCARD_IFACES] = NftSet(WILDCARD_IFACES, "ifname", frozenset(named))

    def rule(word: str, chain: str, comment: str, *, pods: bool = False) -> Rule:
        not_pod = "" if pods else f'{word} != "tab*" '
        return Rule(f"{not_pod}{word} != @{WILDCARD_IFACES} jump {chain}", comment)

    out.input.append(rule("iifname", w.normal["ingress"], "all-interfaces host endpoint"))
    out.output.append(rule("oifname", w.normal["egress"], "all-interfaces host endpoint"))
    if "ingress" in w.forward:
        out.forward.append(rule("iifname", w.forward["ingress"],
                                "all-interfaces host endpoint, forwarded in"))
    if "egress" in w.forward:
        out.forward.append(rule("oifname", w.forward["egress"],
                                "all-interfaces host endpoint, forwarded out"))
    if w.pre:
        out.pre.append(rule("iifname", w.pre, "all-interfaces host endpoint, pre-DNAT",
                            pods=True))


def _dispatch(b: Builder, out: HostRules) -> None:
    present = set(b.maps)
    if "pol-hep-in" in present:
        out.input.append(Rule("iifname vmap @pol-hep-in", "host endpoint ingress"))
        out.output.append(Rule("oifname vmap @pol-hep-out", "host endpoint egress"))
    for v, ip in ((4, "ip"), (6, "ip6")):
        if f"pol-hepa-in{v}" in present:
            out.input.append(Rule(f'iifname != "tab*" {ip} daddr vmap @pol-hepa-in{v}',
                                  "host endpoint ingress, by address"))
            out.output.append(Rule(f'oifname != "tab*" {ip} saddr vmap @pol-hepa-out{v}',
                                   "host endpoint egress, by address"))
    if "pol-hep-fwd-in" in present:
        out.forward.append(Rule("iifname vmap @pol-hep-fwd-in", "host endpoint, forwarded in"))
    if "pol-hep-fwd-out" in present:
        out.forward.append(Rule("oifname vmap @pol-hep-fwd-out",
                                "host endpoint, forwarded out"))
    if "pol-hep-pre" in present:
        out.pre.append(Rule("iifname vmap @pol-hep-pre", "host endpoint, pre-DNAT"))
    if "pol-hep-raw-in" in present:
        out.raw_pre.append(Rule("iifname vmap @pol-hep-raw-in", "host endpoint, untracked"))
    if "pol-hep-raw-out" in present:
        out.raw_out.append(Rule("oifname vmap @pol-hep-raw-out", "host endpoint, untracked"))
