"""The agent's view of the store: list once, then follow one watch.

``StoreCache`` holds typed objects of every kind the calculation may read
(every registered kind but IPAM's bookkeeping: nodes, blocks, all workload
endpoints — policy needs other nodes' too — pods, namespaces, and whatever
later kinds register), keyed by store key and stamped with the revision of
their last write. ``load()`` lists every
kind and returns the revision to watch from; ``apply(events)`` folds a batch
of watch events in; ``snapshot()`` is the frozen calc input.

The agent also writes endpoints itself (CNI ADD/DEL) and records them here at
once (``put`` / ``remove``) rather than waiting for its own watch event, so
that a reconcile pass right after an ADD already knows the new pod. Because
those local writes can be newer than watch events still in flight, every
change is guarded by revision: an event older than what the cache holds for a
key is ignored, and a removal leaves a tombstone that stops an older PUT from
resurrecting the object until the watch has passed it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from tabby.calc.snapshot import Snapshot
from tabby.errors import ValidationError
from tabby.model import (
    BlockAffinity,
    IPAMBlock,
    IPAMConfiguration,
    IPAMHandle,
    Namespace,
    Node,
    Pod,
    Resource,
    WorkloadEndpoint,
    all_kinds,
)
from tabby.store.base import Event, Item, Key, Store
from tabby.store.client import from_item, key_of

log = logging.getLogger(__name__)
_CORE = (Node, IPAMBlock, WorkloadEndpoint, Pod, Namespace)

# IPAM's bookkeeping is read through the IPAM engine, never by the calculation.
SKIPPED = frozenset(cls.KIND.resource for cls in (BlockAffinity, IPAMHandle, IPAMConfiguration))


def kinds() -> dict[str, type[Resource]]:
    """The kinds the cache follows: every registered kind the calculation reads."""
    return {cls.KIND.resource: cls for cls in all_kinds() if cls.KIND.resource not in SKIPPED}


class StoreCache:
    def __init__(self, store: Store, node: str) -> None:
        self._store = store
        self.node = node
        self._lock = threading.Lock()
        self._objects: dict[Key, tuple[int, Resource]] = {}
        self._tombstones: dict[Key, int] = {}
        self.revision = 0  # everything up to here is folded in
        self._kinds = kinds()

    def load(self) -> int:
        """List every kind afresh; returns the revision to watch from (exclusive)."""
        objects: dict[Key, tuple[int, Resource]] = {}
        revisions = []
        self._kinds = kinds()
        for resource, cls in self._kinds.items():
            listing = self._store.list(resource)
            revisions.append(listing.revision)
            for item in listing:
                obj = self._parse(cls, item)
                if obj is not None:
                    objects[item.key] = (item.revision, obj)
        with self._lock:
            self._objects = objects
            self._tombstones = {}
            # Lists ran one after another; replaying from the oldest is safe
            # because every change is revision-guarded.
            self.revision = min(revisions) if revisions else 0
            return self.revision

    def apply(self, events: Iterable[Event]) -> set[str]:
        """Fold watch events in; returns the resources that changed."""
        changed: set[str] = set()
        with self._lock:
            for event in events:
                self.revision = max(self.revision, event.revision)
                cls = self._kinds.get(event.key.resource)
                if cls is None:
                    continue
                if event.type == "DELETE":
                    if self._remove(event.key, event.revision):
                        changed.add(event.key.resource)
                    continue
                assert event.value is not None
                item = Item(event.key, event.value, event.revision, event.revision)
                obj = self._parse(cls, item)
                if obj is None:
                    if self._remove(event.key, event.revision):
                        changed.add(event.key.resource)
                    continue
                if self._put(event.key, event.revision, obj):
                    changed.add(event.key.resource)
            self._tombstones = {k: r for k, r in self._tombstones.items() if r > self.revision}
        return changed

    def put(self, obj: Resource) -> None:
        """Record an object the agent itself just wrote (its resourceVersion is set)."""
        with self._lock:
            self._put(key_of(obj), int(obj.meta.resource_version or 0), obj)

    def remove(self, key: Key, revision: int) -> None:
        """Record a deletion the agent itself just made at ``revision``."""
        with self._lock:
            self._remove(key, revision)

    def snapshot(self) -> Snapshot:
        with self._lock:
            objects = [obj for _, obj in self._objects.values()]
        return Snapshot.build(
            nodes=[o for o in objects if isinstance(o, Node)],
            blocks=[o for o in objects if isinstance(o, IPAMBlock)],
            endpoints=[o for o in objects if isinstance(o, WorkloadEndpoint)],
            pods=[o for o in objects if isinstance(o, Pod)],
            namespaces=[o for o in objects if isinstance(o, Namespace)],
            others=[o for o in objects if not isinstance(o, _CORE)])

    def endpoints(self) -> list[WorkloadEndpoint]:
        """This node's workload endpoints."""
        with self._lock:
            return [o for _, o in self._objects.values()
                    if isinstance(o, WorkloadEndpoint) and o.spec.node == self.node]

    # -- guarded changes (caller holds the lock) -------------------------------
    def _put(self, key: Key, revision: int, obj: Resource) -> bool:
        held = self._objects.get(key)
        if held is not None and held[0] >= revision:
            return False
        if self._tombstones.get(key, 0) >= revision:
            return False
        self._tombstones.pop(key, None)
        self._objects[key] = (revision, obj)
        return True

    def _remove(self, key: Key, revision: int) -> bool:
        held = self._objects.get(key)
        if held is not None and held[0] > revision:
            return False  # we hold something newer than this deletion
        self._tombstones[key] = max(self._tombstones.get(key, 0), revision)
        return self._objects.pop(key, None) is not None

    @staticmethod
    def _parse(cls: type[Resource], item: Item) -> Resource | None:
        try:
            return from_item(cls, item)
        except ValidationError as exc:
            log.warning("ignoring invalid %s in the store: %s", item.key, exc)
            return None
