"""``KubernetesWatch.close`` with readers still waiting for their request's answer.

The agent closes its watch on a 410 (lists again) and on any error; right after a
watch starts (a 410 comes ~60 ms later on a fresh API server) most readers are still
connecting. ``interrupt`` has no response to shut down for them, so they used to
stream a quiet watch until the server's timeout, and ``close`` waited 2 s for each in
turn: the agent's loop stood still ~15 s and missed every event meanwhile (pods not
programmed on the other node, tests/netns/test_kube_faults.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from tabby.store.kuberesources import default_resources
from tabby.store.kubewatch import CLOSE_WAIT, KubernetesWatch

READERS = 4
QUIET = 10.0  # a stream sends nothing for this long unless shut down


class _Stream:
    """A 200 watch response that sends nothing until shut down (or ``QUIET`` passes)."""

    def __init__(self) -> None:
        self.status = 200
        self.response = self
        self.shut = threading.Event()

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        self.shut.wait(QUIET)
        yield from ()

    def shutdown(self) -> None:
        self.shut.set()

    def release_conn(self) -> None:
        pass

    def read(self) -> bytes:
        return b""


class _SlowStore:
    """Requests are answered only once ``answer`` is set (a slow TLS handshake)."""

    op_timeout = 15.0
    request_timeout = 10.0
    watch_timeout = 300

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.sent = 0
        self._lock = threading.Lock()

    def send(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
             body: Any = None, timeout: tuple[float, float] | None = None) -> _Stream:
        with self._lock:
            self.sent += 1
        self.answer.wait(QUIET)
        return _Stream()


def test_close_does_not_wait_for_readers_in_their_request_and_they_end() -> None:
    store = _SlowStore()
    resources = list(default_resources().items())[:READERS]
    watch = KubernetesWatch(store, resources, 100)
    deadline = time.monotonic() + 5.0
    while store.sent < READERS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.sent == READERS

    began = time.monotonic()
    watch.close()
    took = time.monotonic() - began
    assert took < CLOSE_WAIT + 1.0, f"close() took {took:.1f}s for {READERS} readers"

    store.answer.set()  # the answers arrive after close(): each reader ends at once
    threads = [r.thread for r in watch._readers]
    for t in threads:
        t.join(timeout=3.0)
    assert not [t.name for t in threads if t.is_alive()], "readers kept streaming after close()"
