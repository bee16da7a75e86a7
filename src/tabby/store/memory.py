"""In-memory store: the contract in its simplest form, for tests and tools.

History is kept (bounded by ``history``) so watches resume like etcd's.
"""

from __future__ import annotations

import builtins
import copy
import threading
import time

from tabby.errors import Compacted, Conflict, NotFound
from tabby.store.base import Event, Item, Key, ListResult, Store, Value, Watch


class MemoryStore(Store):
    def __init__(self, history: int = 100_000) -> None:
        self.url = "memory://"
        self._items: dict[Key, Item] = {}
        self._events: list[Event] = []
        self._rev = 0
        self._compacted = 0  # events with revision <= this are gone
        self._history = history
        self._cond = threading.Condition()

    def get(self, key: Key) -> Item:
        with self._cond:
            item = self._items.get(key)
            if item is None:
                raise NotFound(f"{key} not found")
            return item

    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        with self._cond:
            items = sorted(
                (i for k, i in self._items.items()
                 if k.resource == resource and (namespace is None or k.namespace == namespace)
                 and k.name.startswith(prefix)),
                key=lambda i: i.key)
            return ListResult(tuple(items), self._rev)

    def _write(self, key: Key, value: Value | None, event_type: str) -> Item:
        self._rev += 1
        old = self._items.get(key)
        if event_type == "DELETE":
            assert old is not None
            del self._items[key]
            item = Item(key, old.value, self._rev, old.create_revision)
        else:
            assert value is not None
            frozen = copy.deepcopy(dict(value))
            created = old.create_revision if old else self._rev
            item = Item(key, frozen, self._rev, created)
            self._items[key] = item
        self._events.append(Event(event_type, key, item.value, self._rev))
        if len(self._events) > self._history:
            drop = len(self._events) - self._history
            self._compacted = self._events[drop - 1].revision
            del self._events[:drop]
        self._cond.notify_all()
        return item

    def create(self, key: Key, value: Value) -> Item:
        with self._cond:
            if key in self._items:
                raise Conflict(f"{key} already exists")
            return self._write(key, value, "PUT")

    def update(self, key: Key, value: Value, revision: int) -> Item:
        with self._cond:
            old = self._items.get(key)
            if old is None:
                raise NotFound(f"{key} not found")
            if old.revision != revision:
                raise Conflict(f"{key} changed (revision {old.revision}, expected {revision})")
            return self._write(key, value, "PUT")

    def delete(self, key: Key, revision: int | None = None) -> Item:
        with self._cond:
            old = self._items.get(key)
            if old is None:
                raise NotFound(f"{key} not found")
            if revision is not None and old.revision != revision:
                raise Conflict(f"{key} changed (revision {old.revision}, expected {revision})")
            return self._write(key, None, "DELETE")

    def revision(self) -> int:
        with self._cond:
            return self._rev

    def watch(self, resource: str | None, start_revision: int) -> Watch:
        return _MemoryWatch(self, resource, start_revision)

    def _events_from(self, resource: str | None, start: int, timeout: float
                     ) -> builtins.list[Event]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if start <= self._compacted:
                    raise Compacted(f"revision {start} is compacted (oldest kept:"
                                    f" {self._compacted + 1})")
                first = self._events[0].revision if self._events else self._rev + 1
                found = [e for e in self._events[max(0, start - first):]
                         if resource is None or e.key.resource == resource]
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)


class _MemoryWatch(Watch):
    def __init__(self, store: MemoryStore, resource: str | None, start: int) -> None:
        self._store = store
        self._resource = resource
        self._next = max(start, 1)

    def next(self, timeout: float) -> list[Event]:
        events = self._store._events_from(self._resource, self._next, timeout)
        if events:
            self._next = events[-1].revision + 1
        return events

    def close(self) -> None:
        pass
