"""The typed intermediate form of policy rules, and its evaluation.

One ``IRRule`` is a conjunction of matches on one packet, for one IP family
(or both): protocol, ICMP type/code, and per side (source, destination)
address matches against *sets* and port matches. The compiler to nftables
renders every IRRule as nft rules; ``explain`` evaluates the very same
IRRules in Python (``IRRule.matches``), with set membership answered by a
``Members`` (``tabby.policy.sets``). So the kernel and ``explain`` read one
semantics.

Sets are referred to symbolically (``SetRef``), never by contents, so a
policy's IR depends only on the policy: a pod joining a selector changes set
members, never a rule.

    SetRef("sel", 4, selector="app == 'web'")     addresses of matching endpoints
                                                  (and nets of matching network sets)
    SetRef("nets", 4, nets=(10.0.0.0/8, ...))     literal CIDRs of a rule
    SetRef("port", 4, selector=..., names=("http",), protocol=6)
                                                  (address, port) of matching endpoints'
                                                  named port "http"/TCP
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Protocol

from tabby.model.policyrules import ICMPMatch

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"
    LOG = "Log"
    PASS = "Pass"


@dataclass(frozen=True, slots=True)
class SetRef:
    kind: str  # sel | nets | port
    family: int  # 4 | 6
    selector: str = ""  # canonical selector text (sel, port)
    nets: tuple[IPNetwork, ...] = ()  # (nets) collapsed, sorted
    names: tuple[str, ...] = ()  # (port) named ports
    protocol: int = 0  # (port)

    @property
    def digest(self) -> str:
        """A short stable name for the set (its kind, family and definition)."""
        got = _DIGESTS.get(self)
        if got is None:
            text = f"{self.kind}|{self.selector}|{','.join(map(str, self.nets))}|" \
                   f"{','.join(self.names)}|{self.protocol}"
            got = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]
            if len(_DIGESTS) > 200_000:
                _DIGESTS.clear()
            _DIGESTS[self] = got
        return got


_DIGESTS: dict[SetRef, str] = {}


@dataclass(frozen=True, slots=True)
class AddrMatch:
    sets: tuple[SetRef, ...]  # the address is in one of these...
    negate: bool = False  # ...or, negated, in none of them


@dataclass(frozen=True, slots=True)
class PortMatch:
    ranges: tuple[tuple[int, int], ...] = ()
    named: tuple[SetRef, ...] = ()  # (address, port) sets of named ports
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Side:
    addrs: tuple[AddrMatch, ...] = ()
    ports: tuple[PortMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Origin:
    policy: str  # PolicyRef.key
    direction: str  # ingress | egress
    index: int  # rule index in the manifest
    peer: int | None = None  # Kubernetes from/to entry


@dataclass(frozen=True, slots=True)
class IRRule:
    action: Action
    origin: Origin
    family: int = 0  # 0: both
    protocol: int | None = None
    not_protocol: int | None = None
    icmp: ICMPMatch | None = None
    not_icmp: ICMPMatch | None = None
    src: Side = Side()
    dst: Side = Side()

    def matches(self, pkt: Packet, members: Members) -> bool:
        if self.family and self.family != pkt.family:
            return False
        if self.protocol is not None and pkt.protocol != self.protocol:
            return False
        if self.not_protocol is not None and pkt.protocol == self.not_protocol:
            return False
        if self.icmp is not None and not _icmp_matches(self.icmp, pkt):
            return False
        if self.not_icmp is not None and _icmp_matches(self.not_icmp, pkt):
            return False
        return (_side(self.src, pkt.src, pkt.sport, pkt, members)
                and _side(self.dst, pkt.dst, pkt.dport, pkt, members))


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a connection, as policy sees it."""

    family: int
    src: IPAddress
    dst: IPAddress
    protocol: int  # 6 tcp, 17 udp, 132 sctp, 1 icmp, 58 icmpv6, ...
    dport: int | None = None
    sport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


class Members(Protocol):
    def contains(self, ref: SetRef, address: IPAddress, port: int | None = None) -> bool:
        """Is ``address`` (with ``port`` for a named-port set) in the set ``ref``?"""
        ...


PORT_PROTOCOLS = frozenset({6, 17, 132, 136})


def _icmp_matches(m: ICMPMatch, pkt: Packet) -> bool:
    if pkt.protocol not in (1, 58):
        return False
    if m.type is not None and pkt.icmp_type != m.type:
        return False
    return m.code is None or pkt.icmp_code == m.code


def _side(side: Side, address: IPAddress, port: int | None, pkt: Packet,
          members: Members) -> bool:
    for am in side.addrs:
        inside = any(members.contains(ref, address) for ref in am.sets)
        if inside == am.negate:
            return False
    for pm in side.ports:
        if pkt.protocol not in PORT_PROTOCOLS or port is None:
            return False  # nft's "tcp dport" never matches a port-less packet
        inside = any(lo <= port <= hi for lo, hi in pm.ranges) or any(
            members.contains(ref, address, port) for ref in pm.named)
        if inside == pm.negate:
            return False
    return True
