"""One snapshot's policy, resolved: compiled policies, set membership, per-endpoint order.

``build_program(snapshot, node)`` is the pure core that both the nftables
compiler (for the node's own endpoints) and ``explain`` (for any endpoint,
``node=None``) start from::

    snapshot --entities--> LabelIndex --> SetBook        (who is in which set)
             --policies--> compile_policy (memoised per object) --> CompiledPolicy
             --> per endpoint and stage: the policy keys in evaluation order

Stages (Calico's): ``normal`` (workload endpoints; host endpoints for traffic
to and from the host), ``forward`` (host endpoints, traffic routed through
them: ``applyOnForward`` policies), ``predNAT`` (host endpoint ingress before
DNAT) and ``untracked`` (``doNotTrack``, raw table, both directions).
Workload endpoints only have the normal stage.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from tabby.calc.snapshot import Snapshot
from tabby.model import (
    FelixConfiguration,
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    HostEndpoint,
    K8sNetworkPolicy,
    NetworkPolicy,
    NetworkSet,
    Resource,
    WorkloadEndpoint,
)
from tabby.model.felixconfig import ProtoPort, failsafe_ports
from tabby.policy.compile import CompiledPolicy, compile_policy
from tabby.policy.convert import from_resource
from tabby.policy.index import (
    HEP,
    WEP,
    Entity,
    LabelIndex,
    bits,
    gnetset_entity,
    hep_entity,
    namespace_labels,
    netset_entity,
    wep_entity,
)
from tabby.policy.sets import SetBook

STAGES = ("normal", "forward", "predNAT", "untracked")
DIRECTIONS = ("ingress", "egress")


@dataclass(frozen=True, slots=True)
class EndpointPolicies:
    """The policy keys that apply to one endpoint, per (stage, direction), in order."""

    entity: Entity
    lists: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def get(self, stage: str, direction: str) -> tuple[str, ...]:
        return self.lists.get((stage, direction), ())


@dataclass(frozen=True, slots=True)
class PolicyProgram:
    node: str | None
    index: LabelIndex
    book: SetBook
    compiled: Mapping[str, CompiledPolicy]  # by policy key
    endpoints: Mapping[str, EndpointPolicies]  # by entity key ("ns/name" or hep name)
    failsafe_in: tuple[ProtoPort, ...] = ()  # for ``node``
    failsafe_out: tuple[ProtoPort, ...] = ()
    felix: tuple[FelixConfiguration, ...] = ()

    def failsafe(self, node: str) -> tuple[tuple[ProtoPort, ...], tuple[ProtoPort, ...]]:
        """(inbound, outbound) failsafe ports of ``node``."""
        return failsafe_ports(self.felix, node)

    def endpoint_by_address(self, address: object) -> Entity | None:
        for e in self.index.entities:
            if e.is_endpoint and address in e.addresses:
                return e
        return None


def entities_of(snapshot: Snapshot) -> tuple[Entity, ...]:
    """Every entity of the snapshot; an unchanged object gives the same Entity object."""
    ns_labels = namespace_labels(snapshot.namespaces)
    ns_keys = {name: tuple(sorted(labels.items())) for name, labels in ns_labels.items()}
    memo = _ENTITIES.items
    get = memo.get
    fresh: dict[int, tuple[object, object, Entity]] = {}
    out: list[Entity] = []
    for ep in snapshot.endpoints:  # the bulk: a tight loop
        key = id(ep)
        got = get(key)
        ns_key = ns_keys.get(ep.meta.namespace)
        if got is None or got[0] is not ep or got[1] != ns_key:
            got = (ep, ns_key, wep_entity(ep, ns_labels))
        fresh[key] = got
        out.append(got[2])
    others: list[tuple[Resource, str]] = [
        *((h, "") for h in snapshot.of(HostEndpoint)),
        *((n, n.meta.namespace) for n in snapshot.of(NetworkSet)),
        *((g, "") for g in snapshot.of(GlobalNetworkSet))]
    for obj, ns in others:
        ns_key = ns_keys.get(ns) if ns else None
        got = get(id(obj))
        if got is None or got[0] is not obj or got[1] != ns_key:
            got = (obj, ns_key, _entity(obj, ns_labels))
        fresh[id(obj)] = got
        out.append(got[2])
    _ENTITIES.items = fresh
    return tuple(out)


def _entity(obj: object, ns_labels: dict[str, dict[str, str]]) -> Entity:
    if isinstance(obj, WorkloadEndpoint):
        return wep_entity(obj, ns_labels)
    if isinstance(obj, HostEndpoint):
        return hep_entity(obj)
    if isinstance(obj, NetworkSet):
        return netset_entity(obj, ns_labels)
    assert isinstance(obj, GlobalNetworkSet)
    return gnetset_entity(obj)


class _Entities:
    """Entities by model object (id, with the object kept alive) from the last pass."""

    def __init__(self) -> None:
        self.items: dict[int, tuple[object, object, Entity]] = {}


class _Indexes:
    """The last index and set book: the next pass evolves them by difference."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.index: LabelIndex | None = None
        self.book: SetBook | None = None

    def next(self, entities: tuple[Entity, ...]) -> tuple[LabelIndex, SetBook]:
        with self.lock:
            index = self.index.evolve(entities) if self.index is not None \
                else LabelIndex(entities)
            book = SetBook(index, self.book)
            self.index, self.book = index, book
            return index, book


class _Applied:
    """Per compiled policy (by id, kept alive): its applied mask and that mask's bits."""

    def __init__(self) -> None:
        self.previous: dict[int, tuple[CompiledPolicy, int, list[int]]] = {}
        self.current: dict[int, tuple[CompiledPolicy, int, list[int]]] = {}


_ENTITIES = _Entities()
_INDEXES = _Indexes()
_APPLIED = _Applied()


def policies_of(snapshot: Snapshot) -> list[CompiledPolicy]:
    """Every policy of the snapshot, compiled, in evaluation order."""
    objs: list[Resource] = [*snapshot.of(K8sNetworkPolicy), *snapshot.of(NetworkPolicy),
                            *snapshot.of(GlobalNetworkPolicy)]
    out = [_compiled(obj) for obj in objs]
    _COMPILED.prune({id(o) for o in objs})
    found = [c for c in out if c is not None]
    found.sort(key=lambda c: c.policy.sort_key)
    return found


def stages_of(c: CompiledPolicy) -> tuple[str, ...]:
    spec = c.policy.spec
    if spec.do_not_track:
        return ("untracked",)
    if spec.pre_dnat:
        return ("predNAT",)
    return ("normal", "forward") if spec.apply_on_forward else ("normal",)


def build_program(snapshot: Snapshot, node: str | None) -> PolicyProgram:
    index, book = _INDEXES.next(entities_of(snapshot))
    compiled = policies_of(snapshot)
    ours = index.kind_mask(WEP, HEP)
    if node is not None:
        ours &= index.node_mask(node)
    slots = index.slots
    lists: dict[int, dict[tuple[str, str], list[str]]] = {i: {} for i in bits(ours)}
    wep_mask = index.kind_mask(WEP)
    applied_bits = _APPLIED.previous
    for c in compiled:
        applied = index.mask(c.applies_to) & ours
        if not applied:
            continue
        got = applied_bits.get(id(c))
        if got is None or got[0] is not c or got[1] != applied:
            got = (c, applied, bits(applied))
        _APPLIED.current[id(c)] = got
        stages = stages_of(c)
        directions = [d for d in DIRECTIONS if c.has_type(d)]
        for i in got[2]:
            is_wep = bool(wep_mask >> i & 1)
            for stage in stages:
                if is_wep and stage != "normal":
                    continue
                for d in directions:
                    if stage == "predNAT" and d == "egress":
                        continue
                    lists[i].setdefault((stage, d), []).append(c.key)
    endpoints = {}
    for i, by_stage in lists.items():
        e = slots[i]
        assert e is not None
        endpoints[e.key] = EndpointPolicies(e, {k: tuple(v) for k, v in by_stage.items()})
    _APPLIED.previous, _APPLIED.current = _APPLIED.current, {}
    felix = snapshot.of(FelixConfiguration)
    fs_in, fs_out = failsafe_ports(felix, node or "")
    return PolicyProgram(node, index, book, {c.key: c for c in compiled},
                         endpoints, fs_in, fs_out, felix)


class _Memo:
    """compile_policy per policy object (objects are immutable; the cache keeps them alive)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[int, tuple[Resource, CompiledPolicy | None]] = {}

    def get(self, obj: Resource) -> tuple[bool, CompiledPolicy | None]:
        got = self.items.get(id(obj))
        if got is not None and got[0] is obj:
            return True, got[1]
        return False, None

    def put(self, obj: Resource, value: CompiledPolicy | None) -> None:
        with self.lock:
            self.items[id(obj)] = (obj, value)

    def prune(self, alive: set[int]) -> None:
        with self.lock:
            if len(self.items) > 2 * len(alive) + 64:
                self.items = {k: v for k, v in self.items.items() if k in alive}


_COMPILED = _Memo()


def _compiled(obj: Resource) -> CompiledPolicy | None:
    hit, value = _COMPILED.get(obj)
    if hit:
        return value
    policy = from_resource(obj)
    value = compile_policy(policy) if policy is not None else None
    _COMPILED.put(obj, value)
    return value


def reset_caches() -> None:
    """Forget every memo (tests compare incremental results with fresh ones)."""
    global _ENTITIES, _INDEXES, _APPLIED, _COMPILED
    _ENTITIES, _INDEXES, _APPLIED, _COMPILED = _Entities(), _Indexes(), _Applied(), _Memo()
