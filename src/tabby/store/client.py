"""Typed access to a Store: resources in, resources out.

``Client`` converts between typed resources and stored manifests, stamps
``metadata.resourceVersion`` with the store revision (and ``uid`` /
``creationTimestamp`` on create), and runs admission: the per-object
validation already happened in ``from_manifest``; here come the rules that
need the old object (immutable fields) or other objects (pools must not
overlap; a policy's tier must exist; a built-in tier, or one that still holds
policies, cannot be deleted: Calico's client rules; the built-in tiers are
there for ``get`` and ``list`` whether stored or not, as Calico creates them at
start). ``update`` is
compare-and-swap on ``meta.resource_version``.

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

from tabby.errors import Conflict, FieldError, NotFound, ValidationError
from tabby.model import (
    BUILTIN_TIERS,
    GlobalNetworkPolicy,
    IPPool,
    NetworkPolicy,
    Resource,
    StagedGlobalNetworkPolicy,
    StagedNetworkPolicy,
    Tier,
    check_pools,
)
from tabby.model.tier import builtin_tiers
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
        try:
            return from_item(cls, self.store.get(key_for(cls, name, namespace)))
        except NotFound:
            builtin = _builtin(cls, name)
            if builtin is None:
                raise
            return builtin

    def try_get(self, cls: type[R], name: str, namespace: str = "") -> R | None:
        try:
            return self.get(cls, name, namespace)
        except NotFound:
            return None

    def list(self, cls: type[R], namespace: str | None = None, prefix: str = "") -> list[R]:
        listing = self.store.list(cls.KIND.resource, namespace, prefix)
        out = [from_item(cls, item) for item in listing]
        if cls is Tier:  # the built-in tiers exist, stored or not
            stored = {o.meta.name for o in out}
            out += [b for b in builtin_tiers() if b.meta.name not in stored  # type: ignore[misc]
                    and b.meta.name.startswith(prefix)]
            out.sort(key=lambda o: o.meta.name)
        return out

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
        if cls is Tier:
            _admit_tier_delete(self, name)
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


def _builtin(cls: type[R], name: str) -> R | None:
    """A built-in tier that is not stored, as Calico has it (it creates them at start)."""
    if cls is not Tier:
        return None
    for tier in builtin_tiers():
        if tier.meta.name == name:
            return tier  # type: ignore[return-value]
    return None


def _admit_policy(client: Client, obj: Resource) -> None:
    """The policy's tier must exist (Calico's client checks it on create)."""
    assert isinstance(obj, NetworkPolicy | GlobalNetworkPolicy | StagedNetworkPolicy
                      | StagedGlobalNetworkPolicy)  # staged ones live in tiers too
    tier = obj.spec.tier
    if tier not in BUILTIN_TIERS and client.try_get(Tier, tier) is None:
        raise ValidationError(obj.ref, [FieldError(
            "spec.tier", f"tier {tier!r} does not exist; apply a Tier named {tier!r} first")])


def _admit_tier_delete(client: Client, name: str) -> None:
    """Built-in tiers stay; a tier holding policies stays until they are gone or moved."""
    if name in BUILTIN_TIERS:
        raise ValidationError(f"Tier/{name}", [FieldError(
            "", "is a built-in tier and cannot be deleted")])
    policies: list[GlobalNetworkPolicy | NetworkPolicy] = [
        *client.list(GlobalNetworkPolicy), *client.list(NetworkPolicy)]
    holders = [p.ref for p in policies if p.spec.tier == name]
    if holders:
        shown = ", ".join(holders[:5]) + (f" and {len(holders) - 5} more"
                                          if len(holders) > 5 else "")
        raise ValidationError(f"Tier/{name}", [FieldError(
            "", f"still holds {len(holders)} policies ({shown}); delete them or move them"
                " to another tier first")])


_ADMISSION: dict[str, Callable[[Client, Resource], None]] = {
    IPPool.KIND.resource: _admit_pool,
    NetworkPolicy.KIND.resource: _admit_policy,
    GlobalNetworkPolicy.KIND.resource: _admit_policy,
    StagedNetworkPolicy.KIND.resource: _admit_policy,
    StagedGlobalNetworkPolicy.KIND.resource: _admit_policy,
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

