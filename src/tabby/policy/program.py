"""One snapshot's policy, resolved: compiled policies, set membership, per-endpoint order.

``ProgramBuilder().build(snapshot, node)`` is the pure core that both the
nftables compiler (for the node's own endpoints, a long-lived builder that
reuses last pass's work) and ``explain`` (any endpoint, ``node=None``, a one-off
``build_program``) start from::

    snapshot --entities--> LabelIndex --> SetBook        (who is in which set)
             --policies--> compile_policy (memoised per object) --> CompiledPolicy
             --> per endpoint and stage: the policy keys in evaluation order
                 (tiers first, ``tabby.policy.tiers``; ``PolicyProgram.groups`` cuts
                 them into one run per tier)

Stages (Calico's): ``normal`` (workload endpoints; host endpoints for traffic
to and from the host), ``forward`` (host endpoints, traffic routed through
them: ``applyOnForward`` policies), ``predNAT`` (host endpoint ingress before
DNAT) and ``untracked`` (``doNotTrack``, raw table, both directions).
Workload endpoints only have the normal stage.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tabby.model import (
    FelixConfiguration,
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    HostEndpoint,
    K8sNetworkPolicy,
    NetworkPolicy,
    NetworkSet,
    Resource,
    Tier,
    WorkloadEndpoint,
)
from tabby.model.felixconfig import ProtoPort, failsafe_ports
from tabby.model.serviceaccount import ServiceAccount, account_labels
from tabby.policy.clusternetworkpolicy import ClusterPolicies  # hook: CNP (see policies_of)
from tabby.policy.compile import CompiledPolicy, compile_policy
from tabby.policy.convert import from_resource
from tabby.policy.index import (
    HEP,
    WEP,
    Entity,
    LabelIndex,
    LabelSets,
    bits,
    gnetset_entity,
    hep_entity,
    namespace_labels,
    netset_entity,
    wep_entity,
)
from tabby.policy.sets import SetBook
from tabby.policy.tiers import TierGroup, TierTable, group_by_tier
from tabby.snapshot import Snapshot

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
    tiers: TierTable = field(default_factory=TierTable)

    def groups(self, keys: tuple[str, ...]) -> tuple[TierGroup, ...]:
        """An endpoint's policy keys (one stage and direction) in runs of one tier."""
        return group_by_tier(keys, self.compiled, self.tiers)

    def failsafe(self, node: str) -> tuple[tuple[ProtoPort, ...], tuple[ProtoPort, ...]]:
        """(inbound, outbound) failsafe ports of ``node``."""
        return failsafe_ports(self.felix, node)

    def endpoint_by_address(self, address: object) -> Entity | None:
        for e in self.index.entities:
            if e.is_endpoint and address in e.addresses:
                return e
        return None


class ProgramBuilder:
    """Builds one node's ``PolicyProgram`` pass after pass, reusing what did not change.

    Every memo lives here, as this object's state: the entity per model object, the
    label index and set book (evolved by difference), each policy's compilation and
    applied mask, the evaluation order. A fresh builder fed the same snapshot gives an
    equal program (tests/unit/test_calc_node.py replays random sequences to check).
    Objects are immutable, so a memo keyed by identity keeps the object alive with it.
    """

    def __init__(self) -> None:
        self._entities = _Entities()
        self._indexes = _Indexes()
        self._applied = _Applied()
        self._compiled = _Memo()
        self._order = _Order()
        self._cluster = ClusterPolicies()  # ClusterNetworkPolicy's memo (its own module)

    def build(self, snapshot: Snapshot, node: str | None) -> PolicyProgram:
        index, book = self._indexes.next(self.entities_of(snapshot))
        tiers = TierTable(snapshot.of(Tier))
        compiled = self.policies_of(snapshot, tiers)
        return _program(snapshot, node, index, book, compiled, self._applied, tiers)

    def entities_of(self, snapshot: Snapshot) -> tuple[Entity, ...]:
        """Every entity of the snapshot; an unchanged object gives the same Entity object."""
        ns_labels = namespace_labels(snapshot.namespaces)
        ns_keys = {name: tuple(sorted(labels.items())) for name, labels in ns_labels.items()}
        sa_labels = account_labels(snapshot.of(ServiceAccount))
        sa_keys = {k: tuple(sorted(v.items())) for k, v in sa_labels.items() if v}
        memo = self._entities
        if ns_keys != memo.ns_keys or sa_keys != memo.sa_keys:
            # namespace or service account labels changed: every entity afresh
            memo.items, memo.ns_keys, memo.sa_keys = {}, ns_keys, sa_keys
            memo.labels = LabelSets()
        items = memo.items
        # The bulk, endpoints, in C: look every one up by id (an entry keeps its object
        # alive, so an id found is that object's), compute only the misses.
        endpoints = snapshot.endpoints
        ids = list(map(id, endpoints))
        found: list[Any] = list(map(items.get, ids))
        if None in found:
            for pos, got in enumerate(found):
                if got is None:
                    ep = endpoints[pos]
                    found[pos] = items[ids[pos]] = (ep, wep_entity(ep, ns_labels, sa_labels,
                                                                   memo.labels))
        out: list[Entity] = list(map(_SECOND, found))
        others: list[Resource] = [*snapshot.of(HostEndpoint), *snapshot.of(NetworkSet),
                                  *snapshot.of(GlobalNetworkSet)]
        for obj in others:
            got = items.get(id(obj))
            if got is None:
                got = items[id(obj)] = (obj, _entity(obj, ns_labels))
            out.append(got[1])
        if len(items) > 2 * len(out) + 64:  # forget objects no longer in the snapshot
            alive = set(ids)
            alive.update(map(id, others))
            memo.items = {k: v for k, v in items.items() if k in alive}
            memo.labels.keep(out)
        return tuple(out)

    def policies_of(self, snapshot: Snapshot, tiers: TierTable) -> list[CompiledPolicy]:
        """Every policy of the snapshot, compiled, in evaluation order: by tier (order,
        then name), then by order within the tier, then by key."""
        objs: list[Resource] = [*snapshot.of(K8sNetworkPolicy), *snapshot.of(NetworkPolicy),
                                *snapshot.of(GlobalNetworkPolicy)]
        out = [self._compiled.compiled(obj) for obj in objs]
        self._compiled.prune({id(o) for o in objs})
        # Hook: ClusterNetworkPolicies, compiled by tabby.policy.clusternetworkpolicy (their
        # nodes peers resolve against the snapshot's Nodes, so they are not from_resource's).
        out += self._cluster.compiled(snapshot)
        found = [c for c in out if c is not None]
        order = self._order
        if (order.tiers == tiers and len(order.last) == len(found)
                and all(map(operator.is_, order.last, found))):
            return list(order.ordered)  # the same policies and tiers: the same order
        ordered = sorted(found, key=lambda c: (tiers.info(c.tier).sort_key,
                                               c.policy.sort_key))
        order.last, order.ordered, order.tiers = tuple(found), tuple(ordered), tiers
        return ordered


def build_program(snapshot: Snapshot, node: str | None) -> PolicyProgram:
    """A one-off program (``explain``, the CLI): a fresh builder, no memory of other calls."""
    return ProgramBuilder().build(snapshot, node)


_SECOND = operator.itemgetter(1)


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
        self.items: dict[int, tuple[object, Entity]] = {}
        self.ns_keys: dict[str, tuple[tuple[str, str], ...]] | None = None
        self.sa_keys: dict[tuple[str, str], tuple[tuple[str, str], ...]] | None = None
        self.labels = LabelSets()  # equal label sets shared (tabby.policy.index)


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


class _Order:
    """Last pass's compiled policies (as found) and their evaluation order."""

    def __init__(self) -> None:
        self.last: tuple[CompiledPolicy, ...] = ()
        self.ordered: tuple[CompiledPolicy, ...] = ()
        self.tiers: TierTable | None = None


def stages_of(c: CompiledPolicy) -> tuple[str, ...]:
    spec = c.policy.spec
    if spec.do_not_track:
        return ("untracked",)
    if spec.pre_dnat:
        return ("predNAT",)
    return ("normal", "forward") if spec.apply_on_forward else ("normal",)


def _program(snapshot: Snapshot, node: str | None, index: LabelIndex, book: SetBook,
             compiled: list[CompiledPolicy], memo: _Applied, tiers: TierTable
             ) -> PolicyProgram:
    ours = index.kind_mask(WEP, HEP)
    if node is not None:
        ours &= index.node_mask(node)
    slots = index.slots
    lists: dict[int, dict[tuple[str, str], list[str]]] = {i: {} for i in bits(ours)}
    wep_mask = index.kind_mask(WEP)
    applied_bits = memo.previous
    for c in compiled:
        applied = index.mask(c.applies_to) & ours
        if not applied:
            continue
        got = applied_bits.get(id(c))
        if got is None or got[0] is not c or got[1] != applied:
            got = (c, applied, bits(applied))
        memo.current[id(c)] = got
        key = c.key
        stages = stages_of(c)
        directions = [d for d in DIRECTIONS if c.has_type(d)]
        pairs = [(stage, d) for stage in stages for d in directions
                 if not (stage == "predNAT" and d == "egress")]
        wep_pairs = [(stage, d) for stage, d in pairs if stage == "normal"]
        for i in got[2]:
            by_stage = lists[i]
            for pair in (wep_pairs if wep_mask >> i & 1 else pairs):
                got_list = by_stage.get(pair)
                if got_list is None:
                    by_stage[pair] = [key]
                else:
                    got_list.append(key)
    endpoints = {}
    for i, by_stage in lists.items():
        e = slots[i]
        assert e is not None
        endpoints[e.key] = EndpointPolicies(e, {k: tuple(v) for k, v in by_stage.items()})
    memo.previous, memo.current = memo.current, {}
    felix = snapshot.of(FelixConfiguration)
    fs_in, fs_out = failsafe_ports(felix, node or "")
    return PolicyProgram(node, index, book, {c.key: c for c in compiled},
                         endpoints, fs_in, fs_out, felix, tiers)


class _Memo:
    """compile_policy per policy object (objects are immutable; the memo keeps them alive)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[int, tuple[Resource, CompiledPolicy | None]] = {}

    def compiled(self, obj: Resource) -> CompiledPolicy | None:
        got = self.items.get(id(obj))
        if got is not None and got[0] is obj:
            return got[1]
        policy = from_resource(obj)
        value = compile_policy(policy) if policy is not None else None
        with self.lock:
            self.items[id(obj)] = (obj, value)
        return value

    def prune(self, alive: set[int]) -> None:
        with self.lock:
            if len(self.items) > 2 * len(alive) + 64:
                self.items = {k: v for k, v in self.items.items() if k in alive}
