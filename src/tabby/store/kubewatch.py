"""Watching the Kubernetes API for the store contract: one stream per resource.

Each resource gets a reader thread that holds one watch request open
(``?watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T``, on
the resource's collection: every namespace's, or the one it is kept to) and
feeds the shared queue ``next`` drains. The thread remembers the last
resourceVersion it saw, from events and from bookmarks (the API server's
"nothing for you up to here"), and when a stream ends (the server's timeout)
or breaks (connection reset, API server restarted) it opens the next one from
there: no gaps, no duplicates. A start the server no longer has in its history
(HTTP 410 Gone, or an ERROR event with code 410) is ``Compacted``: the caller
lists again. If the API server cannot be reached for ``op_timeout`` the watch
raises ``Unavailable``; 401/403 raise ``Forbidden`` at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import urllib3

from tabby.errors import Compacted, StoreError, Unavailable
from tabby.store.base import Event, QueuedWatch
from tabby.store.kubeapi import error_for, key_of, served_value
from tabby.store.kuberesources import APIResource

log = logging.getLogger(__name__)
Json = dict[str, Any]

# Seconds ``KubernetesWatch.close`` waits for all its readers together (was 2 s for each
# in turn: readers caught in their request held the agent's loop ~15 s after a 410).
CLOSE_WAIT = 2.0


class WatchedStore(Protocol):
    """What a watch needs of its store (``KubernetesStore``): its timeouts and requests."""

    op_timeout: float
    request_timeout: float
    watch_timeout: int

    def send(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
             body: Json | None = None, timeout: tuple[float, float] | None = None) -> Any: ...


class KubernetesWatch(QueuedWatch):
    def __init__(self, store: WatchedStore, resources: list[tuple[str, APIResource]],
                 start_revision: int) -> None:
        super().__init__()
        self._store = store
        self._stop = threading.Event()
        self.closed = False
        self._readers = [_Reader(self, n, r, start_revision) for n, r in resources]
        for reader in self._readers:
            reader.thread.start()

    def close(self) -> None:
        """Stop every reader; wait ``CLOSE_WAIT`` seconds in all for them to end. A reader
        still waiting for its request's answer (connecting, the TLS handshake) ends once
        it has one; it is not waited for: the caller (the agent's loop) lists and watches
        again meanwhile, and this watch's queue is no longer read."""
        self.closed = True
        self._stop.set()
        for reader in self._readers:
            reader.interrupt()
        deadline = time.monotonic() + CLOSE_WAIT
        for reader in self._readers:
            if reader.thread is not threading.current_thread():
                reader.thread.join(timeout=max(0.0, deadline - time.monotonic()))


class _Reader:
    """One resource's stream, resumed from its last resourceVersion."""

    def __init__(self, watch: KubernetesWatch, name: str, res: APIResource, start: int) -> None:
        self.watch = watch
        self.name = name  # the store's resource name
        self.res = res
        self.start = start
        self.rv = str(max(start - 1, 1))
        self._resp: Any = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True,
                                       name=f"k8s-watch {res.name}@{start}")

    def interrupt(self) -> None:
        with self._lock:
            resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.response.shutdown()

    def run(self) -> None:
        try:
            self.loop()
        except StoreError as e:
            self.watch.put(e)
        except Exception as e:  # a reader must never die silently
            self.watch.put(StoreError(f"kubernetes watch {self.name}: {e!r}"))

    def loop(self) -> None:
        store = self.watch._store
        stop = self.watch._stop
        down_since: float | None = None
        delay = 0.1
        while not stop.is_set():
            try:
                self.stream()
                down_since, delay = None, 0.1
                continue  # the server ended the stream (timeoutSeconds): go on from self.rv
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                if stop.is_set():
                    return
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > store.op_timeout:
                    raise Unavailable(f"kubernetes watch {self.name}: API server"
                                      f" unreachable for {store.op_timeout:.0f}s ({e})") from e
                log.debug("watch %s broke (%s); resuming from %s", self.name, e, self.rv)
            stop.wait(delay)
            delay = min(delay * 2, 1.0)

    def stream(self) -> None:
        store = self.watch._store
        query = {"watch": "1", "resourceVersion": self.rv, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(store.watch_timeout)}
        resp = store.send("GET", self.res.collection(None), query=query,
                          timeout=(store.request_timeout, store.watch_timeout + 30.0))
        with self._lock:
            self._resp = resp
        try:
            if self.watch._stop.is_set():
                # closed while the request was on its way: interrupt() found no response
                # to shut down, and a quiet stream would hold this reader until the
                # server's timeoutSeconds (and close() waiting for it)
                with contextlib.suppress(Exception):
                    resp.response.shutdown()
                return
            if resp.status != 200:
                err = error_for(resp.status, resp.read(), f"watch {self.name}")
                if resp.status == 410:
                    raise self._compacted()
                if isinstance(err, StoreError) and resp.status in (401, 403, 404):
                    raise err
                raise OSError(f"HTTP {resp.status}: {err}")
            buf = b""
            for chunk in resp.response.stream(65536, decode_content=True):
                if self.watch._stop.is_set():
                    return
                buf += chunk
                if b"\n" not in buf:
                    continue
                *lines, buf = buf.split(b"\n")
                events = [e for e in (self.handle(json.loads(line)) for line in lines
                                      if line.strip()) if e is not None]
                if events:
                    self.watch.put(events)
        finally:
            with self._lock:
                self._resp = None
            with contextlib.suppress(Exception):
                resp.response.release_conn()

    def handle(self, msg: Json) -> Event | None:
        kind = msg.get("type")
        obj: Json = msg.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise self._compacted()
            raise ValueError(f"watch error {code}: {obj.get('message', '')}")
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if rv:
            self.rv = rv
        if kind == "BOOKMARK" or not rv:
            return None
        revision = int(rv)
        if revision < self.start:
            return None
        key = key_of(self.name, obj)
        if kind == "DELETED":
            return Event("DELETE", key, served_value(obj), revision)
        return Event("PUT", key, served_value(obj), revision)

    def _compacted(self) -> Compacted:
        return Compacted(f"kubernetes watch {self.name}: resourceVersion {self.rv} is no"
                         " longer in the API server's history (410 Gone); list again and"
                         " watch from its revision")
