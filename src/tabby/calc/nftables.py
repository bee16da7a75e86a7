"""The features that contribute to tabby's nftables table, and their merge.

Each contributor is a pure function ``(snapshot, node) -> Ruleset`` (a part:
its own chains, sets and maps plus entries in the shared base chains, see
``tabby.nft.model``). Register one with ``@contributor``; the agent's
nftables controller merges every part into the table's desired state.
"""

from __future__ import annotations

from collections.abc import Callable

from tabby.nft.model import Ruleset, merge
from tabby.snapshot import Snapshot

Contributor = Callable[[Snapshot, str], Ruleset]
_CONTRIBUTORS: list[Contributor] = []


def contributor(fn: Contributor) -> Contributor:
    _CONTRIBUTORS.append(fn)
    return fn


def contributors() -> tuple[Contributor, ...]:
    # Importing the feature modules registers their contributors.
    import tabby.calc.features  # noqa: F401
    return tuple(_CONTRIBUTORS)


def desired_ruleset(snapshot: Snapshot, node: str) -> Ruleset:
    return merge(fn(snapshot, node) for fn in contributors())
