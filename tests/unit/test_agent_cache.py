"""StoreCache: list, then fold watch events and the agent's own writes, revision-guarded."""

from __future__ import annotations

import pytest

from tabby.agent.cache import StoreCache
from tabby.errors import Compacted
from tabby.ipam import IPAM
from tabby.model import IPAMBlock, IPPool, Node, Pod, WorkloadEndpoint
from tabby.store.client import Client, key_of
from tabby.store.memory import MemoryStore


def node(name: str, v4: str) -> Node:
    return Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                               "metadata": {"name": name},
                               "spec": {"bgp": {"ipv4Address": v4}}})


def wep(node_name: str, pod: str, labels: dict[str, str] | None = None) -> WorkloadEndpoint:
    return WorkloadEndpoint.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{node_name}-k8s-{pod}-eth0", "namespace": "default",
                     "labels": labels or {}},
        "spec": {"node": node_name, "pod": pod, "interfaceName": "tab000000000001",
                 "ipNetworks": ["198.19.0.1/32"], "containerID": "c1"}})


def pod(name: str, labels: dict[str, str] | None = None) -> Pod:
    return Pod.from_manifest({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": name, "labels": labels or {}},
                              "spec": {"containers": [{"name": "c"}]}})


@pytest.fixture
def client() -> Client:
    return Client(MemoryStore())


def follow(cache: StoreCache, client: Client, start: int) -> set[str]:
    with client.store.watch(None, start) as w:
        return cache.apply(w.next(timeout=0.1))


def test_load_lists_kinds_and_every_nodes_endpoints(client: Client) -> None:
    client.create(node("node-1", "198.18.0.11/24"))
    client.create(wep("node-1", "a"))
    client.create(wep("node-2", "b"))
    client.create(pod("a"))
    cache = StoreCache(client.store, "node-1")
    start = cache.load()
    assert start == client.store.revision()
    snap = cache.snapshot()
    assert [n.meta.name for n in snap.nodes] == ["node-1"]
    # Policy needs other nodes' endpoints; routes read only the local ones.
    assert [e.spec.pod for e in snap.endpoints] == ["a", "b"]
    assert [e.spec.pod for e in snap.local_endpoints("node-1")] == ["a"]
    assert [e.spec.pod for e in cache.endpoints()] == ["a"]
    assert [p.meta.name for p in snap.pods] == ["a"]


def test_events_update_the_snapshot(client: Client) -> None:
    cache = StoreCache(client.store, "node-1")
    start = cache.load()
    client.create(node("node-2", "198.18.0.12/24"))
    created = client.create(wep("node-1", "a"))
    changed = follow(cache, client, start + 1)
    assert changed == {"nodes.tabby.dev", "workloadendpoints.tabby.dev"}
    assert cache.snapshot().node_address("node-2", 4) is not None
    client.delete(WorkloadEndpoint, created.meta.name, "default")
    assert follow(cache, client, start + 3) == {"workloadendpoints.tabby.dev"}
    assert cache.snapshot().endpoints == ()


def test_other_kinds_land_in_the_snapshot_and_ipam_bookkeeping_does_not(
        client: Client) -> None:
    cache = StoreCache(client.store, "node-1")
    start = cache.load()
    client.create(IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                        "metadata": {"name": "p"},
                                        "spec": {"cidr": "198.19.0.0/16"}}))
    IPAM(client).assign("net.c.eth0", "node-1", num_v4=1, num_v6=0)
    changed = follow(cache, client, start + 1)
    assert "ippools.tabby.dev" in changed and "ipamblocks.tabby.dev" in changed
    assert not changed & {"ipamhandles.tabby.dev", "blockaffinities.tabby.dev"}
    assert [p.meta.name for p in cache.snapshot().of(IPPool)] == ["p"]
    assert cache.revision == client.store.revision()


def test_own_write_is_not_undone_by_an_older_event(client: Client) -> None:
    cache = StoreCache(client.store, "node-1")
    start = cache.load()
    first = client.create(wep("node-1", "a", {"v": "1"}))
    second = client.update(first.with_meta(labels={"v": "2"}))
    cache.put(second)  # the agent records its own write at once
    follow(cache, client, start + 1)  # replays both events, the older one first
    [ep] = cache.snapshot().endpoints
    assert ep.meta.labels == {"v": "2"}


def test_own_delete_is_not_undone_by_an_older_put(client: Client) -> None:
    cache = StoreCache(client.store, "node-1")
    start = cache.load()
    created = client.create(wep("node-1", "a"))
    gone = client.delete(WorkloadEndpoint, created.meta.name, "default")
    cache.remove(key_of(created), int(gone.meta.resource_version))
    with client.store.watch(None, start + 1) as w:
        events = w.next(timeout=0.1)
    cache.apply(events[:1])  # only the PUT arrives first: the tombstone wins
    assert cache.snapshot().endpoints == ()
    cache.apply(events[1:])
    assert cache.snapshot().endpoints == ()


def test_endpoint_moving_to_another_node_is_no_longer_local(client: Client) -> None:
    cache = StoreCache(client.store, "node-1")
    created = client.create(wep("node-1", "a"))
    start = cache.load()
    moved = WorkloadEndpoint.from_manifest({**created.to_manifest()})
    doc = moved.to_manifest()
    doc["spec"]["node"] = "node-2"
    client.update(WorkloadEndpoint.from_manifest(doc))
    assert follow(cache, client, start + 1) == {"workloadendpoints.tabby.dev"}
    assert cache.snapshot().local_endpoints("node-1") == ()
    assert [e.spec.node for e in cache.snapshot().endpoints] == ["node-2"]
    assert cache.endpoints() == []


def test_compacted_history_is_reported_for_a_relist() -> None:
    store = MemoryStore(history=2)
    client = Client(store)
    cache = StoreCache(store, "node-1")
    start = cache.load()
    for i in range(5):
        client.create(node(f"node-{i}", f"198.18.0.{10 + i}/24"))
    with pytest.raises(Compacted), store.watch(None, start + 1) as w:
        w.next(timeout=0.1)
    cache.load()
    assert len(cache.snapshot().nodes) == 5


def test_blocks_are_cached_typed(client: Client) -> None:
    size = 64
    client.create(IPAMBlock.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPAMBlock", "metadata": {"name": "b"},
        "spec": {"cidr": "198.19.0.0/26", "affinity": "host:node-1",
                 "allocations": [None] * size, "unallocated": list(range(size)),
                 "attributes": []}}))
    cache = StoreCache(client.store, "node-1")
    cache.load()
    [block] = cache.snapshot().blocks
    assert block.node == "node-1"


def test_snapshot_by_difference_equals_a_fresh_build(client: Client) -> None:
    """Random puts, watch events and removals: every snapshot equals Snapshot.build over
    what the cache holds, kind by kind, in the same order."""
    import random

    from tabby.model import Namespace, Resource
    from tabby.snapshot import Snapshot

    rng = random.Random(7)
    cache = StoreCache(client.store, "node-1")
    start = cache.load() + 1

    def make(i: int) -> Resource:
        kind = i % 5
        if kind == 0:
            return node(f"node-{i % 7}", f"198.18.0.{10 + i % 7}/24")
        if kind == 1:
            return wep(f"node-{i % 3}", f"p{i % 11}", {"v": str(rng.randrange(3))})
        if kind == 2:
            return pod(f"p{i % 11}", {"v": str(rng.randrange(3))})
        if kind == 3:
            return Namespace.from_manifest({"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": f"ns-{i % 4}"}})
        return IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                     "metadata": {"name": f"pool-{i % 5}"},
                                     "spec": {"cidr": f"198.19.{i % 5}.0/24"}})

    for step in range(300):
        obj = make(rng.randrange(100))
        current = client.try_get(type(obj), obj.meta.name, obj.meta.namespace)
        if current is not None and rng.random() < 0.3:
            gone = client.delete(type(obj), obj.meta.name, obj.meta.namespace)
            if rng.random() < 0.5:
                cache.remove(key_of(current), int(gone.meta.resource_version or 0))
        else:
            stored, _ = client.apply(obj)
            if rng.random() < 0.5:
                cache.put(stored)
        if rng.random() < 0.3:  # the watch catches up
            follow(cache, client, start)
            start = client.store.revision() + 1
        if step % 3 == 0:
            snap = cache.snapshot()
            objects = [o for _, o in cache._objects.values()]
            fresh = Snapshot.build(
                nodes=[o for o in objects if isinstance(o, Node)],
                blocks=[o for o in objects if isinstance(o, IPAMBlock)],
                endpoints=[o for o in objects if isinstance(o, WorkloadEndpoint)],
                pods=[o for o in objects if isinstance(o, Pod)],
                namespaces=[o for o in objects if isinstance(o, Namespace)],
                others=[o for o in objects if not isinstance(
                    o, Node | IPAMBlock | WorkloadEndpoint | Pod | Namespace)])
            assert snap == fresh
            assert all(a is b for a, b in zip(snap.endpoints, fresh.endpoints, strict=True))
            assert cache.snapshot() is snap  # nothing changed since: the same object
    follow(cache, client, start)
    relisted = StoreCache(client.store, "node-1")
    relisted.load()
    assert cache.snapshot() == relisted.snapshot()
    assert [p.meta.name for p in cache.snapshot().of(IPPool)] == sorted(
        p.meta.name for p in client.list(IPPool))
