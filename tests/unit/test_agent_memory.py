"""What keeps the agent's memory and pass latency down: shared strings in the cache,
snapshots indexed by kind, services computed by difference, the collector's handling."""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabby.agent import collector
from tabby.agent.cache import StoreCache
from tabby.model import EndpointSlice, K8sNetworkPolicy, ObjectMeta, Service
from tabby.model.service import SERVICE_NAME_LABEL, Endpoint, EndpointPort, ServicePort, ServiceSpec
from tabby.policy.index import LabelSets, wep_entity
from tabby.services import nft
from tabby.services.nft import ServiceRules, services_part
from tabby.services.shares import Part, ShareCache
from tabby.services.view import InputChanges
from tabby.snapshot import Snapshot
from tabby.store import open_store
from tabby.store.client import Client
from tabby.store.memory import MemoryStore
from tests.unit.test_agent_cache import wep

# -- the cache: one copy of each string, nothing of the listing kept ---------------------

def strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_cached_objects_share_strings_and_keep_none_of_the_listing() -> None:
    # strings made at run time (literals are interned already: shared by anyone)
    tag = format(random.Random(5).getrandbits(40), "x")
    labels = {f"app-{tag}": f"web-{tag}", f"tier-{tag}": f"front-{tag}"}
    client = Client(MemoryStore())
    for name in ("a", "b"):
        client.create(wep(f"node-{tag}", f"{name}-{tag}", labels))
    cache = StoreCache(client.store, f"node-{tag}")
    cache.load()
    a, b = cache.snapshot().endpoints
    assert a is not b
    for key in labels:
        ka = next(k for k in a.meta.labels if k == key)
        kb = next(k for k in b.meta.labels if k == key)
        assert ka is kb  # one copy of each label key and value for every endpoint
        assert a.meta.labels[key] is b.meta.labels[key]
    assert a.spec.node is b.spec.node
    held = next(k for k in cache._objects if k.name == a.meta.name)
    assert held.name is a.meta.name  # the key shares the name too
    # Nothing the parsed objects hold is a string of the listed documents: those
    # documents' memory can go back whole.
    listed = {id(s) for item in client.store.list("workloadendpoints.tabby.dev")
              for s in strings(item.value)}
    kept = [a.meta.name, a.spec.node, a.spec.pod, *a.meta.labels, *a.meta.labels.values()]
    assert all(tag in s for s in kept)
    assert not [s for s in kept if id(s) in listed]


def test_watch_events_share_strings_with_what_the_cache_holds(tmp_path: Path) -> None:
    tag = format(random.Random(6).getrandbits(40), "x")
    labels = {f"app-{tag}": f"web-{tag}"}
    client = Client(open_store(f"sqlite://{tmp_path / 'store.db'}"))  # decodes JSON: copies
    client.create(wep("node-1", "a", labels))
    cache = StoreCache(client.store, "node-1")
    start = cache.load()
    client.create(wep("node-1", "b", labels))
    with client.store.watch(None, start + 1) as w:
        cache.apply(w.next(timeout=0.5))
    a, b = cache.snapshot().endpoints
    assert a.meta.labels[f"app-{tag}"] is b.meta.labels[f"app-{tag}"]


def test_objects_without_labels_share_one_empty_mapping() -> None:
    one, two = wep("node-1", "a"), wep("node-1", "b")
    assert one.meta.labels is two.meta.annotations is one.meta.extra
    assert one.meta.labels == {} and one.meta == dataclasses.replace(one.meta, labels={})


# -- the snapshot: others by kind ----------------------------------------------------------

def service(i: int, ns: str = "default", headless: bool = False) -> Service:
    ips = () if headless else (ipaddress.ip_address(f"198.18.128.{i + 1}"),)
    spec = ServiceSpec(cluster_ips=ips, ip_families=(4,),
                       ports=(ServicePort(80, target_port=8080),))
    return Service(ObjectMeta(f"s{i}", ns), spec)


def slice_of(i: int, count: int, ns: str = "default", part: str = "x") -> EndpointSlice:
    eps = tuple(Endpoint((ipaddress.ip_address(f"198.19.{i}.{j + 1}"),), node_name="node-1")
                for j in range(count))
    return EndpointSlice(ObjectMeta(f"s{i}-{part}", ns, labels={SERVICE_NAME_LABEL: f"s{i}"}),
                         4, eps, (EndpointPort(8080),))


def test_snapshot_of_answers_by_kind_like_a_scan() -> None:
    objs = [service(1), slice_of(1, 2), service(2), slice_of(2, 1)]
    built = Snapshot.build(others=objs)
    plain = Snapshot(others=built.others)  # no index given: made on first use
    for snap in (built, plain):
        assert snap.of(Service) == (objs[0], objs[2])
        assert snap.of(EndpointSlice) == (objs[1], objs[3])
        assert snap.of(K8sNetworkPolicy) == ()
        assert snap.of(Service) is snap.of(Service)
    assert built == plain
    # replace() makes a new snapshot: its index follows its own others
    fewer = dataclasses.replace(built, others=(objs[0],))
    assert fewer.of(Service) == (objs[0],) and fewer.of(EndpointSlice) == ()


def test_cache_snapshots_keep_the_tuple_of_a_kind_that_did_not_change() -> None:
    client = Client(MemoryStore())
    client.create(service(1))
    client.create(slice_of(1, 1))
    cache = StoreCache(client.store, "node-1")
    cache.load()
    first = cache.snapshot()
    stored, _ = client.apply(slice_of(1, 2))
    cache.put(stored)
    second = cache.snapshot()
    assert second.of(Service) is first.of(Service)
    assert second.of(EndpointSlice) != first.of(EndpointSlice)
    assert second.of(EndpointSlice) == tuple(o for o in second.others
                                             if isinstance(o, EndpointSlice))


# -- services by difference ------------------------------------------------------------

def test_one_change_among_many_services_computes_one_share() -> None:
    calls: list[str] = []

    def compute(svc: Service, slices: tuple[EndpointSlice, ...]) -> Part:
        calls.append(svc.meta.name)
        return nft.service_share(svc, slices, "node-1")

    cache, inputs = ShareCache(compute), InputChanges()
    objs: list[object] = [o for i in range(200) for o in (service(i), slice_of(i, 2))]
    cache.update(inputs.changes(Snapshot.build(others=objs)))  # type: ignore[arg-type]
    assert len(calls) == 200
    calls.clear()
    objs[2 * 7 + 1] = slice_of(7, 3)
    merged = cache.update(inputs.changes(Snapshot.build(others=objs)))  # type: ignore[arg-type]
    assert calls == ["s7"]
    fresh = ShareCache(compute).update(InputChanges().changes(Snapshot.build(others=objs)))  # type: ignore[arg-type]
    assert merged == fresh
    calls.clear()
    again = cache.update(inputs.changes(Snapshot.build(others=objs)))  # type: ignore[arg-type]
    assert calls == [] and again is merged


def test_replayed_snapshots_match_a_fresh_computation() -> None:
    rng = random.Random(11)
    rules = ServiceRules("node-1")
    state: dict[tuple[str, int, str], Service | EndpointSlice] = {}
    for _ in range(250):
        i, ns = rng.randrange(8), rng.choice(["a", "b"])
        what = rng.choice(["svc", "svc", "headless", "drop-svc", "x", "y", "drop-x"])
        if what in ("svc", "headless"):
            state["svc", i, ns] = service(i, ns, headless=what == "headless")
        elif what == "drop-svc":
            state.pop(("svc", i, ns), None)
        elif what in ("x", "y"):  # two slices per service, now and then
            state[what, i, ns] = slice_of(i, rng.randrange(4), ns, what)
        else:
            state.pop(("x", i, ns), None)
        snapshot = Snapshot.build(others=list(state.values()))
        assert rules.part(snapshot) == services_part(snapshot, "node-1")


# -- policy entities: equal label sets shared --------------------------------------------

def test_entities_with_equal_labels_share_one_dict() -> None:
    sets = LabelSets()
    a = wep_entity(wep("node-1", "a", {"app": "web"}), {}, None, sets)
    b = wep_entity(wep("node-1", "b", {"app": "web"}), {}, None, sets)
    c = wep_entity(wep("node-1", "c", {"app": "db"}), {}, None, sets)
    assert a.labels is b.labels and a.labels is not c.labels
    assert c.labels["app"] == "db"
    sets.keep([c])  # a and b are gone: their set is forgotten
    d = wep_entity(wep("node-1", "d", {"app": "web"}), {}, None, sets)
    assert d.labels == a.labels and d.labels is not a.labels


# -- the collector -----------------------------------------------------------------------

@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_paused_keeps_the_collector_off_during_a_pass(unfrozen: None) -> None:
    assert gc.isenabled()
    collected: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        with collector.paused():
            assert not gc.isenabled()
            junk = [[i] for i in range(5 * gc.get_threshold()[0])]  # would collect
            assert collected == []
        assert gc.isenabled()
        assert collected  # the young generations, once, after the pass
        del junk
    finally:
        gc.callbacks.remove(seen)


def test_settle_freezes_what_is_alive(unfrozen: None) -> None:
    held = [{"x": i} for i in range(1000)]
    collector.settle()
    assert gc.get_freeze_count() >= len(held)
