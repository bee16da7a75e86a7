"""A server-side dry run over any store: every check a write makes, no write.

``dry_run(store)`` returns a Store that reads through to ``store`` and answers
writes as the real store would (``Conflict`` for a create whose key exists or
an update or delete whose revision moved, ``NotFound`` for a missing object)
without changing anything. A ``Client`` over it runs the full admission of a
real write (validation, immutable fields, pool overlap against the stored
pools), so ``--dry-run=server`` reports exactly what a real apply would.

The Kubernetes store has the API server's own dry run (``dryRun=All``: schema,
CEL rules, admission webhooks, RBAC, without persisting): it is switched on
there instead of being imitated.
"""

from __future__ import annotations

from collections.abc import Iterable

from tabby.errors import Conflict, NotFound
from tabby.store.base import Item, Key, ListResult, Store, Value, Watch


def dry_run(store: Store) -> Store:
    """A store whose writes are checked and dropped (the API server's dry run for Kubernetes)."""
    if hasattr(store, "dry_run"):
        store.dry_run = True
        return store
    return DryRunStore(store)


class DryRunStore(Store):
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url

    def get(self, key: Key) -> Item:
        return self.inner.get(key)

    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        return self.inner.list(resource, namespace, prefix)

    def revision(self) -> int:
        return self.inner.revision()

    def watch(self, resource: str | None, start_revision: int) -> Watch:
        return self.inner.watch(resource, start_revision)

    def watch_many(self, resources: Iterable[str], start_revision: int) -> Watch:
        return self.inner.watch_many(resources, start_revision)

    def create(self, key: Key, value: Value) -> Item:
        try:
            self.inner.get(key)
        except NotFound:
            revision = self.inner.revision() + 1
            return Item(key, value, revision, revision)
        raise Conflict(f"{key} already exists")

    def update(self, key: Key, value: Value, revision: int) -> Item:
        current = self.inner.get(key)
        if current.revision != revision:
            raise Conflict(f"{key} changed (revision {current.revision}, expected {revision})")
        return Item(key, value, self.inner.revision() + 1, current.create_revision)

    def delete(self, key: Key, revision: int | None = None) -> Item:
        current = self.inner.get(key)
        if revision is not None and current.revision != revision:
            raise Conflict(f"{key} changed (revision {current.revision}, expected {revision})")
        return current

    def close(self) -> None:
        self.inner.close()
