"""The one contract every Store backend passes (see tabby/store/base.py).

A backend's test module subclasses ``StoreContract`` and provides a ``store``
fixture. The store may be shared with earlier tests (etcd), so every check is
relative to the revision read at the start of the test; set
``FRESH_STORE = False`` when the fixture does not hand out a brand-new store.

``EXCLUSIVE = False`` is for a store whose revision counter other writers
advance too (the Kubernetes API: its own leases and events share etcd's
revision): there every "the next revision" check becomes "a later revision",
watches over several resources are checked per resource (each in revision
order, all delivered), and ``create_revision`` is not checked. ``normalize``
maps a stored value to what the test wrote (a backend may add server-owned
metadata), and ``DNS_NAMES`` keeps key names to what Kubernetes accepts.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from tabby.errors import Compacted, Conflict, NotFound
from tabby.store.base import Event, Item, Key, Store, Watch

POD_A = Key("pods", "a", "web-1")
POD_B = Key("pods", "b", "db-1")
SVC = Key("services", "a", "web")


def value(n: int = 0, **extra: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Thing", "spec": {"n": n, **extra}}


def collect(watch: Watch, count: int, timeout: float = 10.0) -> list[Event]:
    """Read events until ``count`` arrived or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    events: list[Event] = []
    while len(events) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        events.extend(watch.next(min(remaining, 0.5)))
    return events


def run_threads(count: int, target: Callable[[int], None], timeout: float = 60.0) -> None:
    """Run ``target(i)`` in ``count`` threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "worker threads did not finish"
    if errors:
        raise errors[0]


def check_compaction(store: Store, history: int) -> None:
    """For a store keeping ``history`` events: older revisions raise Compacted."""
    start = store.revision()
    for i in range(history + 3):
        store.create(Key("pods", "c", f"p{i}"), value(i))
    last = store.revision()
    assert last == start + history + 3
    oldest = last - history + 1
    with store.watch(None, oldest) as w:
        events = collect(w, history)
    assert [e.revision for e in events] == list(range(oldest, last + 1))
    for too_old in (oldest - 1, start + 1):
        with pytest.raises(Compacted), store.watch("pods", too_old) as w:
            w.next(1.0)


class StoreContract:
    FRESH_STORE = True
    EXCLUSIVE = True  # the store's revision moves only with this test's writes
    DNS_NAMES = False  # key names must be DNS labels (no upper case)
    EXACT_DELETE_REVISION = True  # delete() returns the deletion's revision, not a bound

    def normalize(self, value: object) -> object:
        """A stored value as the test wrote it (backends may add server-owned fields)."""
        return value

    def next_after(self, before: int, after: int) -> None:
        """``after`` is the revision of the write following revision ``before``."""
        if self.EXCLUSIVE:
            assert after == before + 1, (before, after)
        else:
            assert after > before, (before, after)

    def at_least(self, current: int, expected: int) -> None:
        """The store's revision now is ``expected`` (or later, when shared)."""
        if self.EXCLUSIVE:
            assert current == expected, (current, expected)
        else:
            assert current >= expected, (current, expected)

    def same(self, a: Item, b: Item) -> None:
        assert (a.key, self.normalize(a.value), a.revision) == (
            b.key, self.normalize(b.value), b.revision)
        if self.EXCLUSIVE:
            assert a.create_revision == b.create_revision

    def written(self, item: Item, key: Key, val: object, before: int,
                created: int | None = None) -> None:
        """``item`` is ``val`` under ``key``, written right after revision ``before``
        (and, for an update, first created at ``created``)."""
        assert item.key == key
        assert self.normalize(item.value) == self.normalize(val)
        self.next_after(before, item.revision)
        if self.EXCLUSIVE:
            assert item.create_revision == (item.revision if created is None else created)

    # -- get / create ---------------------------------------------------------------

    def test_fresh_store_is_empty_at_revision_zero(self, store: Store) -> None:
        if not self.FRESH_STORE:
            pytest.skip("this backend's fixture shares one store between tests")
        assert store.revision() == 0
        assert len(store.list("pods")) == 0
        assert store.list("pods").revision == 0

    def test_get_missing_is_notfound(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.get(POD_A)

    def test_create_then_get(self, store: Store) -> None:
        r0 = store.revision()
        item = store.create(POD_A, value(1))
        self.written(item, POD_A, value(1), r0)
        self.same(store.get(POD_A), item)
        self.at_least(store.revision(), item.revision)

    def test_create_existing_is_conflict_and_changes_nothing(self, store: Store) -> None:
        first = store.create(POD_A, value(1))
        with pytest.raises(Conflict):
            store.create(POD_A, value(2))
        self.same(store.get(POD_A), first)
        self.at_least(store.revision(), first.revision)

    def test_values_round_trip_and_are_copied(self, store: Store) -> None:
        doc: dict[str, object] = {
            "metadata": {"name": "ünïcode ✓", "labels": {"a/b": "c"}},
            "spec": {"int": 2**40, "float": 1.5, "bool": True, "none": None,
                     "list": [1, "two", {"three": [3]}], "empty": {}},
        }
        store.create(POD_A, doc)
        expected = {"metadata": {"name": "ünïcode ✓", "labels": {"a/b": "c"}},
                    "spec": {"int": 2**40, "float": 1.5, "bool": True, "none": None,
                             "list": [1, "two", {"three": [3]}], "empty": {}}}
        doc["spec"] = "changed after the write"
        assert self.normalize(store.get(POD_A).value) == self.normalize(expected)

    # -- list -----------------------------------------------------------------------

    def _populate(self, store: Store) -> list[Key]:
        keys = [
            Key("pods", "a", "web-2"), Key("pods", "a", "web-1"), Key("pods", "a", "db"),
            Key("pods", "ab", "web-1"), Key("pods", "ab-x", "web-1"),
            Key("pods", "b", "webby"), Key("pods", "b", "x-web"),
            Key("pods", "", "web-0"), Key("pods", "", "Web-9"),
            Key("podsx", "a", "web-1"), Key("services", "a", "web-1"),
        ]
        if self.DNS_NAMES:  # a namespaced kind has no keys outside namespaces there
            keys = [k for k in keys if k.namespace and k.name == k.name.lower()]
        for i, key in enumerate(keys):
            store.create(key, value(i))
        return keys

    def test_list_by_resource_is_sorted_by_key(self, store: Store) -> None:
        keys = self._populate(store)
        listing = store.list("pods")
        assert [i.key for i in listing] == sorted(k for k in keys if k.resource == "pods")
        self.at_least(store.revision(), listing.revision)
        assert all(self.normalize(i.value) == self.normalize(value(keys.index(i.key)))
                   for i in listing)
        assert [i.key for i in store.list("services")] == [Key("services", "a", "web-1")]
        assert len(store.list("nothing")) == 0

    def test_list_by_namespace(self, store: Store) -> None:
        self._populate(store)
        assert [i.key.name for i in store.list("pods", "a")] == ["db", "web-1", "web-2"]
        assert [i.key.name for i in store.list("pods", "ab")] == ["web-1"]
        if not self.DNS_NAMES:
            assert [i.key.name for i in store.list("pods", "")] == ["Web-9", "web-0"]
        assert len(store.list("pods", "zzz")) == 0

    def test_list_by_name_prefix(self, store: Store) -> None:
        self._populate(store)
        expected = ["pods/web-0", "pods/a/web-1", "pods/a/web-2", "pods/ab/web-1",
                    "pods/ab-x/web-1", "pods/b/webby"]
        if self.DNS_NAMES:
            expected.remove("pods/web-0")
        assert [str(i.key) for i in store.list("pods", prefix="web")] == expected
        assert [i.key.name for i in store.list("pods", "a", "web-")] == ["web-1", "web-2"]
        assert [i.key.name for i in store.list("pods", "b", "web")] == ["webby"]
        if not self.DNS_NAMES:
            assert [i.key.name for i in store.list("pods", "", "W")] == ["Web-9"]
        assert len(store.list("pods", "a", "nope")) == 0

    # -- update / delete ------------------------------------------------------------

    def test_update_is_compare_and_swap(self, store: Store) -> None:
        created = store.create(POD_A, value(1))
        updated = store.update(POD_A, value(2), created.revision)
        self.written(updated, POD_A, value(2), created.revision, created=created.revision)
        self.same(store.get(POD_A), updated)
        with pytest.raises(Conflict):
            store.update(POD_A, value(3), created.revision)  # stale
        with pytest.raises(Conflict):
            store.update(POD_A, value(3), updated.revision + 100)  # from the future
        self.same(store.get(POD_A), updated)
        self.at_least(store.revision(), updated.revision)

    def test_update_missing_is_notfound(self, store: Store) -> None:
        r0 = store.revision()
        for revision in (0, 1, r0):
            with pytest.raises(NotFound):
                store.update(POD_A, value(1), revision)
        with pytest.raises(NotFound):
            store.get(POD_A)
        if self.EXCLUSIVE:
            assert store.revision() == r0

    def test_delete_without_revision(self, store: Store) -> None:
        created = store.create(POD_A, value(1))
        updated = store.update(POD_A, value(2), created.revision)
        removed = store.delete(POD_A)
        self.written(removed, POD_A, value(2), updated.revision, created=created.revision)
        self.at_least(store.revision(), removed.revision)
        with pytest.raises(NotFound):
            store.get(POD_A)
        with pytest.raises(NotFound):
            store.delete(POD_A)
        self.at_least(store.revision(), removed.revision)

    def test_delete_with_revision(self, store: Store) -> None:
        created = store.create(POD_A, value(1))
        updated = store.update(POD_A, value(2), created.revision)
        with pytest.raises(Conflict):
            store.delete(POD_A, created.revision)
        self.same(store.get(POD_A), updated)
        removed = store.delete(POD_A, updated.revision)
        assert self.normalize(removed.value) == self.normalize(value(2))
        with pytest.raises(NotFound):
            store.get(POD_A)
        self.next_after(updated.revision, removed.revision)
        with pytest.raises(NotFound):
            store.delete(POD_A, updated.revision)

    def test_revision_counts_every_write_once(self, store: Store) -> None:
        r0 = store.revision()
        a = store.create(POD_A, value(1))
        b = store.create(SVC, value(1))
        a2 = store.update(POD_A, value(2), a.revision)
        gone = store.delete(SVC)
        with pytest.raises(Conflict):
            store.create(POD_A, value(9))
        again = store.create(SVC, value(3))
        revisions = [r0, a.revision, b.revision, a2.revision, gone.revision, again.revision]
        if not self.EXACT_DELETE_REVISION:  # a bound: after the deleted object's last write
            assert gone.revision > b.revision
            revisions.remove(gone.revision)
        for before, after in itertools.pairwise(revisions):
            self.next_after(before, after)
        if self.EXCLUSIVE:
            assert again.create_revision == r0 + 5  # a new life, a new create revision
        self.at_least(store.revision(), again.revision)
        self.at_least(store.list("pods").revision, again.revision)

    # -- watch ----------------------------------------------------------------------

    def _history(self, store: Store) -> tuple[int, list[int]]:
        """Five writes (pods and a service); returns the revision before them and
        the revision of each write."""
        r0 = store.revision()
        a = store.create(POD_A, value(1))
        s = store.create(SVC, value(10))
        a2 = store.update(POD_A, value(2), a.revision)
        b = store.create(POD_B, value(3))
        gone = store.delete(POD_A, a2.revision)
        return r0, [a.revision, s.revision, a2.revision, b.revision, gone.revision]

    def events_as_written(self, events: list[Event], reported: list[Event] | None = None,
                          ) -> list[Event]:
        """``events`` with values as written; a DELETE whose reported revision is a
        lower bound (``reported``) takes the reported one if the real one is not lower."""
        out = []
        for i, e in enumerate(events):
            revision = e.revision
            if (reported is not None and not self.EXACT_DELETE_REVISION
                    and e.type == "DELETE" and i < len(reported)
                    and revision >= reported[i].revision):
                revision = reported[i].revision
            out.append(Event(e.type, e.key, self.normalize(e.value), revision))  # type: ignore[arg-type]
        return out

    def test_watch_from_revision_is_ordered_and_filtered(self, store: Store) -> None:
        r0, (r1, _, r3, r4, r5) = self._history(store)
        with store.watch("pods", r0 + 1) as w:
            events = collect(w, 4)
            assert w.next(0.2) == []
        written = [
            Event("PUT", POD_A, value(1), r1),
            Event("PUT", POD_A, value(2), r3),
            Event("PUT", POD_B, value(3), r4),
            Event("DELETE", POD_A, value(2), r5),  # DELETE carries the last value
        ]
        assert self.events_as_written(events, written) == self.events_as_written(written)

    def test_watch_every_resource_is_gap_free(self, store: Store) -> None:
        r0, revisions = self._history(store)
        with store.watch(None, r0 + 1) as w:
            events = collect(w, 5)
        written = [("PUT", "pods/a/web-1"), ("PUT", "services/a/web"), ("PUT", "pods/a/web-1"),
                   ("PUT", "pods/b/db-1"), ("DELETE", "pods/a/web-1")]
        if self.EXCLUSIVE:
            assert [e.revision for e in events] == list(range(r0 + 1, r0 + 6))
            assert [(e.type, str(e.key)) for e in events] == written
        else:  # every write, each resource's in revision order
            got = sorted((e.revision, e.type, str(e.key)) for e in events)
            assert [(t, k) for _, t, k in got] == written
            assert [r for r, _, _ in got][:4] == revisions[:4]
            assert got[4][0] >= revisions[4]  # the deletion's reported revision is a bound
            for resource in ("pods", "services"):
                mine = [e.revision for e in events if e.key.resource == resource]
                assert mine == sorted(mine)
        with store.watch("services", r0 + 1) as w:
            assert [self.normalize(e.value) for e in collect(w, 1)] == [
                self.normalize(value(10))]

    def test_watch_resumes_from_last_seen_plus_one(self, store: Store) -> None:
        r0, (r1, r2, r3, r4, r5) = self._history(store)
        # One resource, when other writers share the revisions (its order is the contract).
        resource = None if self.EXCLUSIVE else "pods"
        expected = [r1, r2, r3, r4, r5] if self.EXCLUSIVE else [r1, r3, r4, r5]
        with store.watch(resource, r0 + 1) as w:
            first = collect(w, 2)[:2]  # the reader stops after two
        assert [e.revision for e in first] == expected[:2]
        with store.watch(resource, first[-1].revision + 1) as w:
            rest = collect(w, len(expected) - 2)
            assert w.next(0.2) == []
        assert [e.revision for e in rest][:-1] == expected[2:-1]
        assert rest[-1].revision >= expected[-1]
        if self.EXACT_DELETE_REVISION:
            assert rest[-1].revision == expected[-1]
        with store.watch("pods", r4) as w:
            tail = collect(w, 2)
        assert [(e.type, e.revision) for e in tail][:1] == [("PUT", r4)]
        assert tail[1].type == "DELETE" and tail[1].revision >= r5

    def test_watch_delivers_later_writes(self, store: Store) -> None:
        start = store.revision() + 1
        written: list[int] = []
        with store.watch("pods", start) as w:
            assert w.next(0.05) == []

            def writer(_: int) -> None:
                item = store.create(POD_A, value(1))
                store.create(SVC, value(2))
                written.extend([item.revision,
                                store.update(POD_A, value(3), item.revision).revision])

            run_threads(1, writer)
            events = collect(w, 2)
            assert w.next(0.2) == []
        assert [(e.revision, self.normalize(e.value)) for e in events] == [
            (written[0], self.normalize(value(1))), (written[1], self.normalize(value(3)))]
        if self.EXCLUSIVE:
            assert written == [start, start + 2]

    def test_watch_timeout_returns_empty(self, store: Store) -> None:
        store.create(SVC, value(1))  # another resource: must not wake a pods watch
        with store.watch("pods", store.revision() + 1) as w:
            began = time.monotonic()
            assert w.next(0.3) == []
            assert time.monotonic() - began >= 0.25
        with store.watch(None, store.revision() + 1) as w:
            assert w.next(0.0) == []

    # -- concurrency ----------------------------------------------------------------

    def test_concurrent_cas_has_exactly_one_winner(self, store: Store) -> None:
        item = store.create(POD_A, value(0))
        for round_ in range(1, 4):
            winner = self._cas_race(store, item.revision, round_, threads=6)
            item = store.get(POD_A)
            assert self.normalize(item.value) == self.normalize(value(round_, writer=winner))

    def _cas_race(self, store: Store, revision: int, n: int, threads: int) -> int:
        """``threads`` updates from one revision at once; returns the one winner."""
        barrier = threading.Barrier(threads)
        winners: list[int] = []
        lock = threading.Lock()

        def attempt(i: int) -> None:
            barrier.wait()
            try:
                store.update(POD_A, value(n, writer=i), revision)
            except Conflict:
                return
            with lock:
                winners.append(i)

        run_threads(threads, attempt)
        assert len(winners) == 1, winners
        return winners[0]

    def test_concurrent_create_has_exactly_one_winner(self, store: Store) -> None:
        barrier = threading.Barrier(5)
        created: list[int] = []

        def attempt(i: int) -> None:
            barrier.wait()
            try:
                store.create(POD_B, value(i))
            except Conflict:
                return
            created.append(i)

        run_threads(5, attempt)
        assert len(created) == 1
        assert self.normalize(store.get(POD_B).value) == self.normalize(value(created[0]))

    def test_concurrent_counter_loses_no_increment(self, store: Store) -> None:
        threads, times = 4, 15
        start = store.create(POD_A, value(0)).revision

        def increment(_: int) -> None:
            for _ in range(times):
                while True:
                    item = store.get(POD_A)
                    try:
                        store.update(POD_A, value(item.value["spec"]["n"] + 1), item.revision)
                        break
                    except Conflict:
                        continue

        with store.watch("pods", start + 1) as w:
            run_threads(threads, increment)
            events = collect(w, threads * times)
            assert w.next(0.1) == []
        total = threads * times
        assert self.normalize(store.get(POD_A).value) == self.normalize(value(total))
        revisions = [start] + [e.revision for e in events]
        for before, after in itertools.pairwise(revisions):
            self.next_after(before, after)
        assert [self.normalize(e.value) for e in events] == [
            self.normalize(value(n)) for n in range(1, total + 1)]
