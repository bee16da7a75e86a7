"""The agent's use of CPython's cyclic garbage collector, and of the C heap.

A pass over 10k services or endpoints builds a few large containers (the
snapshot's tuples, the services maps' element sets, the label index) and many
small objects; left alone, the collector runs two or three young collections in
the middle of such a pass, each traversing every large container built so far
(~7 ms each, measured), and now and then a full one over the whole cache (~150
ms at 10k services). Both landed in the tail of the pass latency. So:

- ``paused()``: a pass runs with the collector off; when it ends, the young
  generations are collected once if they are over their threshold (what the
  next allocation would have done anyway), after the kernel has been programmed.
- ``settle()``: after a full pass (the first one, after a relist, the periodic
  resync), collect everything, then ``gc.freeze()`` what is alive (the cache,
  the calculation's memos): later collections no longer traverse it. Frozen
  objects are still freed when their last reference goes (reference counting);
  only a reference cycle among them would outlive its use, and the agent's
  long-lived state (frozen dataclasses, dicts, tuples) holds none. Then the C
  heap's free pages go back to the system (``malloc_trim``, glibc): a listing's
  transient documents would otherwise stay in the agent's resident size.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Iterator

__all__ = ["paused", "settle"]


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off for the block; the young generations collected after it if due."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
            if gc.get_count()[0] > gc.get_threshold()[0]:
                gc.collect(1)


def settle() -> None:
    """Collect, freeze the survivors, and give the C heap's free memory back."""
    gc.collect()
    gc.freeze()
    _trim()


def _trim() -> None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: glibc's
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        return
    trim(0)
