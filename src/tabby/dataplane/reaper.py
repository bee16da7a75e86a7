"""Deleting retired pod veths in the background, many in one request.

    reaper = VethReaper(wirer.reap)
    reaper.start()                      # a thread; at once deletes what an earlier agent left
    wirer.retire(host_veth); reaper.kick()   # CNI DEL: answers without waiting for it
    reaper.close()                      # the thread ends; what is still retired is deleted

Why: the kernel makes every link deletion wait for an RCU grace period (~15 ms
on an idle machine, 20-60 ms busy), which was three quarters of a CNI DEL.
``PodWirer.retire`` takes a pair out of service in microseconds (down, its
routes gone, link group ``RETIRED_GROUP``); this thread then deletes the whole
group in one request: retirements that arrive while a deletion runs wait for
the next, so a burst of DELs shares a few grace periods instead of paying one
each (measured: 15 pairs in one request 12-60 ms, one by one 19 ms each).

The group is the record: a pair retired by an agent that died before this
thread got to it is deleted by the next agent's ``start``, and nothing else is
(a running pod's veth is never in that group). A failed deletion is logged and
retried after ``retry`` seconds, doubling up to ``MAX_BACKOFF`` while it keeps
failing; the pairs stay down and unrouted meanwhile.
``background=False`` makes no thread: retired pairs wait for ``flush`` (tests
that want every step in their own thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["VethReaper"]

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0  # seconds between attempts while deleting keeps failing


class VethReaper:
    """One thread that runs ``reap`` (delete every retired pair) whenever kicked."""

    def __init__(self, reap: Callable[[], bool], *, retry: float = 1.0,
                 background: bool = True) -> None:
        self._reap = reap
        self.retry = retry
        self.background = background
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self.rounds = 0  # deletion requests made (for tests and logs)

    def start(self) -> None:
        """Start the thread (idempotent) and have it delete what is retired already."""
        if not self.background:
            return
        with self._guard:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="veth-reaper",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def kick(self) -> None:
        """Something was retired: delete it soon (starts the thread if need be)."""
        self.start()

    def flush(self) -> bool:
        """Delete what is retired now, in the calling thread; False if nothing was."""
        return self._reap()

    def close(self, timeout: float = 5.0) -> None:
        """End the thread, then delete what is still retired (best effort)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        try:
            self._reap()
        except Exception as exc:  # the next agent's start deletes them
            log.warning("retired pod veths left for the next agent: %s", exc)

    def _run(self) -> None:
        backoff = self.retry
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self._reap()
                self.rounds += 1
                backoff = self.retry
            except Exception as exc:  # the pairs are down and unrouted: retry later
                log.error("deleting retired pod veths failed: %s; retrying in %.1fs",
                          exc, backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF)
                self._wake.set()
