"""The agent's nftables controller: merge every feature's part, apply by difference."""

from __future__ import annotations

import logging

from tabby.calc.nftables import desired_ruleset
from tabby.dataplane.nft import NftReconciler
from tabby.errors import DataplaneError
from tabby.snapshot import Snapshot

log = logging.getLogger(__name__)


class NftController:
    name = "nftables"

    def __init__(self, node: str, reconciler: NftReconciler | None = None) -> None:
        self.node = node
        self.reconciler = reconciler or NftReconciler()
        self.last_seconds = 0.0

    def sync(self, snapshot: Snapshot, *, full: bool) -> list[str]:
        try:
            desired = desired_ruleset(snapshot, self.node)
        except DataplaneError as exc:
            return [f"computing the ruleset: {exc}"]
        result = self.reconciler.apply(desired, full=full)
        self.last_seconds = result.seconds
        if result.mode != "none" and not result.errors:
            log.info("nftables: %s update, %d lines, %.1f ms", result.mode, result.script_lines,
                     result.seconds * 1000)
        return list(result.errors)

    def close(self) -> None:
        pass
