"""Polling with a deadline, the one way tests wait for the kernel, a daemon or a store.

Tests never sleep for a fixed time: they poll a check until it holds or a deadline
passes, and then fail naming what they waited for::

    ip = wait_for("pod x/a's address", lambda: lab.pod_ip("x/a"), 20.0)
    took = wait_seconds("the agent to sweep its leftovers", swept, 30.0)

``wait_for`` returns the check's first truthy value (so a check can hand back what it
found); ``wait_seconds`` returns how long the wait took, for tests that report it.
``detail`` adds context to the failure (a daemon's log tail, say); it is called only
when the wait has failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_for", "wait_seconds"]

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float,
             interval: float = 0.1, *, detail: Callable[[], str] | None = None) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy, and
    return that; AssertionError naming ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = detail() if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def wait_seconds(what: str, check: Callable[[], object], timeout: float,
                 interval: float = 0.1, *, detail: Callable[[], str] | None = None) -> float:
    """``wait_for``, returning the seconds the wait took instead of the value."""
    began = time.monotonic()
    wait_for(what, check, timeout, interval, detail=detail)
    return time.monotonic() - began
