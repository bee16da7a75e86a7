"""The calculation input: a frozen view of what the store says, for one moment.

A ``Snapshot`` is built from plain store lists (nodes, IPAM blocks, workload
endpoints of every node, pods, namespaces, and every other kind under
``others``, read with ``of(Kind)``) and never changes; every ``desired_*`` function
in ``tabby.calc`` takes one and does no I/O. Lookups that several functions
need (a node's address by family, an endpoint's pod) are small methods here.

``of(Kind)`` answers from an index of ``others`` by kind, made on first use (or
handed over by the agent's cache, which keeps its objects by kind anyway): a
pass asks for a dozen kinds, and with 10k services and their slices in
``others`` a scan per question cost milliseconds each. A kind's tuple is the
same object from one snapshot to the next while that kind did not change.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from tabby.model import IPAMBlock, Namespace, Node, Pod, Resource, WorkloadEndpoint

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
R = TypeVar("R", bound=Resource)


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: tuple[Node, ...] = ()
    blocks: tuple[IPAMBlock, ...] = ()
    endpoints: tuple[WorkloadEndpoint, ...] = ()
    pods: tuple[Pod, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    others: tuple[Resource, ...] = ()  # every other kind (policies, BGP config, services...)
    # ``others`` by kind, made on first use: not an input (replace() recomputes it)
    _kinds: Mapping[type, tuple[Resource, ...]] | None = field(
        default=None, init=False, compare=False, repr=False)

    @classmethod
    def with_kinds(cls, kinds: Mapping[type, tuple[Resource, ...]], **fields: tuple[Resource, ...]
                   ) -> Snapshot:
        """A snapshot whose ``others`` the caller already holds by kind (``kinds``: every
        kind in ``others`` -> its objects in ``others``' order; trusted, not checked)."""
        snapshot = cls(**fields)  # type: ignore[arg-type]
        object.__setattr__(snapshot, "_kinds", kinds)
        return snapshot

    @classmethod
    def build(cls, *, nodes: Iterable[Node] = (), blocks: Iterable[IPAMBlock] = (),
              endpoints: Iterable[WorkloadEndpoint] = (), pods: Iterable[Pod] = (),
              namespaces: Iterable[Namespace] = (), others: Iterable[Resource] = ()
              ) -> Snapshot:
        """Sort everything by name so equal inputs give equal snapshots."""
        rest = tuple(sorted(others, key=lambda o: (o.KIND.resource, o.meta.namespace,
                                                   o.meta.name)))
        # sorted by kind first, so each kind is one run (a kind is one class)
        return cls.with_kinds(
            {kind: tuple(run) for kind, run in itertools.groupby(rest, type)},
            nodes=tuple(sorted(nodes, key=lambda n: n.meta.name)),
            blocks=tuple(sorted(blocks, key=lambda b: b.meta.name)),
            endpoints=tuple(sorted(endpoints, key=lambda e: (e.meta.namespace, e.meta.name))),
            pods=tuple(sorted(pods, key=lambda p: (p.meta.namespace, p.meta.name))),
            namespaces=tuple(sorted(namespaces, key=lambda n: n.meta.name)),
            others=rest,
        )

    def of(self, kind: type[R]) -> tuple[R, ...]:
        """Every object of ``kind`` (sorted by namespace and name)."""
        core = {Node: self.nodes, IPAMBlock: self.blocks, WorkloadEndpoint: self.endpoints,
                Pod: self.pods, Namespace: self.namespaces}.get(kind)
        if core is not None:
            return core  # type: ignore[return-value]
        kinds = self._kinds
        if kinds is None:
            grouped: dict[type, list[Resource]] = {}
            for o in self.others:
                grouped.setdefault(type(o), []).append(o)
            kinds = {k: tuple(v) for k, v in grouped.items()}
            object.__setattr__(self, "_kinds", kinds)
        got = kinds.get(kind)
        if got is not None:
            return got  # type: ignore[return-value]
        if not any(issubclass(k, kind) for k in kinds):
            return ()
        return tuple(o for o in self.others if isinstance(o, kind))  # a base class asked

    def node(self, name: str) -> Node | None:
        for node in self.nodes:
            if node.meta.name == name:
                return node
        return None

    def node_address(self, name: str, version: int) -> IPAddress | None:
        """The node's BGP address of that family (``spec.bgp.ipv4Address``), if any."""
        node = self.node(name)
        return node.address(version) if node is not None else None

    def local_endpoints(self, node: str) -> tuple[WorkloadEndpoint, ...]:
        return tuple(e for e in self.endpoints if e.spec.node == node)

    def pod(self, namespace: str, name: str) -> Pod | None:
        for pod in self.pods:
            if pod.meta.namespace == namespace and pod.meta.name == name:
                return pod
        return None

    def namespace(self, name: str) -> Namespace | None:
        for ns in self.namespaces:
            if ns.meta.name == name:
                return ns
        return None
