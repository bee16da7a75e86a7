"""Datastore URLs for etcd: etcds:// with its CA, client certificate and key (from the
query or $TABBY_ETCD_*), every bad input one ConfigError line naming what is wrong, and
the warning for plain HTTP to a remote etcd. Nothing here connects to anything."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabby.errors import ConfigError
from tabby.store import open_store
from tabby.store.etcd import EtcdStore
from tabby.store.etcdtls import EtcdTLS, tls_failure
from tabby.store.pki import CertificateAuthority, CertPair

EPS = "127.0.0.1:2379,127.0.0.1:2380"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, CertPair]:
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("tet-url") / "pki", "tet-ca")
    return ca, ca.client("client", "tabby")


@pytest.fixture
def opened() -> Iterator[list[EtcdStore]]:
    stores: list[EtcdStore] = []
    yield stores
    for store in stores:
        store.close()


def etcd(url: str, opened: list[EtcdStore], env: dict[str, str] | None = None) -> EtcdStore:
    store = open_store(url, env={} if env is None else env)
    assert isinstance(store, EtcdStore)
    opened.append(store)
    return store


def refused(url: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        open_store(url, env={} if env is None else env).close()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_etcds_query_names_ca_cert_and_key(pki: tuple[CertificateAuthority, CertPair],
                                           opened: list[EtcdStore]) -> None:
    ca, pair = pki
    url = f"etcds://{EPS}?ca={ca.ca_path}&cert={pair.cert}&key={pair.key}"
    store = etcd(url, opened)
    assert store.tls == EtcdTLS(ca.ca_path, pair.cert, pair.key)
    assert store.endpoints == ["127.0.0.1:2379", "127.0.0.1:2380"]
    assert store.url == url
    assert etcd(store.url, opened).tls == store.tls  # the URL round-trips


def test_etcds_from_the_environment_and_the_query_wins(
        pki: tuple[CertificateAuthority, CertPair], tmp_path: Path,
        opened: list[EtcdStore]) -> None:
    ca, pair = pki
    env = {"TABBY_ETCD_CA": str(ca.ca_path), "TABBY_ETCD_CERT": str(pair.cert),
           "TABBY_ETCD_KEY": str(pair.key)}
    assert etcd(f"etcds://{EPS}", opened, env).tls == EtcdTLS(ca.ca_path, pair.cert, pair.key)
    other = CertificateAuthority.create(tmp_path / "other", "other")
    store = etcd(f"etcds://{EPS}?ca={other.ca_path}", opened, env)
    assert store.tls == EtcdTLS(other.ca_path, pair.cert, pair.key)


def test_a_plus_in_a_path_is_a_plus(pki: tuple[CertificateAuthority, CertPair],
                                    tmp_path: Path, opened: list[EtcdStore]) -> None:
    ca, _ = pki
    odd = tmp_path / "c+a.crt"
    odd.write_bytes(ca.ca_path.read_bytes())
    store = etcd(f"etcds://{EPS}?ca={odd}", opened)
    assert store.tls == EtcdTLS(odd)
    assert "%2B" in store.url and etcd(store.url, opened).tls == store.tls


def test_etcds_with_a_ca_only_or_nothing(pki: tuple[CertificateAuthority, CertPair],
                                         opened: list[EtcdStore]) -> None:
    ca, _ = pki
    assert etcd(f"etcds://{EPS}?ca={ca.ca_path}", opened).tls == EtcdTLS(ca.ca_path)
    assert etcd(f"etcds://{EPS}", opened).tls == EtcdTLS()  # the system's CAs, no cert


def test_plain_etcd_is_unchanged(opened: list[EtcdStore]) -> None:
    store = etcd(f"etcd://{EPS}", opened)
    assert store.tls is None
    assert store.url == f"etcd://{EPS}"


def test_missing_file_is_named(pki: tuple[CertificateAuthority, CertPair],
                               tmp_path: Path) -> None:
    _, pair = pki
    message = refused(f"etcds://{EPS}?ca={tmp_path}/nope.crt&cert={pair.cert}&key={pair.key}")
    assert f"cannot read ca={tmp_path}/nope.crt (No such file or directory)" in message
    message = refused(f"etcds://{EPS}", {"TABBY_ETCD_CA": f"{tmp_path}/gone.crt"})
    assert f"cannot read $TABBY_ETCD_CA={tmp_path}/gone.crt" in message


def test_unreadable_or_wrong_key_is_named(pki: tuple[CertificateAuthority, CertPair],
                                          tmp_path: Path) -> None:
    ca, pair = pki
    base = f"etcds://{EPS}?ca={ca.ca_path}&cert={pair.cert}"
    message = refused(f"{base}&key={tmp_path}")  # a directory: read() fails even as root
    assert f"cannot read key={tmp_path} (Is a directory)" in message
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    message = refused(f"{base}&key={garbage}")
    assert f"key={garbage} are not a PEM certificate and its unencrypted private key" in message
    stranger = ca.client("stranger", "tabby")  # a real key, of another certificate
    message = refused(f"{base}&key={stranger.key}")
    assert f"key={stranger.key} do not belong together (the key is not the certificate's)" \
        in message


def test_ca_that_is_not_a_certificate(pki: tuple[CertificateAuthority, CertPair]) -> None:
    _, pair = pki
    message = refused(f"etcds://{EPS}?ca={pair.key}")
    assert f"ca={pair.key} is not a PEM CA certificate bundle" in message


def test_cert_without_key_and_key_without_cert(
        pki: tuple[CertificateAuthority, CertPair]) -> None:
    ca, pair = pki
    message = refused(f"etcds://{EPS}?ca={ca.ca_path}&cert={pair.cert}")
    assert f"cert={pair.cert} is given without a key (key= or $TABBY_ETCD_KEY)" in message
    message = refused(f"etcds://{EPS}", {"TABBY_ETCD_KEY": str(pair.key)})
    assert f"$TABBY_ETCD_KEY={pair.key} is given without a cert" in message


@pytest.mark.parametrize(("query", "words"), [
    ("ca=/x&cacert=/y", "unknown option 'cacert' (etcds:// takes ca=, cert= and key=)"),
    ("ca=/x&ca=/y", "ca= is given twice"),
    ("ca=", "ca= is empty"),
    ("ca=relative/ca.crt", "ca=relative/ca.crt is not an absolute path"),
    ("ca", "the query does not parse"),
])
def test_bad_query(query: str, words: str) -> None:
    assert words in refused(f"etcds://{EPS}?{query}")


def test_plain_etcd_refuses_tls_options(pki: tuple[CertificateAuthority, CertPair]) -> None:
    ca, _ = pki
    message = refused(f"etcd://{EPS}?ca={ca.ca_path}")
    assert "etcd:// is plain HTTP and takes no options; for TLS write etcds://" in message
    message = refused(f"etcd://{EPS}", {"TABBY_ETCD_CA": str(ca.ca_path)})
    assert "$TABBY_ETCD_CA is set but etcd:// is plain HTTP" in message


def test_no_endpoint() -> None:
    assert "name at least one etcd endpoint" in refused("etcds://?ca=/x")
    assert "expected HOST:PORT" in refused("etcds://nohost")


def test_plain_http_to_a_remote_etcd_warns_once(opened: list[EtcdStore],
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tabby.store.etcd"):
        etcd(f"etcd://{EPS},localhost:2379", opened)
        assert caplog.records == []
        etcd("etcd://127.0.0.1:2379,198.18.0.10:2379", opened)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "\n" not in message
    assert "plain HTTP to 198.18.0.10:2379 sends every value, BGP passwords among them" in message
    assert "127.0.0.1" not in message


@pytest.mark.parametrize(("error", "cert", "refused", "words"), [
    ("SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate"
     " verify failed: unable to get local issuer certificate (_ssl.c:992)'))", True, True,
     "etcd's certificate is not trusted (certificate verify failed: unable to get local"
     " issuer certificate); ca= (or $TABBY_ETCD_CA) must name the CA"),
    ("SSLError(SSLError(1, '[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate"
     " (_ssl.c:2546)'))", True, True,
     "etcd refused this client's certificate (sslv3 alert bad certificate)"),
    ("SSLError(SSLEOFError(8, 'EOF occurred in violation of protocol (_ssl.c:2393)'))",
     False, True, "it wants a client certificate; give cert= and key="),
    ("SSLError(SSLError(1, '[SSL: WRONG_SIGNATURE_TYPE] wrong signature type'))", True, False,
     "TLS: wrong signature type"),
])
def test_tls_failures_are_read(error: str, cert: bool, refused: bool, words: str) -> None:
    text = f"HTTPSConnectionPool(host='127.0.0.1', port=2379): Max retries (Caused by {error})"
    failure = tls_failure(text, cert)
    assert failure is not None
    assert failure.refused is refused
    assert words in failure.reason


def test_a_dead_member_is_no_tls_failure() -> None:
    assert tls_failure("('Connection aborted.', RemoteDisconnected('Remote end closed"
                       " connection without response'))", True) is None
    assert tls_failure("HTTPSConnectionPool(host='127.0.0.1', port=2379): Max retries"
                       " (Caused by NewConnectionError('Connection refused'))", True) is None
