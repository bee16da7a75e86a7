"""The calculation input: a frozen view of what the store says, for one moment.

A ``Snapshot`` is built from plain store lists (nodes, IPAM blocks, workload
endpoints of every node, pods, namespaces, and every other kind under
``others``, read with ``of(Kind)``) and never changes; every ``desired_*`` function
in ``tabby.calc`` takes one and does no I/O. Lookups that several functions
need (a node's address by family, an endpoint's pod) are small methods here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
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

    @classmethod
    def build(cls, *, nodes: Iterable[Node] = (), blocks: Iterable[IPAMBlock] = (),
              endpoints: Iterable[WorkloadEndpoint] = (), pods: Iterable[Pod] = (),
              namespaces: Iterable[Namespace] = (), others: Iterable[Resource] = ()
              ) -> Snapshot:
        """Sort everything by name so equal inputs give equal snapshots."""
        return cls(
            nodes=tuple(sorted(nodes, key=lambda n: n.meta.name)),
            blocks=tuple(sorted(blocks, key=lambda b: b.meta.name)),
            endpoints=tuple(sorted(endpoints, key=lambda e: (e.meta.namespace, e.meta.name))),
            pods=tuple(sorted(pods, key=lambda p: (p.meta.namespace, p.meta.name))),
            namespaces=tuple(sorted(namespaces, key=lambda n: n.meta.name)),
            others=tuple(sorted(others, key=lambda o: (o.KIND.resource, o.meta.namespace,
                                                       o.meta.name))),
        )

    def of(self, kind: type[R]) -> tuple[R, ...]:
        """Every object of ``kind`` (sorted by namespace and name)."""
        core = {Node: self.nodes, IPAMBlock: self.blocks, WorkloadEndpoint: self.endpoints,
                Pod: self.pods, Namespace: self.namespaces}.get(kind)
        if core is not None:
            return core  # type: ignore[return-value]
        return tuple(o for o in self.others if isinstance(o, kind))

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
