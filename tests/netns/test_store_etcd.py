"""The store contract on a real 3-member etcd cluster (Debian's etcd 3.4), plus
failover: a member dies mid-test and writes and an open watch carry on."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator

import pytest
from etcd3gw.client import Etcd3Client

from tabby.errors import Compacted, Conflict, Unavailable
from tabby.store import open_store
from tabby.store.base import PREFIX, Key, Store
from tabby.store.etcd import API_PATH, EtcdStore
from tabby.testing.etcd import EtcdCluster, free_ports
from tests.store_contract import POD_A, StoreContract, collect, value

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="needs the etcd binary (apt-get install etcd-server)")


def raw_client(endpoint: str) -> Etcd3Client:
    host, _, port = endpoint.rpartition(":")
    return Etcd3Client(host=host, port=int(port), api_path=API_PATH, timeout=5)


def leader_index(cluster: EtcdCluster) -> int:
    for i, endpoint in enumerate(cluster.endpoints):
        client = raw_client(endpoint)
        try:
            status = client.status()
        finally:
            client.session.close()
        if status["leader"] == status["header"]["member_id"]:
            return i
    raise AssertionError("no member is the leader")


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as c:
        yield c


class TestEtcdStore(StoreContract):
    FRESH_STORE = False  # one cluster for the module; each test starts from a wiped prefix

    @pytest.fixture
    def store(self, cluster: EtcdCluster) -> Iterator[EtcdStore]:
        client = raw_client(cluster.endpoints[0])
        try:
            client.delete_prefix(PREFIX)
        finally:
            client.session.close()
        # Small pages, so that the list tests also cover paging at one revision.
        with EtcdStore(cluster.endpoints, page_size=3) as store:
            assert isinstance(store, EtcdStore)
            yield store


def test_values_are_json_under_key_paths(cluster: EtcdCluster) -> None:
    with EtcdStore(cluster.endpoints) as store:
        item = store.create(Key("pods", "", "raw"), value(1, note="ü"))
        client = raw_client(cluster.endpoints[1])
        try:
            [(raw, meta)] = client.get("/tabby/pods/_/raw", metadata=True)
        finally:
            client.session.close()
        assert json.loads(raw) == value(1, note="ü")
        assert int(meta["mod_revision"]) == item.revision
        assert store.url == "etcd://" + ",".join(cluster.endpoints)
    assert isinstance(open_store(store.url), EtcdStore)


def test_compacted_history_raises_compacted(cluster: EtcdCluster) -> None:
    with EtcdStore(cluster.endpoints) as store:
        first = store.create(Key("pods", "c", "p0"), value(0)).revision
        for i in range(1, 4):
            store.create(Key("pods", "c", f"p{i}"), value(i))
        client = raw_client(cluster.endpoints[0])
        try:
            client.post(client.get_url("/kv/compaction"), json={"revision": first + 2})
        finally:
            client.session.close()
        with pytest.raises(Compacted), store.watch("pods", first + 1) as w:
            w.next(5.0)
        with store.watch("pods", first + 2) as w:
            assert [e.revision for e in collect(w, 2)] == [first + 2, first + 3]


def test_dead_first_endpoint_fails_over(cluster: EtcdCluster) -> None:
    [dead] = free_ports(1)
    with EtcdStore([f"127.0.0.1:{dead}", *cluster.endpoints]) as store:
        item = store.create(Key("pods", "f", "over"), value(1))
        assert store.get(item.key) == item
        with store.watch("pods", item.revision) as w:
            assert [e.key for e in collect(w, 1)] == [item.key]


def test_idle_watch_reconnects_without_gaps_or_repeats(cluster: EtcdCluster) -> None:
    with EtcdStore(cluster.endpoints, watch_idle=0.3) as store:
        first = store.create(Key("pods", "i", "one"), value(1))
        with store.watch("pods", first.revision) as w:
            assert [e.revision for e in collect(w, 1)] == [first.revision]
            assert w.next(1.0) == []  # the stream timed out and reconnected meanwhile
            second = store.create(Key("pods", "i", "two"), value(2))
            assert [e.revision for e in collect(w, 1)] == [second.revision]
            assert w.next(0.7) == []
    deadline = time.monotonic() + 5
    while watch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watch_threads() == []


def watch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("etcd-watch")]


def test_no_endpoint_answering_is_unavailable() -> None:
    ports = free_ports(2)
    with EtcdStore([f"127.0.0.1:{p}" for p in ports], op_timeout=0.5) as store:
        with pytest.raises(Unavailable):
            store.get(POD_A)
        with pytest.raises(Unavailable):
            store.create(POD_A, value(1))
        with pytest.raises(Unavailable), store.watch(None, 1) as w:
            collect(w, 1, timeout=10)


def test_member_killed_mid_test_writes_and_watch_carry_on() -> None:
    """Kill the member that is the leader, the store's endpoint and the watch's
    endpoint all at once, while a writer runs: nothing lost, nothing twice."""
    with EtcdCluster(3) as cluster:
        leader = leader_index(cluster)
        endpoints = cluster.endpoints
        endpoints.insert(0, endpoints.pop(leader))  # the store starts on the leader
        total, kill_after = 60, 20
        written = threading.Event()
        done: list[Key] = []
        with EtcdStore(endpoints, request_timeout=1.0) as store:
            start = store.revision() + 1
            assert start == 2  # a fresh etcd is at revision 1, not 0
            with store.watch(None, start) as w:
                assert w.next(0.2) == []  # the watch's stream is open on the leader

                def writer() -> None:
                    for i in range(total):
                        key = Key("pods", "k", f"p{i:03d}")
                        create(store, key, value(i))
                        done.append(key)
                        if i == kill_after:
                            written.set()

                thread = threading.Thread(target=writer)
                thread.start()
                try:
                    assert written.wait(30)
                    cluster.kill(leader)
                    events = collect(w, total, timeout=40)
                finally:
                    thread.join(40)
                assert not thread.is_alive()
                assert w.next(0.3) == []
            assert len(done) == total
            listing = store.list("pods", "k")
        assert [e.revision for e in events] == list(range(start, start + total))
        assert [(e.type, e.key, e.value) for e in events] == [
            ("PUT", Key("pods", "k", f"p{i:03d}"), value(i)) for i in range(total)]
        assert [i.key for i in listing] == done
        assert listing.revision == start + total - 1


def create(store: Store, key: Key, doc: dict[str, object]) -> None:
    """Create, riding out the election; a reply lost with the member may leave
    the create applied, which a retry then sees as Conflict with our value."""
    deadline = time.monotonic() + 30
    while True:
        try:
            store.create(key, doc)
            return
        except Conflict:
            assert store.get(key).value == doc
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise

