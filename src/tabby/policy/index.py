"""Everything a selector can match, and a label index that answers selectors fast.

An ``Entity`` is one labelled thing with addresses: a workload endpoint (any
node), a host endpoint, a network set or a global network set. Its labels are
Calico's combined view, so one selector evaluation covers every scope::

    app=web, projectcalico.org/namespace=team,      the endpoint's own labels
    projectcalico.org/orchestrator=k8s,             (pods only)
    projectcalico.org/serviceaccount=default,       (pods only)
    pcns.<key>=<value> ..., pcns.projectcalico.org/name=team   its namespace's labels
    pcsa.<key>=<value> ..., pcsa.projectcalico.org/name=default
                                                    its service account's labels (pods only)

``scoped()`` rewrites a namespace or service-account selector into that
space (``pcns.`` / ``pcsa.`` prefixes; ``global()`` as a namespace selector
means "not namespaced"). ``LabelIndex.mask(selector)`` evaluates a selector
over every entity at once with integer bitmasks (bit i = entity i), from an
inverted index of (key, value) pairs: equality and ``has`` are lookups,
``in`` a union, ``!`` a complement, so 1000 selectors over 10000 entities
cost milliseconds rather than ten million evaluations.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tabby import selector as sel
from tabby.model import HostEndpoint, Namespace, WorkloadEndpoint
from tabby.model.networkset import GlobalNetworkSet, NetworkSet
from tabby.model.workloadendpoint import EndpointPort

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAMESPACE = "projectcalico.org/namespace"
ORCHESTRATOR = "projectcalico.org/orchestrator"
SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
NAME = "projectcalico.org/name"
NS_PREFIX = "pcns."
SA_PREFIX = "pcsa."

WEP, HEP, NETSET, GNETSET = "wep", "hep", "netset", "gnetset"


@dataclass(frozen=True, slots=True)
class Entity:
    kind: str  # wep | hep | netset | gnetset
    key: str  # "ns/name" (wep, netset) or "name" (hep, gnetset)
    labels: Mapping[str, str]
    namespace: str = ""
    node: str = ""
    interface: str = ""
    addresses: tuple[IPAddress, ...] = ()
    nets: tuple[IPNetwork, ...] = ()  # network sets
    ports: tuple[EndpointPort, ...] = ()  # named ports
    name: str = ""  # pod name (wep), object name otherwise
    source: object = None  # the model object

    @property
    def ref(self) -> str:
        """How people name it: ``ns/pod``, ``hostendpoint/name``, ``networkset/ns/name``."""
        if self.kind == WEP:
            return f"{self.namespace}/{self.name}"
        return {HEP: "hostendpoint", NETSET: "networkset", GNETSET: "globalnetworkset"
                }[self.kind] + "/" + self.key

    @property
    def is_endpoint(self) -> bool:
        return self.kind in (WEP, HEP)


def namespace_labels(namespaces: Iterable[Namespace]) -> dict[str, dict[str, str]]:
    return {n.meta.name: dict(n.meta.labels) for n in namespaces}


_NS_NAME, _SA_NAME = NS_PREFIX + NAME, SA_PREFIX + NAME


def _combined(own: Mapping[str, str], ns: str, ns_labels: Mapping[str, str] | None,
              sa: str | None, sa_labels: Mapping[str, str] | None = None) -> dict[str, str]:
    # Prefixed keys are interned: 10k entities share one copy of each, not 10k.
    labels = dict(own)
    if ns:
        labels[NAMESPACE] = ns
        for k, v in (ns_labels or {}).items():
            labels[sys.intern(NS_PREFIX + k)] = v
        labels[_NS_NAME] = ns
    if sa is not None:
        labels[SERVICE_ACCOUNT] = sa
        for k, v in (sa_labels or {}).items():
            labels[sys.intern(SA_PREFIX + k)] = v
        labels[_SA_NAME] = sa
    return labels


class LabelSets:
    """One dict per distinct label set, shared by the entities that carry it (a workload's
    pods have equal labels: 10k endpoints hold a few hundred sets). Entities never change
    their labels, so sharing is safe; ``keep`` drops the sets no entity holds."""

    def __init__(self) -> None:
        self._held: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}

    def shared(self, labels: dict[str, str]) -> dict[str, str]:
        return self._held.setdefault(tuple(labels.items()), labels)

    def keep(self, alive: Iterable[Entity]) -> None:
        held, self._held = self._held, {}
        for e in alive:
            key = tuple(e.labels.items())
            got = held.get(key)
            if got is e.labels:
                self._held[key] = got


def wep_entity(ep: WorkloadEndpoint, ns_labels: Mapping[str, Mapping[str, str]],
               sa_labels: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
               label_sets: LabelSets | None = None) -> Entity:
    """``sa_labels``: (namespace, name) -> a ServiceAccount's labels (none: no labels);
    ``label_sets``: where equal label sets are shared (none: each entity its own)."""
    ns = ep.meta.namespace
    labels_of_ns = ns_labels.get(ns)
    if labels_of_ns is None:
        labels_of_ns = dict(ep.spec.namespace_labels)
    sa = ep.spec.service_account_name or "default"
    labels_of_sa = (sa_labels or {}).get((ns, sa))
    labels = _combined(ep.meta.labels, ns, labels_of_ns, sa, labels_of_sa)
    return Entity(WEP, f"{ns}/{ep.meta.name}",
                  label_sets.shared(labels) if label_sets is not None else labels,
                  namespace=ns, node=ep.spec.node, interface=ep.spec.interface_name,
                  addresses=tuple(n.network_address for n in ep.spec.ip_networks),
                  ports=ep.spec.ports, name=ep.spec.pod or ep.meta.name, source=ep)


def hep_entity(hep: HostEndpoint) -> Entity:
    return Entity(HEP, hep.meta.name, dict(hep.meta.labels), node=hep.spec.node,
                  interface=hep.spec.interface_name, addresses=hep.spec.expected_ips,
                  ports=hep.spec.ports, name=hep.meta.name, source=hep)


def netset_entity(ns: NetworkSet, ns_labels: Mapping[str, Mapping[str, str]]) -> Entity:
    namespace = ns.meta.namespace
    return Entity(NETSET, f"{namespace}/{ns.meta.name}",
                  _combined(ns.meta.labels, namespace, ns_labels.get(namespace, {}), None),
                  namespace=namespace, nets=ns.nets, name=ns.meta.name, source=ns)


def gnetset_entity(gs: GlobalNetworkSet) -> Entity:
    return Entity(GNETSET, gs.meta.name, dict(gs.meta.labels), nets=gs.nets,
                  name=gs.meta.name, source=gs)


# -- selector rewriting ---------------------------------------------------------------

def prefixed(s: sel.Selector, prefix: str) -> sel.Selector:
    """``s`` with every label key prefixed (namespace or service-account space)."""
    if isinstance(s, sel.Has | sel.Compare | sel.In):
        return dataclasses.replace(s, key=prefix + s.key)
    if isinstance(s, sel.Not):
        return sel.Not(prefixed(s.inner, prefix))
    if isinstance(s, sel.And):
        return sel.And(tuple(prefixed(p, prefix) for p in s.parts))
    if isinstance(s, sel.Or):
        return sel.Or(tuple(prefixed(p, prefix) for p in s.parts))
    return s


def namespace_scope(text: str) -> sel.Selector:
    """A namespace selector over entities: ``global()`` selects the non-namespaced."""
    parsed = sel.parse(text)
    if isinstance(parsed, sel.Global):
        return sel.Not(sel.Has(NAMESPACE))
    return sel.And((sel.Has(NAMESPACE), prefixed(parsed, NS_PREFIX)))


def conjunction(*parts: sel.Selector | None) -> sel.Selector:
    """AND of the given selectors, dropping ``all()`` and None; ``all()`` if none remain."""
    flat: list[sel.Selector] = []
    for part in parts:
        if part is None or isinstance(part, sel.All):
            continue
        if isinstance(part, sel.And):
            flat.extend(part.parts)
        else:
            flat.append(part)
    unique = list(dict.fromkeys(flat))
    if not unique:
        return sel.All()
    return unique[0] if len(unique) == 1 else sel.And(tuple(unique))


def equals(key: str, value: str) -> sel.Selector:
    return sel.Compare(key, "==", value)


# -- the index ---------------------------------------------------------------------------

KIND_KEY = "\x00kind"  # pseudo labels no selector can name: kinds and nodes
NODE_KEY = "\x00node"


def _pairs(e: Entity) -> list[tuple[str, str]]:
    return [*e.labels.items(), (KIND_KEY, e.kind), (NODE_KEY, e.node)]


class LabelIndex:
    """Selectors evaluated over a list of entities, as bitmasks (bit i = ``slots[i]``).

    ``evolve(entities)`` returns the index of a new entity list by difference
    (entities are compared by identity): removed ones empty their slot, new
    ones take new slots, every memoised selector mask gets those bits updated.
    Slots are never reused within a ``lineage`` (indexes evolved from one
    build), so there an unchanged mask means the same entities. Large changes,
    or too many empty slots, rebuild (a new lineage).
    """

    def __init__(self, entities: tuple[Entity, ...]) -> None:
        self.slots: tuple[Entity | None, ...] = entities
        self.all = (1 << len(entities)) - 1
        self._eq: dict[tuple[str, str], int] = {}
        self._has: dict[str, int] = {}
        self._values: dict[str, set[str]] = {}
        self._memo: dict[sel.Selector, int] = {}
        self._slot_of: dict[int, int] = {id(e): i for i, e in enumerate(entities)}
        # address -> the slot holding it (an int: most addresses have one) or slots
        self._addr: dict[IPAddress, int | tuple[int, ...]] = {}
        self._live: tuple[Entity, ...] | None = entities
        self.lineage = object()
        self._build()

    def _build(self) -> None:
        eq: dict[tuple[str, str], list[int]] = {}
        has: dict[str, list[int]] = {}
        for i, e in enumerate(self.slots):
            assert e is not None
            for k, v in _pairs(e):
                eq.setdefault((k, v), []).append(i)
                has.setdefault(k, []).append(i)
        addr: dict[IPAddress, list[int]] = {}
        for i, e in enumerate(self.slots):
            assert e is not None
            for a in e.addresses:
                addr.setdefault(a, []).append(i)
        self._addr = {a: ix[0] if len(ix) == 1 else tuple(ix) for a, ix in addr.items()}
        size = len(self.slots)
        self._eq = {kv: to_mask(ix, size) for kv, ix in eq.items()}
        self._has = {k: to_mask(ix, size) for k, ix in has.items()}
        for k, v in eq:
            self._values.setdefault(k, set()).add(v)

    @property
    def entities(self) -> tuple[Entity, ...]:
        """The live entities (in slot order)."""
        if self._live is None:
            self._live = tuple(e for e in self.slots if e is not None)
        return self._live

    def evolve(self, entities: tuple[Entity, ...]) -> LabelIndex:
        ids = list(map(id, entities))
        slot_of = self._slot_of
        new_ids = set(ids)  # set operations, in C: proportional work is the diff's
        fresh = new_ids.difference(slot_of)
        removed = sorted(map(slot_of.__getitem__, slot_of.keys() - new_ids))
        if not removed and not fresh:
            return self
        added = list(itertools.compress(entities, map(fresh.__contains__, ids)))
        if (len(removed) + len(added) > max(64, len(entities) // 8)
                or len(self.slots) + len(added) > 2 * len(entities) + 64):
            return LabelIndex(entities)
        new = LabelIndex.__new__(LabelIndex)
        slots = list(self.slots)
        new._eq, new._has = dict(self._eq), dict(self._has)
        new._values = {k: set(v) for k, v in self._values.items()}
        new._slot_of = dict(self._slot_of)
        new._addr = dict(self._addr)
        new._live, new.lineage = None, self.lineage
        clear = 0
        for slot in removed:
            e = slots[slot]
            assert e is not None
            clear |= 1 << slot
            for k, v in _pairs(e):
                new._eq[(k, v)] &= ~(1 << slot)
                new._has[k] &= ~(1 << slot)
            del new._slot_of[id(e)]
            for a in e.addresses:
                left = tuple(i for i in _slots(new._addr.get(a, ())) if i != slot)
                if left:
                    new._addr[a] = left[0] if len(left) == 1 else left
                else:
                    new._addr.pop(a, None)
            slots[slot] = None
        placed: list[tuple[int, Entity]] = []
        for e in added:
            slot = len(slots)
            slots.append(e)
            new._slot_of[id(e)] = slot
            placed.append((slot, e))
            for a in e.addresses:
                held = new._addr.get(a)
                new._addr[a] = slot if held is None else (*_slots(held), slot)
            for k, v in _pairs(e):
                new._eq[(k, v)] = new._eq.get((k, v), 0) | 1 << slot
                new._has[k] = new._has.get(k, 0) | 1 << slot
                new._values.setdefault(k, set()).add(v)
        new.slots = tuple(slots)
        new.all = (self.all & ~clear) | sum(1 << slot for slot, _ in placed)
        new._memo = {}
        for selector, m in self._memo.items():
            m &= ~clear
            for slot, e in placed:
                if selector.matches(e.labels):
                    m |= 1 << slot
            new._memo[selector] = m
        return new

    def kind_mask(self, *kinds: str) -> int:
        out = 0
        for k in kinds:
            out |= self._eq.get((KIND_KEY, k), 0)
        return out

    def node_mask(self, node: str) -> int:
        return self._eq.get((NODE_KEY, node), 0)

    def address_mask(self, address: IPAddress) -> int:
        """The entities holding ``address`` (endpoints' addresses, not network sets' nets)."""
        m = 0
        for i in _slots(self._addr.get(address, ())):
            m |= 1 << i
        return m

    def mask(self, s: sel.Selector) -> int:
        got = self._memo.get(s)
        if got is None:
            got = self._eval(s)
            self._memo[s] = got
        return got

    def _eval(self, s: sel.Selector) -> int:
        if isinstance(s, sel.All | sel.Global):
            return self.all
        if isinstance(s, sel.Has):
            return self._has.get(s.key, 0)
        if isinstance(s, sel.Compare):
            return self._compare(s)
        if isinstance(s, sel.In):
            m = 0
            for v in s.values:
                m |= self._eq.get((s.key, v), 0)
            return self.all & ~m if s.negate else m
        if isinstance(s, sel.Not):
            return self.all & ~self.mask(s.inner)
        if isinstance(s, sel.And):
            m = self.all
            for p in s.parts:
                m &= self.mask(p)
                if not m:
                    break
            return m
        m = 0
        for p in s.parts:
            m |= self.mask(p)
        return m

    def _compare(self, s: sel.Compare) -> int:
        if s.op == "==":
            return self._eq.get((s.key, s.value), 0)
        if s.op == "!=":
            return self.all & ~self._eq.get((s.key, s.value), 0)
        m = 0
        for v in self._values.get(s.key, ()):
            if s.matches({s.key: v}):
                m |= self._eq[(s.key, v)]
        return m

    def members(self, mask: int) -> list[Entity]:
        return [e for e in (self.slots[i] for i in bits(mask)) if e is not None]


def _slots(held: int | tuple[int, ...]) -> tuple[int, ...]:
    return (held,) if isinstance(held, int) else held


def to_mask(indices: list[int], size: int) -> int:
    if len(indices) < 48:
        m = 0
        for i in indices:
            m |= 1 << i
        return m
    buf = bytearray((size + 7) // 8)
    for i in indices:
        buf[i >> 3] |= 1 << (i & 7)
    return int.from_bytes(buf, "little")


def bits(mask: int) -> list[int]:
    """The indices of the set bits of ``mask``, ascending."""
    if not mask:
        return []
    if mask.bit_count() < 32:  # sparse: lowest bit at a time beats a string scan
        out = []
        while mask:
            low = mask & -mask
            out.append(low.bit_length() - 1)
            mask ^= low
        return out
    text = bin(mask)[:1:-1]  # least significant bit first
    out = []
    pos = text.find("1")
    while pos >= 0:
        out.append(pos)
        pos = text.find("1", pos + 1)
    return out
