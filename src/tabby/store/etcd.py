"""etcd v3 backend, through etcd's gRPC-gateway (HTTP/JSON) with ``etcd3gw``.

Keys are ``Key.path()`` (``/tabby/RESOURCE/NAMESPACE|_/NAME``), values JSON.
etcd's own revision is the store revision; every write is one transaction,
so each create/update/delete bumps it by exactly one::

    create   if create_revision(k) == 0                 then put
    update   if create_revision(k) > 0 and mod_revision(k) == rev  then put (prev_kv)
    delete   if create_revision(k) > 0 [and mod_revision(k) == rev] then delete (prev_kv)
             else range(k): empty -> NotFound, else Conflict

Endpoints: requests go to the current endpoint; on a transport error or a
503/504 (no leader, request timed out) the store moves to the next endpoint
and retries, cycling with a short backoff until ``op_timeout``. When no
endpoint answers at all in a full cycle it raises ``Unavailable`` at once.
Each request waits at most ``request_timeout``: after the leader dies, a
write sent to a follower hangs until etcd's own timeout (5 s + 2 election
timeouts) although a new leader is ready much sooner. Retrying a write whose
reply was lost is safe because every write is a compare-and-swap: it cannot
apply twice, but it may then report ``Conflict`` (or ``NotFound`` for a
delete) for a write that did land, as any etcd client may after a timeout.
``list`` reads in pages of ``page_size``, all at the first page's revision.

Watches do not use etcd3gw's watcher: it swallows a broken stream and the
gateway's compaction notice. Each ``Watch`` runs a reader thread with its own
HTTP session on ``/v3/watch`` (prev_kv on, so DELETE events carry the last
value), feeding a queue. When the stream breaks (the member died, or it was
idle longer than ``watch_idle``) the reader reconnects, to the next endpoint
if the current one refuses, from the last delivered revision + 1: no gaps and
no duplicates. A compacted start revision raises ``Compacted`` from ``next``;
no endpoint reachable for ``op_timeout`` raises ``Unavailable``.

TLS (``etcds://``, ``tls=EtcdTLS(...)``, see ``tabby.store.etcdtls``): every
client and every watch session verifies etcd against the CA and presents the
client certificate; the rest is unchanged. A certificate refused by every
endpoint (either way round) raises ``Forbidden`` at once, as a retry cannot
help; plain HTTP to a non-loopback endpoint logs a warning.

etcd starts at revision 1 (not 0) on a fresh cluster.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception
from requests.adapters import HTTPAdapter

from tabby.errors import (
    Compacted,
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    StoreError,
    Unavailable,
)
from tabby.store import etcdwire as wire
from tabby.store.base import PREFIX, Event, Item, Key, ListResult, QueuedWatch, Store, Value, Watch
from tabby.store.etcdtls import EtcdTLS, plain_warning, tls_failure

__all__ = ["EtcdStore"]

API_PATH = "/v3/"  # etcd >= 3.4 serves the gateway here (3.3: /v3beta/)
T = TypeVar("T")
Json = dict[str, Any]
Events = list[Event]  # (inside a Store class, ``list`` is the method)
log = logging.getLogger(__name__)


class EtcdStore(Store):
    def __init__(self, endpoints: list[str], *, tls: EtcdTLS | None = None,
                 request_timeout: float = 3.0, op_timeout: float = 15.0,
                 watch_idle: float = 30.0, page_size: int = 500) -> None:
        if not endpoints:
            raise ConfigError("etcd store: name at least one endpoint HOST:PORT")
        self.endpoints = list(endpoints)
        self.tls = tls
        self._client_cert = tls is not None and tls.cert is not None
        if tls is None:
            self.url = "etcd://" + ",".join(self.endpoints)
            warning = plain_warning(self.endpoints)
            if warning:
                log.warning("%s", warning)
        else:
            query = tls.query()
            self.url = "etcds://" + ",".join(self.endpoints) + (f"?{query}" if query else "")
        self.request_timeout = request_timeout
        self.op_timeout = op_timeout
        self.watch_idle = watch_idle
        self.page_size = page_size
        self._clients = [_client(ep, request_timeout, tls) for ep in self.endpoints]
        self._current = 0
        self._lock = threading.Lock()
        self._watches: weakref.WeakSet[_EtcdWatch] = weakref.WeakSet()

    # -- endpoints and retries --------------------------------------------------

    def _endpoint(self) -> tuple[int, Etcd3Client]:
        with self._lock:
            return self._current, self._clients[self._current]

    def _failed(self, index: int) -> None:
        """Move on from endpoint ``index`` (unless another thread already did)."""
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._clients)

    def _call(self, what: str, fn: Callable[[Etcd3Client], T]) -> T:
        deadline = time.monotonic() + self.op_timeout
        delay = 0.05
        while True:
            answered = False
            refused = 0
            errors: list[tuple[str, str]] = []  # (endpoint, what went wrong)
            for _ in self._clients:
                index, client = self._endpoint()
                try:
                    return fn(client)
                except (ConnectionFailedError, ConnectionTimeoutError) as e:
                    tls = tls_failure(e.detail_text or "", self._client_cert)
                    if tls is not None and tls.refused:
                        refused += 1
                    answered = answered or wire.answered(e)
                    why = tls.reason if tls is not None else wire.describe(e)
                    errors.append((self.endpoints[index], why))
                    self._failed(index)
                except Etcd3Exception as e:
                    raise StoreError(f"etcd {what}: {wire.describe(e)}") from e
            if refused == len(self._clients):
                raise Forbidden(f"etcd {what}: refused by every endpoint"
                                f" ({wire.summary(errors)})")
            if not answered or time.monotonic() + delay > deadline:
                verdict = "no endpoint answered" if not answered else "gave up"
                raise Unavailable(f"etcd {what}: {verdict} ({wire.summary(errors)}); is the"
                                  f" cluster up and does it have a leader?{self._hint(errors)}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _hint(self, errors: list[tuple[str, str]]) -> str:
        """etcd serving TLS closes a plain HTTP request without a word: say what it may mean."""
        if self.tls is None and any("without response" in why for _, why in errors):
            return " (if etcd serves TLS, the URL is etcds://...?ca=...&cert=...&key=...)"
        return ""

    def _post(self, what: str, path: str, body: Json) -> Json:
        def send(client: Etcd3Client) -> Json:
            reply: Json = client.post(client.get_url(path), json=body)
            return reply
        return self._call(what, send)

    # -- reads ------------------------------------------------------------------

    def get(self, key: Key) -> Item:
        reply = self._post(f"get {key}", "/kv/range", {"key": wire.b64(key.path())})
        kvs = reply.get("kvs") or []
        if not kvs:
            raise NotFound(f"{key} not found")
        return wire.item(kvs[0])

    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        base = f"{PREFIX}{resource}/"
        if namespace is not None:
            base += f"{namespace or '_'}/{prefix}"
        start, end = base.encode(), wire.prefix_end(base.encode())
        items: list[Item] = []
        revision: int | None = None
        while True:
            body: Json = {"key": wire.b64(start), "range_end": wire.b64(end),
                          "limit": self.page_size}
            if revision is not None:
                body["revision"] = revision  # later pages read the same snapshot
            reply = self._post(f"list {resource}", "/kv/range", body)
            if revision is None:
                revision = wire.header_revision(reply)
            kvs = reply.get("kvs") or []
            items.extend(wire.item(kv) for kv in kvs)
            if not reply.get("more") or not kvs:
                break
            start = base64.b64decode(kvs[-1]["key"]) + b"\0"  # just after the last
        if namespace is None and prefix:
            items = [i for i in items if i.key.name.startswith(prefix)]
        # etcd sorts by path bytes ("_" for no namespace); the contract sorts by Key.
        return ListResult(tuple(sorted(items, key=lambda i: i.key)), revision)

    def revision(self) -> int:
        reply = self._post("revision", "/kv/range", {"key": wire.b64(PREFIX), "count_only": True})
        return wire.header_revision(reply)

    # -- writes -----------------------------------------------------------------

    def create(self, key: Key, value: Value) -> Item:
        path, text = key.path(), wire.dump(key, value)
        reply = self._txn(f"create {key}", [wire.compare(path, "CREATE", "EQUAL", 0)],
                          {"request_put": {"key": wire.b64(path), "value": wire.b64(text)}})
        if not reply.get("succeeded"):
            raise Conflict(f"{key} already exists")
        rev = wire.header_revision(reply)
        return Item(key, json.loads(text), rev, rev)

    def update(self, key: Key, value: Value, revision: int) -> Item:
        path, text = key.path(), wire.dump(key, value)
        reply = self._txn(f"update {key}", [wire.compare(path, "CREATE", "GREATER", 0),
                                            wire.compare(path, "MOD", "EQUAL", revision)],
                          {"request_put": {"key": wire.b64(path), "value": wire.b64(text),
                                           "prev_kv": True}})
        if not reply.get("succeeded"):
            raise wire.cas_failure(key, reply, revision)
        prev = reply["responses"][0]["response_put"].get("prev_kv") or {}
        rev = wire.header_revision(reply)
        return Item(key, json.loads(text), rev, int(prev.get("create_revision", rev)))

    def delete(self, key: Key, revision: int | None = None) -> Item:
        path = key.path()
        compare = [wire.compare(path, "CREATE", "GREATER", 0)]
        if revision is not None:
            compare.append(wire.compare(path, "MOD", "EQUAL", revision))
        reply = self._txn(f"delete {key}", compare,
                          {"request_delete_range": {"key": wire.b64(path), "prev_kv": True}})
        if not reply.get("succeeded"):
            raise wire.cas_failure(key, reply, revision)
        prev = reply["responses"][0]["response_delete_range"].get("prev_kvs") or []
        if not prev:  # cannot happen: the compare and the delete are one transaction
            raise NotFound(f"{key} not found")
        old = wire.item(prev[0])
        return Item(key, old.value, wire.header_revision(reply), old.create_revision)

    def _txn(self, what: str, compare: Sequence[Json], success: Json) -> Json:
        body = {"compare": compare, "success": [success],
                "failure": [{"request_range": {"key": compare[0]["key"]}}]}
        return self._post(what, "/kv/txn", body)

    # -- watch ------------------------------------------------------------------

    def watch(self, resource: str | None, start_revision: int) -> Watch:
        # etcd reads start_revision 0 as "from now"; the contract means "from the start".
        w = _EtcdWatch(self, f"{PREFIX}{resource}/" if resource else PREFIX,
                       max(start_revision, 1))
        self._watches.add(w)
        return w

    def close(self) -> None:
        for w in list(self._watches):
            w.close()
        for client in self._clients:
            client.session.close()


class _EtcdWatch(QueuedWatch):
    def __init__(self, store: EtcdStore, prefix: str, start: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next = start
        super().__init__()
        self._closed = threading.Event()
        self._resp: requests.Response | None = None
        self._resp_lock = threading.Lock()
        self._established = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"etcd-watch {prefix}@{start}")
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with self._resp_lock:
            if self._resp is not None:
                _shutdown(self._resp)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    # -- the reader thread ---------------------------------------------------------

    def _run(self) -> None:
        session = _session(self._store.tls)
        try:
            self._loop(session)
        except StoreError as e:
            self.put(e)
        except Exception as e:  # a reader thread must never die silently
            self.put(StoreError(f"etcd watch {self._prefix}: {e!r}"))
        finally:
            session.close()

    def _loop(self, session: requests.Session) -> None:
        store = self._store
        down_since: float | None = None
        delay = 0.05
        refused: dict[str, str] = {}  # endpoints that refused TLS in a row, and how
        while not self._closed.is_set():
            index, client = store._endpoint()
            self._established = False
            try:
                self._stream(session, client)  # returns when the stream ends (idle timeout)
            except _NotConnected as e:
                store._failed(index)
                tls = tls_failure(str(e), store._client_cert)
                if tls is None or not tls.refused:
                    refused.clear()  # anything else breaks the row
                else:
                    refused[store.endpoints[index]] = tls.reason
                    if len(refused) == len(store.endpoints):
                        raise Forbidden(f"etcd watch {self._prefix}: refused by every endpoint"
                                        f" ({wire.summary(list(refused.items()))})") from e
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > store.op_timeout:
                    last = tls.reason if tls is not None else str(e)
                    raise Unavailable(f"etcd watch {self._prefix}: no endpoint reachable for"
                                      f" {store.op_timeout:.0f}s (last: {last})"
                                      f"{store._hint([('', last)])}") from e
            except (requests.RequestException, OSError, ValueError):
                refused.clear()  # the stream broke (member gone, bad reply): reconnect from _next
            if self._established:
                down_since, delay = None, 0.05
                refused.clear()
            self._closed.wait(delay)
            delay = min(delay * 2, 0.5)

    def _stream(self, session: requests.Session, client: Etcd3Client) -> None:
        """Read one watch stream until it ends or breaks."""
        body = {"create_request": {"key": wire.b64(self._prefix),
                                   "range_end": wire.b64(wire.prefix_end(self._prefix.encode())),
                                   "start_revision": self._next, "prev_kv": True}}
        try:
            resp = session.post(client.get_url("/watch"), json=body, stream=True,
                                timeout=(self._store.request_timeout, self._store.watch_idle))
        except requests.ConnectionError as e:
            raise _NotConnected(str(e)) from e
        with resp:
            with self._resp_lock:
                if self._closed.is_set():
                    return
                self._resp = resp
            try:
                if resp.status_code != 200:
                    raise _NotConnected(f"HTTP {resp.status_code}: {resp.text[:200]}")
                self._read(resp)
            finally:
                with self._resp_lock:
                    self._resp = None

    def _read(self, resp: requests.Response) -> None:
        buf = b""
        for chunk in resp.iter_content(chunk_size=None):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    self._handle(json.loads(line))

    def _handle(self, msg: Json) -> None:
        if "error" in msg:
            raise ValueError(f"watch stream error: {msg['error']}")
        result: Json = msg.get("result") or {}
        if result.get("canceled"):
            compact = int(result.get("compact_revision") or 0)
            if compact:
                raise Compacted(f"etcd watch {self._prefix}: revision {self._next} is"
                                f" compacted (oldest kept: {compact}); list again and watch"
                                " from its revision")
            raise ValueError(f"watch canceled: {result.get('cancel_reason', '')}")
        if result.get("created"):
            self._established = True
        events = [e for e in map(wire.event, result.get("events") or [])
                  if e.revision >= self._next]
        if events:
            self._next = events[-1].revision + 1
            self.put(events)


class _NotConnected(Exception):
    """The watch could not reach its endpoint (move on to the next one)."""


# -- encoding and decoding ------------------------------------------------------------


def _client(endpoint: str, timeout: float, tls: EtcdTLS | None) -> Etcd3Client:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"etcd endpoint {endpoint!r}: expected HOST:PORT")
    session = _session(tls)
    protocol = "http" if tls is None else "https"
    session.mount(f"{protocol}://", HTTPAdapter(pool_connections=1, pool_maxsize=32))
    return Etcd3Client(host=host.strip("[]"), port=int(port), protocol=protocol,
                       timeout=timeout, api_path=API_PATH, session=session)


def _session(tls: EtcdTLS | None) -> requests.Session:
    session = requests.Session()
    # etcd is reached directly; without this, requests re-reads proxy settings
    # from the environment on every call (about 13% of the client's CPU).
    session.trust_env = False
    if tls is not None:
        tls.configure(session)
    return session


def _shutdown(resp: requests.Response) -> None:
    """Unblock a reader stuck in recv() on ``resp`` by shutting its socket down."""
    conn = getattr(resp.raw, "connection", None)
    sock: socket.socket | None = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
