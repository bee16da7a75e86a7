"""The store contract on a real 3-member etcd cluster (Debian's etcd 3.4), plus
failover: a member dies mid-test and writes and an open watch carry on.

Everything runs twice: on a plain cluster and on one run as Calico runs it
(``EtcdCluster(tls=True)``: https, client certificates required of clients
and peers). Against the TLS cluster, a client without a certificate, with a
certificate of another CA, or trusting another CA is refused with one line
naming TLS (``Forbidden``), and a plain-HTTP client is told to use etcds://.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from etcd3gw.client import Etcd3Client

from tabby.errors import Compacted, Conflict, Forbidden, Unavailable
from tabby.store import open_store
from tabby.store.base import PREFIX, Key, Store
from tabby.store.etcd import API_PATH, EtcdStore
from tabby.store.etcdtls import EtcdTLS
from tabby.store.pki import CertificateAuthority
from tabby.testing.etcd import EtcdCluster, free_ports
from tests.store_contract import POD_A, StoreContract, collect, value

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="needs the etcd binary (apt-get install etcd-server)")


def raw_client(cluster: EtcdCluster, index: int) -> Etcd3Client:
    """etcd3gw's own client on member ``index`` (with the cluster's certificates)."""
    host, _, port = cluster.endpoints[index].rpartition(":")
    tls = cluster.store_tls
    if tls is None:
        return Etcd3Client(host=host, port=int(port), api_path=API_PATH, timeout=5)
    # Our own session: requests lets $REQUESTS_CA_BUNDLE override a session's CA.
    session = requests.Session()
    session.trust_env = False
    tls.configure(session)
    return Etcd3Client(host=host, port=int(port), api_path=API_PATH, timeout=5,
                       protocol="https", session=session)


def leader_index(cluster: EtcdCluster) -> int:
    for i in range(cluster.size):
        client = raw_client(cluster, i)
        try:
            status = client.status()
        finally:
            client.session.close()
        if status["leader"] == status["header"]["member_id"]:
            return i
    raise AssertionError("no member is the leader")


@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as c:
        yield c


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3, tls=True) as c:
        yield c


@pytest.fixture(scope="module", params=["plain", "tls"])
def cluster(request: pytest.FixtureRequest) -> EtcdCluster:
    found: EtcdCluster = request.getfixturevalue(f"{request.param}_cluster")
    return found


class TestEtcdStore(StoreContract):
    FRESH_STORE = False  # one cluster for the module; each test starts from a wiped prefix

    @pytest.fixture
    def store(self, cluster: EtcdCluster) -> Iterator[EtcdStore]:
        client = raw_client(cluster, 0)
        try:
            client.delete_prefix(PREFIX)
        finally:
            client.session.close()
        # Small pages, so that the list tests also cover paging at one revision.
        with EtcdStore(cluster.endpoints, tls=cluster.store_tls, page_size=3) as store:
            assert isinstance(store, EtcdStore)
            yield store


def test_values_are_json_under_key_paths(cluster: EtcdCluster) -> None:
    with open_store(cluster.url) as store:
        item = store.create(Key("pods", "", "raw"), value(1, note="ü"))
        client = raw_client(cluster, 1)
        try:
            [(raw, meta)] = client.get("/tabby/pods/_/raw", metadata=True)
        finally:
            client.session.close()
        assert json.loads(raw) == value(1, note="ü")
        assert int(meta["mod_revision"]) == item.revision
        assert store.url == cluster.url
        assert cluster.url.startswith("etcds://" if cluster.tls else "etcd://")
    with open_store(store.url) as again:
        assert isinstance(again, EtcdStore)
        assert again.tls == cluster.store_tls
        assert again.get(item.key) == item


def test_compacted_history_raises_compacted(cluster: EtcdCluster) -> None:
    with EtcdStore(cluster.endpoints, tls=cluster.store_tls) as store:
        first = store.create(Key("pods", "c", "p0"), value(0)).revision
        for i in range(1, 4):
            store.create(Key("pods", "c", f"p{i}"), value(i))
        client = raw_client(cluster, 0)
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
    with EtcdStore([f"127.0.0.1:{dead}", *cluster.endpoints], tls=cluster.store_tls) as store:
        item = store.create(Key("pods", "f", "over"), value(1))
        assert store.get(item.key) == item
        with store.watch("pods", item.revision) as w:
            assert [e.key for e in collect(w, 1)] == [item.key]


def test_idle_watch_reconnects_without_gaps_or_repeats(cluster: EtcdCluster) -> None:
    with EtcdStore(cluster.endpoints, tls=cluster.store_tls, watch_idle=0.3) as store:
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


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_member_killed_mid_test_writes_and_watch_carry_on(tls: bool) -> None:
    """Kill the member that is the leader, the store's endpoint and the watch's
    endpoint all at once, while a writer runs: nothing lost, nothing twice."""
    with EtcdCluster(3, tls=tls) as cluster:
        leader = leader_index(cluster)
        endpoints = cluster.endpoints
        endpoints.insert(0, endpoints.pop(leader))  # the store starts on the leader
        total, kill_after = 60, 20
        written = threading.Event()
        done: list[Key] = []
        with EtcdStore(endpoints, tls=cluster.store_tls, request_timeout=1.0) as store:
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


# -- TLS refusals -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("tet-other") / "pki", "other")


def refused(tls_cluster: EtcdCluster, tls: EtcdTLS) -> tuple[str, str]:
    """The one-line errors a store with ``tls`` gets for a read and for a watch."""
    with EtcdStore(tls_cluster.endpoints, tls=tls, op_timeout=3.0) as store:
        with pytest.raises(Forbidden) as read:
            store.get(POD_A)
        with pytest.raises(Forbidden) as watched, store.watch("pods", 1) as w:
            collect(w, 1, timeout=10)
    return str(read.value), str(watched.value)


def test_tls_client_without_a_certificate_is_refused(tls_cluster: EtcdCluster) -> None:
    assert tls_cluster.ca is not None
    for message in refused(tls_cluster, EtcdTLS(tls_cluster.ca.ca_path)):
        assert "refused by every endpoint" in message
        assert "TLS: etcd closed the connection" in message
        assert "wants a client certificate" in message


def test_tls_certificate_of_another_ca_is_refused(tls_cluster: EtcdCluster,
                                                  other_ca: CertificateAuthority) -> None:
    assert tls_cluster.ca is not None
    stranger = other_ca.client("stranger", "tabby")
    for message in refused(tls_cluster, EtcdTLS(tls_cluster.ca.ca_path, stranger.cert,
                                                stranger.key)):
        assert "TLS: etcd refused this client's certificate" in message
        assert "--trusted-ca-file" in message


def test_tls_client_trusting_another_ca_refuses_etcd(tls_cluster: EtcdCluster,
                                                     other_ca: CertificateAuthority) -> None:
    pair = tls_cluster.client_pair
    assert pair is not None
    for message in refused(tls_cluster, EtcdTLS(other_ca.ca_path, pair.cert, pair.key)):
        assert "TLS: etcd's certificate is not trusted" in message
        assert "certificate verify failed" in message


def test_plain_http_to_tls_etcd_says_etcds(tls_cluster: EtcdCluster) -> None:
    with EtcdStore(tls_cluster.endpoints, op_timeout=1.0) as store:
        with pytest.raises(Unavailable, match=r"if etcd serves TLS, the URL is etcds://"):
            store.get(POD_A)
        with pytest.raises(Unavailable, match=r"etcds://"), store.watch("pods", 1) as w:
            collect(w, 1, timeout=10)


def test_cli_without_a_certificate_prints_one_line(tls_cluster: EtcdCluster) -> None:
    """What an operator sees: one line naming TLS, a non-zero exit, no traceback."""
    ca = tls_cluster.ca
    assert ca is not None
    url = f"etcds://{','.join(tls_cluster.endpoints)}?ca={ca.ca_path}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABBY_")}
    done = subprocess.run([sys.executable, "-m", "tabby.cli.main", "--datastore", url,
                           "get", "ippools", "-o", "json"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "wants a client certificate" in line
    assert done.stdout == ""
