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

etcd starts at revision 1 (not 0) on a fresh cluster.
"""

from __future__ import annotations

import base64
import contextlib
import json
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

from tabby.errors import Compacted, ConfigError, Conflict, NotFound, StoreError, Unavailable
from tabby.store.base import PREFIX, Event, Item, Key, ListResult, QueuedWatch, Store, Value, Watch

__all__ = ["EtcdStore"]

API_PATH = "/v3/"  # etcd >= 3.4 serves the gateway here (3.3: /v3beta/)
T = TypeVar("T")
Json = dict[str, Any]
Events = list[Event]  # (inside a Store class, ``list`` is the method)


class EtcdStore(Store):
    def __init__(self, endpoints: list[str], *, request_timeout: float = 3.0,
                 op_timeout: float = 15.0, watch_idle: float = 30.0,
                 page_size: int = 500) -> None:
        if not endpoints:
            raise ConfigError("etcd store: name at least one endpoint HOST:PORT")
        self.endpoints = list(endpoints)
        self.url = "etcd://" + ",".join(self.endpoints)
        self.request_timeout = request_timeout
        self.op_timeout = op_timeout
        self.watch_idle = watch_idle
        self.page_size = page_size
        self._clients = [_client(ep, request_timeout) for ep in self.endpoints]
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
            errors: list[str] = []
            for _ in self._clients:
                index, client = self._endpoint()
                try:
                    return fn(client)
                except (ConnectionFailedError, ConnectionTimeoutError) as e:
                    answered = answered or _answered(e)
                    errors.append(f"{self.endpoints[index]}: {_describe(e)}")
                    self._failed(index)
                except Etcd3Exception as e:
                    raise StoreError(f"etcd {what}: {_describe(e)}") from e
            if not answered or time.monotonic() + delay > deadline:
                verdict = "no endpoint answered" if not answered else "gave up"
                raise Unavailable(f"etcd {what}: {verdict} ({'; '.join(errors)}); is the"
                                  f" cluster up and does it have a leader?")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _post(self, what: str, path: str, body: Json) -> Json:
        def send(client: Etcd3Client) -> Json:
            reply: Json = client.post(client.get_url(path), json=body)
            return reply
        return self._call(what, send)

    # -- reads ------------------------------------------------------------------

    def get(self, key: Key) -> Item:
        reply = self._post(f"get {key}", "/kv/range", {"key": _b64(key.path())})
        kvs = reply.get("kvs") or []
        if not kvs:
            raise NotFound(f"{key} not found")
        return _item(kvs[0])

    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        base = f"{PREFIX}{resource}/"
        if namespace is not None:
            base += f"{namespace or '_'}/{prefix}"
        start, end = base.encode(), _prefix_end(base.encode())
        items: list[Item] = []
        revision: int | None = None
        while True:
            body: Json = {"key": _b64(start), "range_end": _b64(end), "limit": self.page_size}
            if revision is not None:
                body["revision"] = revision  # later pages read the same snapshot
            reply = self._post(f"list {resource}", "/kv/range", body)
            if revision is None:
                revision = _header_revision(reply)
            kvs = reply.get("kvs") or []
            items.extend(_item(kv) for kv in kvs)
            if not reply.get("more") or not kvs:
                break
            start = base64.b64decode(kvs[-1]["key"]) + b"\0"  # just after the last
        if namespace is None and prefix:
            items = [i for i in items if i.key.name.startswith(prefix)]
        # etcd sorts by path bytes ("_" for no namespace); the contract sorts by Key.
        return ListResult(tuple(sorted(items, key=lambda i: i.key)), revision)

    def revision(self) -> int:
        reply = self._post("revision", "/kv/range", {"key": _b64(PREFIX), "count_only": True})
        return _header_revision(reply)

    # -- writes -----------------------------------------------------------------

    def create(self, key: Key, value: Value) -> Item:
        path, text = key.path(), _dump(key, value)
        reply = self._txn(f"create {key}", [_cmp(path, "CREATE", "EQUAL", 0)],
                          {"request_put": {"key": _b64(path), "value": _b64(text)}})
        if not reply.get("succeeded"):
            raise Conflict(f"{key} already exists")
        rev = _header_revision(reply)
        return Item(key, json.loads(text), rev, rev)

    def update(self, key: Key, value: Value, revision: int) -> Item:
        path, text = key.path(), _dump(key, value)
        reply = self._txn(f"update {key}", [_cmp(path, "CREATE", "GREATER", 0),
                                            _cmp(path, "MOD", "EQUAL", revision)],
                          {"request_put": {"key": _b64(path), "value": _b64(text),
                                           "prev_kv": True}})
        if not reply.get("succeeded"):
            raise _cas_failure(key, reply, revision)
        prev = reply["responses"][0]["response_put"].get("prev_kv") or {}
        rev = _header_revision(reply)
        return Item(key, json.loads(text), rev, int(prev.get("create_revision", rev)))

    def delete(self, key: Key, revision: int | None = None) -> Item:
        path = key.path()
        compare = [_cmp(path, "CREATE", "GREATER", 0)]
        if revision is not None:
            compare.append(_cmp(path, "MOD", "EQUAL", revision))
        reply = self._txn(f"delete {key}", compare,
                          {"request_delete_range": {"key": _b64(path), "prev_kv": True}})
        if not reply.get("succeeded"):
            raise _cas_failure(key, reply, revision)
        prev = reply["responses"][0]["response_delete_range"].get("prev_kvs") or []
        if not prev:  # cannot happen: the compare and the delete are one transaction
            raise NotFound(f"{key} not found")
        old = _item(prev[0])
        return Item(key, old.value, _header_revision(reply), old.create_revision)

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
        session = _session()
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
        while not self._closed.is_set():
            index, client = store._endpoint()
            self._established = False
            try:
                self._stream(session, client)  # returns when the stream ends (idle timeout)
            except _NotConnected as e:
                store._failed(index)
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > store.op_timeout:
                    raise Unavailable(f"etcd watch {self._prefix}: no endpoint reachable for"
                                      f" {store.op_timeout:.0f}s (last: {e})") from e
            except (requests.RequestException, OSError, ValueError):
                pass  # the stream broke (member gone, bad reply): reconnect from _next
            if self._established:
                down_since, delay = None, 0.05
            self._closed.wait(delay)
            delay = min(delay * 2, 0.5)

    def _stream(self, session: requests.Session, client: Etcd3Client) -> None:
        """Read one watch stream until it ends or breaks."""
        body = {"create_request": {"key": _b64(self._prefix),
                                   "range_end": _b64(_prefix_end(self._prefix.encode())),
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
        events = [e for e in map(_event, result.get("events") or []) if e.revision >= self._next]
        if events:
            self._next = events[-1].revision + 1
            self.put(events)


class _NotConnected(Exception):
    """The watch could not reach its endpoint (move on to the next one)."""


# -- encoding and decoding ------------------------------------------------------------


def _client(endpoint: str, timeout: float) -> Etcd3Client:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"etcd endpoint {endpoint!r}: expected HOST:PORT")
    session = _session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=32))
    return Etcd3Client(host=host.strip("[]"), port=int(port), timeout=timeout,
                       api_path=API_PATH, session=session)


def _session() -> requests.Session:
    session = requests.Session()
    # etcd is reached directly; without this, requests re-reads proxy settings
    # from the environment on every call (about 13% of the client's CPU).
    session.trust_env = False
    return session


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # etcd: every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _cmp(path: str, target: str, result: str, number: int) -> Json:
    field = {"CREATE": "create_revision", "MOD": "mod_revision"}[target]
    return {"key": _b64(path), "target": target, "result": result, field: number}


def _dump(key: Key, value: Value) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{key}: the value is not JSON-serialisable ({e})") from e


def _load(key: Key, data: str | None) -> Any:
    try:
        return json.loads(base64.b64decode(data or ""))
    except ValueError as e:
        raise StoreError(f"{key}: the stored value is not JSON ({e})") from e


def _key(raw: str) -> Key:
    path = base64.b64decode(raw).decode(errors="replace")
    try:
        return Key.from_path(path)
    except ValueError as e:
        raise StoreError(f"etcd key {path!r} is not a tabby key (/tabby/RESOURCE/NS/NAME);"
                         " remove it") from e


def _item(kv: Json) -> Item:
    key = _key(kv["key"])
    return Item(key, _load(key, kv.get("value")), int(kv["mod_revision"]),
                int(kv["create_revision"]))


def _event(raw: Json) -> Event:
    kv: Json = raw["kv"]
    key = _key(kv["key"])
    revision = int(kv["mod_revision"])
    if raw.get("type") == "DELETE":
        prev = raw.get("prev_kv")  # absent only if the previous revision was compacted
        return Event("DELETE", key, _load(key, prev.get("value")) if prev else None, revision)
    return Event("PUT", key, _load(key, kv.get("value")), revision)


def _header_revision(reply: Json) -> int:
    return int(reply["header"]["revision"])


def _cas_failure(key: Key, reply: Json, expected: int | None) -> StoreError:
    kvs = reply["responses"][0]["response_range"].get("kvs") or []
    if not kvs:
        return NotFound(f"{key} not found")
    return Conflict(f"{key} changed (revision {kvs[0]['mod_revision']}, expected {expected})")


def _answered(e: Etcd3Exception) -> bool:
    """Did a member answer (alive but e.g. leaderless), as opposed to nobody listening?"""
    text = e.detail_text or ""
    return text.lstrip().startswith("{") or "Read timed out" in text


def _describe(e: Etcd3Exception) -> str:
    text = e.detail_text or ""
    try:
        return str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):
        return text[:300] or type(e).__name__


def _shutdown(resp: requests.Response) -> None:
    """Unblock a reader stuck in recv() on ``resp`` by shutting its socket down."""
    conn = getattr(resp.raw, "connection", None)
    sock: socket.socket | None = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
