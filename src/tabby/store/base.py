"""The datastore contract every backend honours (memory, SQLite, etcd v3).

Objects are plain JSON-able dicts (manifests) under a ``Key`` of
(resource, namespace, name); the typed layer lives in ``tabby.store.client``.

Revisions are one cluster-wide counter, as in etcd: every write (create,
update, delete) bumps it by one and stamps the written object with it
(``Item.revision``, the mod revision). ``update`` and ``delete`` take the
revision the caller last saw and fail with ``Conflict`` if the object moved
(compare-and-swap); ``create`` fails with ``Conflict`` if the key exists.

``watch(resource, start)`` yields every change with revision >= ``start``, in
revision order, with no gaps; a caller resumes after a break by watching
from its last seen revision + 1. The usual pattern is list-then-watch::

    listing = store.list("pods")
    w = store.watch("pods", listing.revision + 1)
    while True:
        for event in w.next(timeout=1.0): ...

A watch that asks for history the backend has compacted away raises
``Compacted``; the caller lists again.
"""

from __future__ import annotations

import abc
import queue
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tabby.errors import StoreError

Value = Mapping[str, Any]
PREFIX = "/tabby/"


@dataclass(frozen=True, slots=True, order=True)
class Key:
    resource: str  # e.g. "pods", "ippools.tabby.dev"
    namespace: str  # "" for cluster-scoped kinds
    name: str

    def path(self) -> str:
        return f"{PREFIX}{self.resource}/{self.namespace or '_'}/{self.name}"

    @classmethod
    def from_path(cls, path: str) -> Key:
        rest = path[len(PREFIX):] if path.startswith(PREFIX) else path
        resource, namespace, name = rest.split("/", 2)
        return cls(resource, "" if namespace == "_" else namespace, name)

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.resource}/{ns}{self.name}"


@dataclass(frozen=True, slots=True)
class Item:
    key: Key
    value: Value
    revision: int  # revision of the last write to this key
    create_revision: int


@dataclass(frozen=True, slots=True)
class ListResult:
    items: tuple[Item, ...]
    revision: int  # the store's revision when the list was read

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # "PUT" or "DELETE"
    key: Key
    value: Value | None  # the new value; the last value for DELETE
    revision: int


class Watch(abc.ABC):
    """An ordered, gap-free stream of events; ``next`` returns [] on timeout."""

    @abc.abstractmethod
    def next(self, timeout: float) -> list[Event]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QueuedWatch(Watch):
    """A watch fed by reader threads through a queue of event batches or an error.

    ``next`` returns every batch waiting (after waiting up to ``timeout`` for the
    first); an error is raised once the events before it have been returned, and
    again on every later call."""

    def __init__(self) -> None:
        self._queue: queue.Queue[list[Event] | StoreError] = queue.Queue()
        self._error: StoreError | None = None

    def put(self, item: list[Event] | StoreError) -> None:
        self._queue.put(item)

    def next(self, timeout: float) -> list[Event]:
        if self._error is not None:
            raise self._error
        got: list[list[Event] | StoreError] = []
        try:
            got.append(self._queue.get(timeout=timeout) if timeout > 0
                       else self._queue.get_nowait())
            while True:
                got.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        events: list[Event] = []
        for batch in got:
            if isinstance(batch, StoreError):
                self._error = batch  # raised now, or on the next call after these events
                break
            events.extend(batch)
        if not events and self._error is not None:
            raise self._error
        return events


class FilteredWatch(Watch):
    """Another watch's events for some resources only."""

    def __init__(self, inner: Watch, resources: frozenset[str]) -> None:
        self._inner = inner
        self._resources = resources

    def next(self, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        while True:
            events = [e for e in self._inner.next(timeout) if e.key.resource in self._resources]
            timeout = deadline - time.monotonic()
            if events or timeout <= 0:
                return events

    def close(self) -> None:
        self._inner.close()


class Store(abc.ABC):
    """One datastore. Thread-safe; several processes may open the same SQLite file."""

    url: str

    @abc.abstractmethod
    def get(self, key: Key) -> Item:
        """The item under ``key``; NotFound if none."""

    @abc.abstractmethod
    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        """Items of ``resource``, optionally in one namespace and with names starting
        with ``prefix``, sorted by key, plus the revision they were read at."""

    @abc.abstractmethod
    def create(self, key: Key, value: Value) -> Item:
        """Write a new object; Conflict if the key exists."""

    @abc.abstractmethod
    def update(self, key: Key, value: Value, revision: int) -> Item:
        """Replace the object if its revision is still ``revision``; Conflict if not,
        NotFound if it is gone."""

    @abc.abstractmethod
    def delete(self, key: Key, revision: int | None = None) -> Item:
        """Remove the object (if ``revision`` is given, only if unchanged); returns
        the removed item; NotFound if absent, Conflict if it moved."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The store's current revision (0 for a new memory or SQLite store; etcd starts at 1)."""

    @abc.abstractmethod
    def watch(self, resource: str | None, start_revision: int) -> Watch:
        """Events for ``resource`` (None: every resource) from ``start_revision`` on."""

    def watch_many(self, resources: Iterable[str], start_revision: int) -> Watch:
        """Events for the named resources only (backends that watch per resource
        open just those; the rest filter the watch of everything)."""
        return FilteredWatch(self.watch(None, start_revision), frozenset(resources))

    def update_status(self, key: Key, value: Value, revision: int) -> Item:
        """Write an object's status (CAS as ``update``). Backends with a status
        subresource (Kubernetes) write only the status there; the rest replace
        the whole object."""
        return self.update(key, value, revision)

    def close(self) -> None:  # noqa: B027 - optional for backends holding nothing
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
