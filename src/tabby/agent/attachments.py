"""One lock per CNI attachment (container id, interface) while requests for it run.

A runtime that sends two ADDs for one container at once gets the same addresses
twice, never two sets, and a DEL never interleaves with the ADD it undoes;
requests for different attachments run side by side (``AgentPodHandler``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["AttachmentLocks"]


class AttachmentLocks:
    """One lock per attachment (container id, interface) while requests for it are in
    flight; the entry goes with the last of them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def held(self, container_id: str, ifname: str) -> Iterator[None]:
        key = (container_id, ifname)
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)
