"""The agent's staged policy verdicts on flow records.

After each pass the reconcile loop hands the snapshot over (``update``: a reference
assignment, and a look at the three staged kinds); the flow collector's writer thread
calls ``annotate`` on each record it stores for the first time. With no staged policy
in the store, records pass through untouched. Otherwise the record's first packet is
evaluated for its endpoint and direction with the staged policies in place
(``tabby.policy.staged.StagedView``, its program built on the first record that needs
it, once per snapshot), and the record carries the answer as ``staged``
(``{"verdict", "reason", "policy", "rule"}``). A record that cannot be evaluated (an
address that is no endpoint any more) is stored without it.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from tabby.agent.flowrecord import FlowRecord
from tabby.errors import TabbyError
from tabby.policy.staged import StagedView, flow_packet, staged_in
from tabby.snapshot import Snapshot

log = logging.getLogger(__name__)


class StagedAnnotator:
    def __init__(self, node: str) -> None:
        self.node = node
        self.view: StagedView | None = None
        self._snapshot: Snapshot | None = None

    def update(self, snapshot: Snapshot) -> None:
        """The snapshot the last pass programmed (the loop's thread; never blocks)."""
        if snapshot is self._snapshot:
            return
        self._snapshot = snapshot
        proposals = staged_in(snapshot)
        self.view = StagedView(snapshot, proposals, self.node) if proposals else None

    def annotate(self, rec: FlowRecord) -> FlowRecord:
        view = self.view
        if view is None or rec.staged:
            return rec
        try:
            got = view.decide(flow_packet(rec.family, rec.src, rec.dst, rec.protocol,
                                          rec.sport, rec.dport), rec.direction)
        except (TabbyError, ValueError) as exc:
            log.debug("staged verdict for %s -> %s: %s", rec.src, rec.dst, exc)
            return rec
        if got is None:
            return rec
        return dataclasses.replace(rec, staged=json.dumps(got.to_dict(), sort_keys=True))
