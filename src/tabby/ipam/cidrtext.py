"""IP networks as tabby-ipam's exec path needs them, on integers, without ``ipaddress``.

Importing ``ipaddress`` (and functools and collections behind it) costs tabby-ipam
about 4 ms of CPU a pod on this machine, measured: more than its whole SQLite
transaction, and nearly half of what the exec spends beyond Python's own start-up.
The exec path needs little of it: read the CIDR text the model wrote, step to the
n-th address of a block, tell whether a block lies in a pool, list a pool's
blocks, and print them. This module does exactly that, and reads only text that
prints back unchanged (ipaddress's canonical form, no host bits set):
``network(text)`` is None for anything else, and the caller uses ``ipaddress``
instead (the engine, or the plugin's route parsing). Printing is ipaddress's own
rule (RFC 5952: the first longest run of two or more zero groups becomes ``::``);
IPv4-mapped addresses (``::ffff:0:0/96``, printed differently by Python 3.13) are
neither read nor printed. ``tests/unit/test_ipam_cidrtext.py`` holds every answer
to ipaddress's.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: see tabby.ipam.fastpath
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Net", "network"]

_BITS = {4: 32, 6: 128}
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdef")


class Net:
    """An IP network: version, network address (an integer), prefix length."""

    __slots__ = ("prefixlen", "value", "version")

    def __init__(self, version: int, value: int, prefixlen: int) -> None:
        self.version, self.value, self.prefixlen = version, value, prefixlen

    @property
    def bits(self) -> int:
        return _BITS[self.version]

    @property
    def num_addresses(self) -> int:
        return 1 << (self.bits - self.prefixlen)

    def __str__(self) -> str:
        return f"{_text(self.version, self.value)}/{self.prefixlen}"

    def __repr__(self) -> str:
        return f"Net({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Net) and (self.version, self.value, self.prefixlen) == (
            other.version, other.value, other.prefixlen)

    def __hash__(self) -> int:
        return hash((self.version, self.value, self.prefixlen))

    def address(self, ordinal: int) -> str:
        """The text of the network's address number ``ordinal`` (0: the network's own)."""
        value = self.value + ordinal
        if not 0 <= ordinal < self.num_addresses or (self.version == 6 and _mapped(value)):
            raise ValueError(f"{self}: no address number {ordinal} to print")
        return _text(self.version, value)

    def within(self, other: Net) -> bool:
        """Is this network a subnet of ``other`` (``ipaddress``'s ``subnet_of``)?"""
        shift = self.bits - other.prefixlen
        return (self.version == other.version and self.prefixlen >= other.prefixlen
                and self.value >> shift == other.value >> shift)

    def subnets(self, prefixlen: int) -> Iterator[Net]:
        """The subnets of length ``prefixlen``, lowest first (lazily)."""
        if not self.prefixlen <= prefixlen <= self.bits:
            raise ValueError(f"{self} has no /{prefixlen} subnets")
        step = 1 << (self.bits - prefixlen)
        for value in range(self.value, self.value + self.num_addresses, step):
            yield Net(self.version, value, prefixlen)


def network(text: str) -> Net | None:
    """The network ``text`` names, if it is written as ipaddress writes it; else None."""
    addr, slash, length = text.partition("/")
    if not slash or not length or not set(length) <= _DIGITS or len(length) > 3:
        return None
    version = 6 if ":" in addr else 4
    value = _read6(addr) if version == 6 else _read4(addr)
    prefixlen, bits = int(length), _BITS[version]
    if value is None or prefixlen > bits or value & ((1 << (bits - prefixlen)) - 1):
        return None
    if version == 6 and _mapped(value):
        return None
    net = Net(version, value, prefixlen)
    return net if str(net) == text else None


def _mapped(value: int) -> bool:
    """An IPv4-mapped IPv6 address (``::ffff:0:0/96``): Python 3.13's ipaddress prints
    it with the IPv4 address inside, earlier ones in hex; this module reads and prints
    none of them."""
    return value >> 32 == 0xFFFF


def _read4(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4 or not all(p and len(p) <= 3 and set(p) <= _DIGITS for p in parts):
        return None
    octets = [int(p) for p in parts]
    if any(o > 255 for o in octets):
        return None
    return int.from_bytes(bytes(octets), "big")


def _read6(text: str) -> int | None:
    """Groups of 1-4 lowercase hex digits, with at most one ``::``; canonical form is
    checked by the caller (the text must print back the same)."""
    head, gap, tail = text.partition("::")
    groups = (head.split(":") if head else []) + (["*"] if gap else []) + (
        tail.split(":") if tail else [])
    if "::" in tail:
        return None
    known = [g for g in groups if g != "*"]
    if not all(g and len(g) <= 4 and set(g) <= _HEX for g in known):
        return None
    missing = 8 - len(known)
    if (gap and missing < 1) or (not gap and missing != 0):
        return None
    value = 0
    for g in groups:
        for _ in range(missing if g == "*" else 1):
            value = (value << 16) | (0 if g == "*" else int(g, 16))
    return value


def _text(version: int, value: int) -> str:
    if version == 4:
        return ".".join(str(b) for b in value.to_bytes(4, "big"))
    hextets = [f"{(value >> shift) & 0xFFFF:x}" for shift in range(112, -1, -16)]
    best_start, best_len, start, run = -1, 0, -1, 0  # ipaddress's _compress_hextets
    for i, h in enumerate(hextets):
        if h == "0":
            run += 1
            if start == -1:
                start = i
            if run > best_len:
                best_start, best_len = start, run
        else:
            start, run = -1, 0
    if best_len > 1:
        end = best_start + best_len
        if end == len(hextets):
            hextets.append("")
        hextets[best_start:end] = [""]
        if best_start == 0:
            hextets.insert(0, "")
    return ":".join(hextets)
