"""Commands run inside a bench namespace the way the agent runs ``nft``: directly.

The agent lives in its node's network namespace and executes ``nft -f -``
there; a bench that prefixes ``ip netns exec NS`` pays a second exec (``ip``,
which then enters the namespace and execs the command: ~2 ms a call here, more on
a loaded machine) that the agent never pays. Here the calling thread enters the
namespace (``setns``) and the command is executed from it, so the child starts in
the namespace. Peers measured beside tabby are run the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bench import netns
from tabby.dataplane.nft import NftCommand


class NetnsNft(NftCommand):
    """tabby's ``nft`` runner (``NftCommand``), started in namespace ``ns``."""

    def __init__(self, ns: str) -> None:
        super().__init__()
        self.ns = ns

    def run(self, script: str) -> None:
        with netns.entered(self.ns):
            super().run(script)

    def read(self, what: str) -> str:
        with netns.entered(self.ns):
            return super().read(what)


def timed(ns: str, argv: Sequence[str], stdin: str | None = None, timeout: float = 600
          ) -> float:
    """Seconds ``argv`` took, run in namespace ``ns`` (BenchError if it fails)."""
    with netns.entered(ns):
        started = time.perf_counter()
        netns.run(argv, stdin=stdin, timeout=timeout)
        return time.perf_counter() - started
