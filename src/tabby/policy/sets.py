"""What is in each set a rule refers to: the one membership answer for nft and explain.

``SetBook(index)`` resolves a ``SetRef`` against the entities of one snapshot:

- ``sel``: addresses of the matching endpoints (workload and host) of the ref's
  family, plus, apart, the nets of matching network sets (nft keeps those in an
  interval set of their own: pod addresses inside a network set's CIDR would
  otherwise overlap, which interval sets refuse);
- ``nets``: the literal CIDRs;
- ``port``: (address, port) of matching endpoints whose named port has one of
  the ref's names and its protocol.

Answers are memoised per book (one book per snapshot).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from tabby import selector as sel
from tabby.policy.index import GNETSET, HEP, NETSET, WEP, Entity, LabelIndex, bits
from tabby.policy.ir import SetRef

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_PARSED: dict[str, sel.Selector] = {}
_PORT_PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}


def parse(text: str) -> sel.Selector:
    got = _PARSED.get(text)
    if got is None:
        got = sel.parse(text)
        if len(_PARSED) < 100_000:
            _PARSED[text] = got
    return got


class SetBook:
    """Set members over one index. ``previous``, a book over an index of the same lineage
    (``LabelIndex.evolve``), lends its answers for every set whose mask did not change."""

    def __init__(self, index: LabelIndex, previous: SetBook | None = None) -> None:
        self.index = index
        self._endpoint_mask = index.kind_mask(WEP, HEP)
        self._netset_mask = index.kind_mask(NETSET, GNETSET)
        self._memo: dict[tuple[str, SetRef], tuple[int, Any]] = {}
        # Only answers this book gives are kept: no growth across generations.
        same = previous is not None and previous.index.lineage is index.lineage
        self._previous = previous._memo if previous is not None and same else {}
        self._previous_index = previous.index if previous is not None and same else None

    def _entities(self, mask: int) -> list[Entity]:
        slots = self.index.slots
        return [e for e in (slots[i] for i in bits(mask)) if e is not None]

    def mask(self, ref: SetRef) -> int:
        return self.index.mask(parse(ref.selector))

    def _cached(self, what: str, ref: SetRef, mask: int) -> Any:
        key = (what, ref)
        got = self._memo.get(key) or self._previous.get(key)
        if got is None or got[0] != mask:
            return None
        self._memo[key] = got
        return got[1]

    def _delta(self, what: str, ref: SetRef, mask: int
               ) -> tuple[Any, list[Entity], list[Entity]] | None:
        """(last answer, entities added, entities removed) when few changed, else None."""
        prev = self._previous.get((what, ref))
        if prev is None or self._previous_index is None:
            return None
        plus, minus = mask & ~prev[0], prev[0] & ~mask
        if (plus | minus).bit_count() > 64:
            return None
        old_slots = self._previous_index.slots
        removed = [e for e in (old_slots[i] for i in bits(minus)) if e is not None]
        return prev[1], self._entities(plus), removed

    def _still_held(self, address: IPAddress, mask: int) -> bool:
        return bool(self.index.address_mask(address) & mask)

    def addresses(self, ref: SetRef) -> frozenset[IPAddress]:
        """``sel``: endpoint addresses of the ref's family."""
        m = self.mask(ref) & self._endpoint_mask
        got: frozenset[IPAddress] | None = self._cached("a", ref, m)
        if got is None:
            f = ref.family
            delta = self._delta("a", ref, m)
            if delta is not None:  # a few endpoints came or went: patch the last answer
                old, plus, minus = delta
                new = set(old)
                new.difference_update(a for e in minus for a in e.addresses
                                      if a.version == f and not self._still_held(a, m))
                new.update(a for e in plus for a in e.addresses if a.version == f)
                got = frozenset(new)
            else:
                got = frozenset(a for e in self._entities(m) for a in e.addresses
                                if a.version == f)
            self._memo[("a", ref)] = (m, got)
        return got

    def netset_nets(self, ref: SetRef) -> tuple[IPNetwork, ...]:
        """``sel``: nets of matching network sets, collapsed; ``nets``: the ref's own."""
        if ref.kind == "nets":
            return ref.nets
        m = self.mask(ref) & self._netset_mask
        if not m:
            return ()
        got: tuple[IPNetwork, ...] | None = self._cached("n", ref, m)
        if got is None:
            chosen = [n for e in self._entities(m) for n in e.nets if n.version == ref.family]
            got = tuple(ipaddress.collapse_addresses(chosen))  # type: ignore[type-var]
            self._memo[("n", ref)] = (m, got)
        return got

    def ports(self, ref: SetRef) -> frozenset[tuple[IPAddress, int]]:
        """``port``: (address, port) pairs."""
        m = self.mask(ref) & self._endpoint_mask
        got: frozenset[tuple[IPAddress, int]] | None = self._cached("p", ref, m)
        if got is None:
            got = self._patched_ports(ref, m)
            if got is None:
                got = frozenset(self._port_pairs(ref, self._entities(m)))
            self._memo[("p", ref)] = (m, got)
        return got

    def _port_pairs(self, ref: SetRef, entities: list[Entity]) -> set[tuple[IPAddress, int]]:
        names = set(ref.names)
        pairs: set[tuple[IPAddress, int]] = set()
        for e in entities:
            numbers = [p.port for p in e.ports if p.name in names
                       and _PORT_PROTOCOLS.get(p.protocol.upper()) == ref.protocol]
            if numbers:
                pairs.update((a, n) for a in e.addresses if a.version == ref.family
                             for n in numbers)
        return pairs

    def _patched_ports(self, ref: SetRef, m: int) -> frozenset[tuple[IPAddress, int]] | None:
        delta = self._delta("p", ref, m)
        if delta is None:
            return None
        old, plus, minus = delta
        gone = self._port_pairs(ref, minus)
        if any(self._still_held(a, m) for a, _ in gone):
            return None  # an address another member holds too: count afresh
        return frozenset((old - gone) | self._port_pairs(ref, plus))

    def contains(self, ref: SetRef, address: IPAddress, port: int | None = None) -> bool:
        if address.version != ref.family:
            return False
        if ref.kind == "port":
            return port is not None and (address, port) in self.ports(ref)
        if ref.kind == "sel" and address in self.addresses(ref):
            return True
        return any(address in net for net in self.netset_nets(ref))

    def describe(self, ref: SetRef) -> str:
        if ref.kind == "nets":
            return ", ".join(str(n) for n in ref.nets)
        if ref.kind == "port":
            return f"named port {'/'.join(ref.names)} of {ref.selector}"
        return f"selector {ref.selector}"
