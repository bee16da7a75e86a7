"""Typed access to a Store: resources in, resources out.

``Client`` converts between typed resources and stored manifests, stamps
``metadata.resourceVersion`` with the store revision (and ``uid`` /
``creationTimestamp`` on create), and runs admission: the per-object
validation already happened in ``from_manifest``; here come the rules that
need the old object (immutable fields) or other objects (pools must not
overlap). ``update`` is compare-and-swap on ``meta.resource_version``.

The pool overlap rule holds under concurrent writers too. A check before the
write alone would let two overlapping pools created at the same moment both
pass it. So a new pool is checked again after its write, and if an
overlapping pool was written first (a lower create revision, ties by name),
the new one takes itself back and is refused. The later writer's re-check
always sees the earlier one, so exactly one of two racing pools survives.
(The Kubernetes store reports no create revision: a pool's last revision
stands in, which is its creation in that moment's window.)
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from tabby.errors import Conflict, NotFound, ValidationError
from tabby.model import IPPool, Resource, check_pools
from tabby.store.base import Item, Key, Store

R = TypeVar("R", bound=Resource)


def key_of(obj: Resource) -> Key:
    return Key(obj.KIND.resource, obj.meta.namespace, obj.meta.name)


def key_for(cls: type[Resource], name: str, namespace: str = "") -> Key:
    if cls.KIND.namespaced and not namespace:
        namespace = "default"
    return Key(cls.KIND.resource, namespace if cls.KIND.namespaced else "", name)


def to_value(obj: Resource) -> dict[str, Any]:
    doc = obj.to_manifest()
    doc["metadata"].pop("resourceVersion", None)
    return doc


def from_item(cls: type[R], item: Item) -> R:
    doc = dict(item.value)
    meta = dict(doc.get("metadata") or {})
    meta["resourceVersion"] = str(item.revision)
    doc["metadata"] = meta
    return cls.from_manifest(doc)


class Client:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, cls: type[R], name: str, namespace: str = "") -> R:
        return from_item(cls, self.store.get(key_for(cls, name, namespace)))

    def try_get(self, cls: type[R], name: str, namespace: str = "") -> R | None:
        try:
            return self.get(cls, name, namespace)
        except NotFound:
            return None

    def list(self, cls: type[R], namespace: str | None = None, prefix: str = "") -> list[R]:
        listing = self.store.list(cls.KIND.resource, namespace, prefix)
        return [from_item(cls, item) for item in listing]

    def create(self, obj: R) -> R:
        self._admit(obj, None)
        meta_changes: dict[str, Any] = {"resource_version": ""}
        if not obj.meta.uid:
            meta_changes["uid"] = str(uuid.uuid4())
        if not obj.meta.creation_timestamp:
            meta_changes["creation_timestamp"] = _now()
        obj = obj.with_meta(**meta_changes)
        item = self.store.create(key_of(obj), to_value(obj))
        stored = obj.with_meta(resource_version=str(item.revision))
        if isinstance(stored, IPPool):
            self._recheck_pool(stored, item.create_revision or item.revision)
        return stored

    def update(self, obj: R, old: R | None = None) -> R:
        """CAS on ``obj.meta.resource_version``; Conflict if the object moved."""
        if not obj.meta.resource_version:
            raise Conflict(f"{obj.ref}: update needs metadata.resourceVersion (read it first)")
        if old is None:
            old = self.get(type(obj), obj.meta.name, obj.meta.namespace)
        self._admit(obj, old)
        obj = obj.with_meta(uid=old.meta.uid, creation_timestamp=old.meta.creation_timestamp)
        item = self.store.update(key_of(obj), to_value(obj), int(obj.meta.resource_version))
        return obj.with_meta(resource_version=str(item.revision))

    def delete(self, cls: type[R], name: str, namespace: str = "",
               resource_version: str = "") -> R:
        revision = int(resource_version) if resource_version else None
        item = self.store.delete(key_for(cls, name, namespace), revision)
        return from_item(cls, item)

    def apply(self, obj: R, attempts: int = 10) -> tuple[R, str]:
        """Create or update ``obj`` (kubectl apply semantics, whole-object replace).

        Returns the stored object and ``created``, ``configured`` or ``unchanged``.
        """
        cls = type(obj)
        for _ in range(attempts):
            old = self.try_get(cls, obj.meta.name, obj.meta.namespace)
            if old is None:
                try:
                    return self.create(obj), "created"
                except Conflict:
                    continue
            new = obj.with_meta(resource_version=old.meta.resource_version, uid=old.meta.uid,
                                creation_timestamp=old.meta.creation_timestamp)
            if to_value(new) == to_value(old):
                return old, "unchanged"
            try:
                return self.update(new, old), "configured"
            except Conflict:
                continue
        raise Conflict(f"{obj.ref}: kept changing under us; try again")

    def mutate(self, cls: type[R], name: str, namespace: str, change: Callable[[R], R],
               attempts: int = 20) -> R:
        """Read-modify-write with retries on Conflict."""
        for _ in range(attempts):
            current = self.get(cls, name, namespace)
            try:
                return self.update(change(current), current)
            except Conflict:
                continue
        raise Conflict(f"{cls.KIND.kind}/{name}: kept changing under us; try again")

    def _admit(self, obj: Resource, old: Resource | None) -> None:
        if old is not None:
            obj.validate_update(old)
        admit = _ADMISSION.get(obj.KIND.resource)
        if admit is not None:
            admit(self, obj)


    def _recheck_pool(self, pool: IPPool, mine: int) -> None:
        """After the write: an overlapping pool written first wins; this one goes."""
        for item in self.store.list(IPPool.KIND.resource):
            other = from_item(IPPool, item)
            theirs = item.create_revision or item.revision
            if (theirs, other.meta.name) >= (mine, pool.meta.name):
                continue
            try:
                check_pools(pool, [other])
            except ValidationError:
                with contextlib.suppress(NotFound, Conflict):
                    self.store.delete(key_of(pool), int(pool.meta.resource_version))
                raise


def _admit_pool(client: Client, obj: Resource) -> None:
    assert isinstance(obj, IPPool)
    check_pools(obj, client.list(IPPool))


_ADMISSION: dict[str, Callable[[Client, Resource], None]] = {
    IPPool.KIND.resource: _admit_pool,
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

