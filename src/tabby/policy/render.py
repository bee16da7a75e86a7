"""IR rules as nft rule bodies: the only place policy semantics become nft text.

Per ``IRRule``, every conjunct becomes one nft match; a conjunct that is an OR
of several sets (a selector whose members include network-set nets; port
numbers beside named ports) becomes alternatives, and the rule is emitted
once per combination (same comment). The verdict statement depends on the
action and the stage:

    Allow  meta mark set meta mark | 0x10000 return   (untracked: notrack first)
    Pass   meta mark set meta mark | 0x20000 return
    Deny   drop
    Log    log prefix "tabby <policy> <dir> <n>: "  (and go on)

The endpoint chain that jumped to the policy chain reads the mark bits back.

A rule's literal CIDRs (``nets`` refs) of at most ``INLINE_NETS`` entries are
written into the rule as an anonymous set (``ip saddr { 10.0.0.0/8, ... }``)
rather than a named set: ``nft -f`` slows down with the number of named sets
(quadratically, measured: 10k named sets take 11 s), and distinct ipBlocks are
the usual source of many. Longer lists keep their named (interval) set.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from tabby.marks import MARK_ALLOW, MARK_PASS, MARK_POLICY
from tabby.model.policyrules import ICMPMatch
from tabby.nft.model import Rule
from tabby.policy.ir import Action, AddrMatch, IRRule, PortMatch, SetRef, Side

MARK_BITS = MARK_POLICY
CLEAR = f"meta mark set meta mark & {0xFFFFFFFF & ~MARK_BITS:#010x}"
L4 = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite"}
PROTO_NAMES = {1: "icmp", 58: "ipv6-icmp", **L4}
MAX_COMMENT = 120
INLINE_NETS = 8  # literal CIDR lists up to this long go into the rule text

SetNames = Callable[[SetRef], list[str]]


def verdict(action: Action, *, untracked: bool, log_prefix: str) -> str:
    if action is Action.ALLOW:
        mark = f"meta mark set meta mark | {MARK_ALLOW:#x} return"
        return f"notrack {mark}" if untracked else mark
    if action is Action.PASS:
        return f"meta mark set meta mark | {MARK_PASS:#x} return"
    if action is Action.DENY:
        return "drop"
    return f'log prefix "{log_prefix[:120]}"'


def render_rule(rule: IRRule, names: SetNames, comment: str, *, untracked: bool = False,
                log_prefix: str = "tabby: ", flow: str = "", counter: str = "") -> list[Rule]:
    """The nft rules for one IR rule (several when a match is an OR of sets); with
    ``flow`` (a flow log statement, ``tabby.policy.flowlog``), each is preceded by the
    same matches logging the packet; with ``counter`` (a named counter), each counts
    into it before its verdict."""
    ip = {4: "ip", 6: "ip6"}.get(rule.family, "")
    conj: list[list[str]] = []  # each entry: alternatives (OR); the entries AND
    has_addr = bool(rule.src.addrs or rule.dst.addrs
                    or any(pm.named for pm in (*rule.src.ports, *rule.dst.ports)))
    if rule.family and not has_addr and rule.icmp is None and rule.not_icmp is None:
        conj.append([f"meta nfproto ipv{rule.family}"])
    has_ports = bool(rule.src.ports or rule.dst.ports)
    if rule.protocol is not None and not has_ports:
        conj.append([f"meta l4proto {PROTO_NAMES.get(rule.protocol, str(rule.protocol))}"])
    if rule.not_protocol is not None:
        name = PROTO_NAMES.get(rule.not_protocol, str(rule.not_protocol))
        conj.append([f"meta l4proto != {name}"])
    conj += _icmp(rule)
    for side, word in ((rule.src, "saddr"), (rule.dst, "daddr")):
        conj += _addrs(side.addrs, ip, word, names)
    proto = L4.get(rule.protocol or 0, "th")
    for side, word, addr in ((rule.src, "sport", "saddr"), (rule.dst, "dport", "daddr")):
        conj += _ports(side, proto, word, f"{ip} {addr}", names)
    stmt = verdict(rule.action, untracked=untracked, log_prefix=log_prefix)
    if counter:
        stmt = f'counter name "{counter}" {stmt}'
    out = []
    for combo in itertools.product(*conj):
        if flow:
            out.append(Rule(" ".join((*combo, flow)), comment[:MAX_COMMENT]))
        body = " ".join((*combo, stmt))
        out.append(Rule(body, comment[:MAX_COMMENT]))
    return out


def _icmp(rule: IRRule) -> list[list[str]]:
    word = "icmpv6" if rule.family == 6 else "icmp"
    out: list[list[str]] = []
    if rule.icmp is not None:
        if rule.icmp.type is not None:
            out.append([f"{word} type {rule.icmp.type}"])
        if rule.icmp.code is not None:
            out.append([f"{word} code {rule.icmp.code}"])
        if rule.icmp.type is None:
            out.append([f"meta l4proto {'ipv6-icmp' if rule.family == 6 else 'icmp'}"])
    if rule.not_icmp is not None:
        out.append([_not_icmp(rule.not_icmp, word)])
    return out


def _not_icmp(m: ICMPMatch, word: str) -> str:
    if m.type is None:
        return f"meta l4proto != {'ipv6-icmp' if word == 'icmpv6' else 'icmp'}"
    if m.code is None:
        return f"{word} type != {m.type}"
    return f"{word} type . {word} code != {{ {m.type} . {m.code} }}"


def _addrs(matches: tuple[AddrMatch, ...], ip: str, word: str, names: SetNames
           ) -> list[list[str]]:
    out: list[list[str]] = []
    for am in matches:
        refs: list[str] = []
        for ref in am.sets:
            inline = inline_nets(ref)
            refs += [inline] if inline else [f"@{n}" for n in names(ref)]
        if am.negate:
            out += [[f"{ip} {word} != {r}"] for r in refs]
        else:
            out.append([f"{ip} {word} {r}" for r in refs])
    return out


def inline_nets(ref: SetRef) -> str:
    """A short literal CIDR list as nft text (``10.0.0.0/8`` or ``{ a, b }``); "" if
    ``ref`` keeps a named set."""
    if ref.kind != "nets" or not 0 < len(ref.nets) <= INLINE_NETS:
        return ""
    if len(ref.nets) == 1:
        return str(ref.nets[0])
    return "{ " + ", ".join(str(n) for n in ref.nets) + " }"


def _ports(side: Side, proto: str, word: str, addr: str, names: SetNames) -> list[list[str]]:
    out: list[list[str]] = []
    for pm in side.ports:
        alts = []
        if pm.ranges:
            op = "!= " if pm.negate else ""
            alts.append(f"{proto} {word} {op}{port_set(pm)}")
        for ref in pm.named:
            for n in names(ref):
                op = "!= " if pm.negate else ""
                alts.append(f"{addr} . {proto} {word} {op}@{n}")
        if pm.negate:
            out += [[a] for a in alts]
        else:
            out.append(alts)
    return out


def port_set(pm: PortMatch) -> str:
    items = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in pm.ranges]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"
