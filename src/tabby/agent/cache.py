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

Snapshots are built by difference: the cache keeps each kind's objects in
``Snapshot.build``'s order (a sorted list of sort keys beside a dict) and, on
``snapshot()``, rebuilds the tuples of only the kinds that changed since the
last one (nothing changed: the same Snapshot object again). The result equals
``Snapshot.build`` over every object held.

Memory: a document is copied before parsing, its strings interned and its
large integers shared (``_Canon``), so the objects held share one copy of every
label key and value, name, node and timestamp, and keep nothing of the listing
itself: with the listing dropped, the memory it took goes back whole (objects
holding a string of each raw document would pin all of it, ~40 MiB with 10k
endpoints).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import sys
import threading
from collections.abc import Iterable
from typing import Any

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
from tabby.model.kindnotes import notes_for
from tabby.snapshot import Snapshot
from tabby.store.base import Event, Item, Key, Store
from tabby.store.client import from_item, key_of

log = logging.getLogger(__name__)
_CORE = (Node, IPAMBlock, WorkloadEndpoint, Pod, Namespace)
_FIELDS = {cls.KIND.resource: field for cls, field in (
    (Node, "nodes"), (IPAMBlock, "blocks"), (WorkloadEndpoint, "endpoints"), (Pod, "pods"),
    (Namespace, "namespaces"))}
_BY_NAME = frozenset({Node.KIND.resource, IPAMBlock.KIND.resource, Namespace.KIND.resource})
SortKey = tuple[str, ...]

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
        self._sorted = _Sorted()
        self._warned: dict[Key, int] = {}  # key -> the revision whose ignored fields were logged

    def load(self) -> int:
        """List every kind afresh; returns the revision to watch from (exclusive)."""
        objects: dict[Key, tuple[int, Resource]] = {}
        revisions = []
        self._kinds = kinds()
        for resource, cls in self._kinds.items():
            listing = self._store.list(resource)
            revisions.append(listing.revision)
            canon = _Canon()  # one per listing: dropped with it
            for item in listing:
                obj = self._parse(cls, item, canon)
                if obj is not None:
                    objects[canon.key(item.key)] = (item.revision, obj)
            del listing  # before the next kind's listing: its memory is reused
        with self._lock:
            self._objects = objects
            self._tombstones = {}
            self._sorted = _Sorted()
            for key, (_, obj) in objects.items():
                self._sorted.put(key.resource, obj)
            # Lists ran one after another; replaying from the oldest is safe
            # because every change is revision-guarded.
            self.revision = min(revisions) if revisions else 0
            return self.revision

    def apply(self, events: Iterable[Event]) -> set[str]:
        """Fold watch events in; returns the resources that changed."""
        changed: set[str] = set()
        canon = _Canon()
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
                obj = self._parse(cls, item, canon)
                if obj is None:
                    if self._remove(event.key, event.revision):
                        changed.add(event.key.resource)
                    continue
                if self._put(canon.key(event.key), event.revision, obj):
                    changed.add(event.key.resource)
            self._tombstones = {k: r for k, r in self._tombstones.items() if r > self.revision}
        return changed

    def resources(self) -> list[str]:
        """The store resources the cache follows (what the agent's watch asks for)."""
        return sorted(self._kinds)

    def put(self, obj: Resource) -> None:
        """Record an object the agent itself just wrote (its resourceVersion is set)."""
        with self._lock:
            self._put(key_of(obj), int(obj.meta.resource_version or 0), obj)

    def remove(self, key: Key, revision: int) -> None:
        """Record a deletion the agent itself just made at ``revision``."""
        with self._lock:
            self._remove(key, revision)

    def snapshot(self) -> Snapshot:
        """The frozen calc input: equal to ``Snapshot.build`` over every object held."""
        with self._lock:
            return self._sorted.snapshot()

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
        if held is not None:
            self._sorted.remove(key.resource, held[1])
        self._objects[key] = (revision, obj)
        self._sorted.put(key.resource, obj)
        return True

    def _remove(self, key: Key, revision: int) -> bool:
        held = self._objects.get(key)
        if held is not None and held[0] > revision:
            return False  # we hold something newer than this deletion
        self._tombstones[key] = max(self._tombstones.get(key, 0), revision)
        gone = self._objects.pop(key, None)
        self._warned.pop(key, None)
        if gone is None:
            return False
        self._sorted.remove(key.resource, gone[1])
        return True

    def _parse(self, cls: type[Resource], item: Item, canon: _Canon) -> Resource | None:
        try:
            obj = from_item(cls, Item(item.key, canon.value(item.value), item.revision,
                                      item.create_revision))
        except ValidationError as exc:
            log.warning("ignoring invalid %s in the store: %s", item.key, exc)
            return None
        self._log_ignored(item, obj)
        return obj

    def _log_ignored(self, item: Item, obj: Resource) -> None:
        """Log the fields tabby accepts and ignores (kubectl in Kubernetes mode bypasses
        ``apply``'s warnings), once per object version: a relist reads the same again."""
        notes = notes_for(item.key.resource)
        if not notes.notes or self._warned.get(item.key) == item.revision:
            return
        warnings = notes.warnings(obj.ref, item.value)
        if not warnings:
            self._warned.pop(item.key, None)
            return
        self._warned[item.key] = item.revision
        for warning in warnings:
            log.warning("%s", warning)


class _Shared(dict[Any, Any]):
    """A listing's string or large integer -> the one copy the parsed objects share."""

    def __missing__(self, value: Any) -> Any:
        if type(value) is str:
            # a new object (a slice of a new string), interned: interning the document's
            # own string would keep that document's memory block alive
            got: Any = sys.intern((value + " ")[:-1])
        else:
            got = 0 - (0 - value)  # a new int object
        self[value] = got
        return got


class _Canon:
    """Copies of stored documents sharing one object per equal string (interned: the
    interpreter drops an interned string nobody holds) and per equal large integer.
    The copy, not the listing's document, is what the parser keeps parts of."""

    def __init__(self) -> None:
        self._shared = _Shared()

    def value(self, value: Any) -> Any:
        shared = self._shared
        kind = type(value)
        if kind is dict:  # JSON: keys are strings; most values too (one lookup, in C)
            return {shared[k]: shared[v] if type(v) is str else self.value(v)
                    for k, v in value.items()}
        if kind is list:
            return [shared[v] if type(v) is str else self.value(v) for v in value]
        if kind is str or (kind is int and not -5 <= value <= 256):  # beyond CPython's
            return shared[value]                                      # shared small ints
        return value

    def key(self, key: Key) -> Key:
        shared = self._shared
        return Key(shared[key.resource], shared[key.namespace], shared[key.name])


def _sort_key(resource: str, obj: Resource) -> SortKey:
    """``Snapshot.build``'s order within one kind."""
    if resource in _BY_NAME:
        return (obj.meta.name,)
    return (obj.meta.namespace, obj.meta.name)


class _Sorted:
    """Every held object per kind in snapshot order; a kind's tuple is rebuilt only
    after it changed (the caller holds the cache's lock)."""

    def __init__(self) -> None:
        self.order: dict[str, list[SortKey]] = {}  # per resource, sorted
        self.members: dict[str, dict[SortKey, Resource]] = {}
        self.tuples: dict[str, tuple[Resource, ...]] = {}
        self.dirty: set[str] = set()
        self.last: Snapshot | None = None

    def put(self, resource: str, obj: Resource) -> None:
        key = _sort_key(resource, obj)
        members = self.members.setdefault(resource, {})
        if key not in members:
            bisect.insort(self.order.setdefault(resource, []), key)
        members[key] = obj
        self.dirty.add(resource)

    def remove(self, resource: str, obj: Resource) -> None:
        key = _sort_key(resource, obj)
        members = self.members.get(resource, {})
        if members.pop(key, None) is None:
            return
        order = self.order[resource]
        del order[bisect.bisect_left(order, key)]
        self.dirty.add(resource)

    def snapshot(self) -> Snapshot:
        if self.last is not None and not self.dirty:
            return self.last
        for resource in self.dirty:
            members = self.members.get(resource, {})
            self.tuples[resource] = tuple(map(members.__getitem__, self.order.get(resource, ())))
        others = self.last.others if self.last is not None else ()
        if self.last is None or any(r not in _FIELDS for r in self.dirty):
            others = tuple(itertools.chain.from_iterable(
                self.tuples[r] for r in sorted(self.tuples) if r not in _FIELDS))
        core = {f: self.tuples.get(r, ()) for r, f in _FIELDS.items()}
        # others by kind, for Snapshot.of: a kind that did not change keeps its tuple
        kinds = {type(t[0]): t for r, t in self.tuples.items() if t and r not in _FIELDS}
        self.dirty = set()
        self.last = Snapshot.with_kinds(kinds, others=others, **core)
        return self.last
