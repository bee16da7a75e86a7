"""nft matches and statements as typed values, and the one function that writes them as text.

A rule is a sequence of *terms*, each a match or a statement, written out in
order and joined by spaces (``Rule.of(*terms)`` in ``tabby.nft.model``)::

    Rule.of(Match(daddr(4), SetRef("svc-cips-v4")), Goto("svc-reject"))
        -> 'ip daddr @svc-cips-v4 goto svc-reject'

The vocabulary, by role (every class a frozen value; ``text`` renders any of them):

    expressions  Payload("ip", "daddr")  Meta("l4proto")  IIFNAME  Fib("daddr", "type")
                 Ct("state")  Numgen(mod)  Concat(items)  Bitwise(expr, "and", value)
                 Typeof(expr) (a map's key or data declared by expression)
    operands     literals (str, int, addresses, networks), Hex(0x4000), SetRef("name")
                 ("@name"), AnonSet(items) ("{ a, b }"), Quoted("tab*") ('"tab*"')
    matches      Match(expr, operand, negate=False)
    statements   MetaSet("mark", expr)  Masquerade(fully_random)  Dnat(family, to)
                 with to = Endpoint(addr, port) or MapLookup(key, map)
                 Update(set, key, timeout)  Vmap(key, map)  InlineVmap(key, entries)
                 Reject(tcp_reset)  Notrack()
    verdicts     Goto(chain)  Jump(chain)  Return()  Drop()

Names of sets, maps and chains stay plain strings. Only what tabby writes is
here: a term it does not need yet is added with its text, in ``text``.

``element(*values)`` writes one set or map element (``a . b . c``); it is the
text ``Concat`` gives for the same literals, without building the value (maps
with tens of thousands of elements are filled on every cold pass).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal as Lit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A literal as nft writes it: a symbol ("local", "tcp", "ipv4"), a number, an address.
Literal = str | int | IPAddress | IPNetwork

__all__ = [
    "IIFNAME", "TH_DPORT", "AnonSet", "Bitwise", "Concat", "Ct", "Dnat", "Drop", "Endpoint",
    "Expr", "Fib", "Goto", "Hex", "InlineVmap", "Jump", "Literal", "MapLookup", "Masquerade",
    "Match", "Meta", "MetaSet", "Notrack", "Numgen", "Operand", "Payload", "Quoted", "Reject",
    "Renderable", "Return", "SetRef", "Statement", "Term", "Typeof", "Update", "Verdict", "Vmap",
    "body_text", "daddr", "element", "saddr", "text",
]


# -- expressions ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Payload:
    """A header field: ``ip daddr``, ``ip6 saddr``, ``th dport`` (any transport header)."""

    protocol: str
    field: str


@dataclass(frozen=True, slots=True)
class Meta:
    """Packet metadata: ``meta l4proto``, ``meta mark``; ``qualified=False`` writes the
    short form nft also accepts (``iifname``)."""

    key: str
    qualified: bool = True


@dataclass(frozen=True, slots=True)
class Fib:
    """A FIB lookup's result: ``fib daddr type``."""

    flags: str
    result: str


@dataclass(frozen=True, slots=True)
class Ct:
    """Conntrack state of the packet's connection: ``ct state``, ``ct status``."""

    key: str


@dataclass(frozen=True, slots=True)
class Numgen:
    """``numgen random mod N``: a number in [0, N), fresh for each packet."""

    mod: int


@dataclass(frozen=True, slots=True)
class Concat:
    """``a . b . c``: expressions (or literals, in a declaration) joined into one key."""

    items: tuple[Expr | Literal, ...]


@dataclass(frozen=True, slots=True)
class Hex:
    """A 32-bit constant written in hex with all eight digits (``0x00004000``)."""

    value: int


@dataclass(frozen=True, slots=True)
class Bitwise:
    """``meta mark and 0x00004000``: an expression combined with a constant."""

    expr: Expr
    op: Lit["and", "or"]
    value: Hex


@dataclass(frozen=True, slots=True)
class Typeof:
    """A map's key or data type given by expression: ``typeof ip daddr . th dport``."""

    expr: Expr


Expr = Payload | Meta | Fib | Ct | Numgen | Concat | Bitwise

IIFNAME = Meta("iifname", qualified=False)
TH_DPORT = Payload("th", "dport")
_IP = {4: "ip", 6: "ip6"}


def saddr(family: int) -> Payload:
    """``ip saddr`` or ``ip6 saddr``."""
    return Payload(_IP[family], "saddr")


def daddr(family: int) -> Payload:
    """``ip daddr`` or ``ip6 daddr``."""
    return Payload(_IP[family], "daddr")


# -- operands and matches ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SetRef:
    """A named set (or map) of the table, as an operand: ``@name``."""

    name: str


@dataclass(frozen=True, slots=True)
class AnonSet:
    """An anonymous set written in the rule: ``{ tcp, udp, sctp }``."""

    items: tuple[Literal, ...]


@dataclass(frozen=True, slots=True)
class Quoted:
    """A string nft needs in quotes, such as an interface name pattern: ``"tab*"``."""

    value: str


Operand = Literal | Hex | SetRef | AnonSet | Quoted


@dataclass(frozen=True, slots=True)
class Match:
    """``expr operand`` (equal, or a member of the set) or, negated, ``expr != operand``."""

    expr: Expr
    operand: Operand
    negate: bool = False


# -- verdicts and statements ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Goto:
    chain: str


@dataclass(frozen=True, slots=True)
class Jump:
    chain: str


@dataclass(frozen=True, slots=True)
class Return:
    pass


@dataclass(frozen=True, slots=True)
class Drop:
    pass


Verdict = Goto | Jump | Return | Drop


@dataclass(frozen=True, slots=True)
class Reject:
    """``reject`` (ICMP port unreachable) or ``reject with tcp reset``."""

    tcp_reset: bool = False


@dataclass(frozen=True, slots=True)
class Masquerade:
    fully_random: bool = False


@dataclass(frozen=True, slots=True)
class MetaSet:
    """``meta mark set meta mark or 0x00004000``: a metadata key assigned."""

    key: str
    value: Expr


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A DNAT target: ``198.19.0.1:8080``, ``[fd7a::1]:8080``."""

    address: IPAddress
    port: int


@dataclass(frozen=True, slots=True)
class MapLookup:
    """``key map @name``: the data the map holds for the key (a DNAT target)."""

    key: Expr
    map: str


@dataclass(frozen=True, slots=True)
class Dnat:
    """``dnat ip to TARGET`` (``ip6`` for family 6)."""

    family: int
    to: Endpoint | MapLookup


@dataclass(frozen=True, slots=True)
class Vmap:
    """``key vmap @name``: the verdict a named verdict map holds for the key."""

    key: Expr
    map: str


@dataclass(frozen=True, slots=True)
class InlineVmap:
    """``key vmap { 0 : goto a, 1 : goto b }``: a verdict map written in the rule."""

    key: Expr
    entries: tuple[tuple[Literal, Verdict], ...]


@dataclass(frozen=True, slots=True)
class Update:
    """``update @set { key timeout Ns }``: add the key to a dynamic set, or refresh it."""

    set: str
    key: Expr
    timeout: int  # seconds


@dataclass(frozen=True, slots=True)
class Notrack:
    """``notrack``: the packet bypasses conntrack (raw hooks only)."""


Statement = Reject | Masquerade | MetaSet | Dnat | Vmap | InlineVmap | Update | Notrack
Term = Match | Statement | Verdict
Renderable = Term | Expr | Operand | Typeof | Endpoint | MapLookup


# -- the renderer ----------------------------------------------------------------------------

def text(term: Renderable) -> str:
    """The nft text of one term (an expression, operand, match, statement or verdict)."""
    match term:  # the hottest first: a verdict map's data, once per service frontend
        case Goto(chain):
            return f"goto {chain}"
        case str():
            return term
        case int():
            return str(term)
        case Payload(protocol, name):
            return f"{protocol} {name}"
        case Meta(key, qualified):
            return f"meta {key}" if qualified else key
        case Match(expr, operand, negate):
            return f"{text(expr)} {'!= ' if negate else ''}{text(operand)}"
        case SetRef(name):
            return f"@{name}"
        case Concat(items):
            return " . ".join(text(i) for i in items)
        case Jump(chain):
            return f"jump {chain}"
        case Return():
            return "return"
        case Drop():
            return "drop"
        case Notrack():
            return "notrack"
        case Vmap(key, name):
            return f"{text(key)} vmap @{name}"
        case InlineVmap(key, entries):
            pairs = ", ".join(f"{text(k)} : {text(v)}" for k, v in entries)
            return f"{text(key)} vmap {{ {pairs} }}"
        case MapLookup(key, name):
            return f"{text(key)} map @{name}"
        case Dnat(family, to):
            return f"dnat {_IP[family]} to {text(to)}"
        case Endpoint(address, port):
            host = f"[{address}]" if address.version == 6 else str(address)
            return f"{host}:{port}"
        case Hex(value):
            return f"{value:#010x}"
        case Bitwise(expr, op, value):
            return f"{text(expr)} {op} {text(value)}"
        case MetaSet(key, value):
            return f"meta {key} set {text(value)}"
        case Masquerade(fully_random):
            return "masquerade fully-random" if fully_random else "masquerade"
        case Reject(tcp_reset):
            return "reject with tcp reset" if tcp_reset else "reject"
        case Update(name, key, timeout):
            return f"update @{name} {{ {text(key)} timeout {timeout}s }}"
        case Quoted(value):
            return f'"{value}"'
        case AnonSet(items):
            return "{ " + ", ".join(text(i) for i in items) + " }"
        case Fib(flags, result):
            return f"fib {flags} {result}"
        case Ct(key):
            return f"ct {key}"
        case Numgen(mod):
            return f"numgen random mod {mod}"
        case Typeof(expr):
            return f"typeof {text(expr)}"
        case _:  # addresses and networks
            return str(term)


def body_text(terms: tuple[Term, ...]) -> str:
    """A rule's body: its terms' text in order."""
    return " ".join(text(t) for t in terms)


def element(*values: Literal) -> str:
    """One set or map element (or a map's data): ``198.18.128.1 . tcp . 80``."""
    # the usual sizes written out: half the cost of a join, on every element of a cold pass
    if len(values) == 2:
        a, b = values
        return f"{a!s} . {b!s}"
    if len(values) == 3:
        a, b, c = values
        return f"{a!s} . {b!s} . {c!s}"
    return " . ".join(map(str, values))
