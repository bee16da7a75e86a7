"""``tabby policy whatif -f POLICY.yaml``: stored flows replayed through a proposed policy.

    tabby policy whatif -f FILE|DIR|- [--since 1h] [-n NS] [--node N] [--agent-addr H:P]
                        [--all] [-o table|json]

The file holds policies: tabby's NetworkPolicy or GlobalNetworkPolicy, Kubernetes'
NetworkPolicy, or a staged one (``stagedAction: Delete`` proposes removing its
enforced counterpart). Each takes the place of the enforced policy of the same
kind, namespace and name (``tabby.policy.staged``). The flows come from every
node's agent (``tabby flows``' reader, ``tabby.cli.flows``); each flow is evaluated
for the endpoint and direction its record names, with the same compiled program the
agents render (the store's policies, endpoints and sets as they are now), and the
flows whose verdict would change are listed: one row per node, direction, source,
destination, protocol and port (``FLOWS`` counts the records). ``--all`` lists the
unchanged ones too. Records of a Pass rule (the next tier decided) are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tabby.cli.usage import UsageError
from tabby.errors import TabbyError

if TYPE_CHECKING:
    from tabby.agent.flowrecord import FlowRecord
    from tabby.policy.staged import Proposal, StagedVerdict, StagedView

COLUMNS = ("NODE", "DIR", "SOURCE", "DESTINATION", "PROTO", "PORT", "FLOWS", "NOW",
           "WOULD BE")


@dataclass(frozen=True, slots=True)
class Change:
    record: FlowRecord  # the newest record of the group
    flows: int  # records in the group
    after: StagedVerdict

    @property
    def changed(self) -> bool:
        return self.after.verdict != self.record.verdict

    def to_json(self) -> dict[str, Any]:
        r = self.record
        before: dict[str, Any] = {"verdict": r.verdict, "reason": r.reason, "rule": r.rule,
                                  "policy": None}
        if r.policy_kind:
            before["policy"] = {"kind": r.policy_kind, "name": r.policy_name, "tier": r.tier,
                                **({"namespace": r.policy_namespace}
                                   if r.policy_namespace else {})}
        return {"flow": r.to_json(), "flows": self.flows, "changed": self.changed,
                "now": before, "wouldBe": self.after.to_dict()}


def register(psub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``whatif`` under ``tabby policy`` (tabby.cli.policy calls this)."""
    w = psub.add_parser("whatif", help="which stored flows a proposed policy would decide"
                        " differently", description="Replay the flows the agents recorded"
                        " through proposed policies and list those whose verdict changes.")
    w.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                   help="the proposed policies (YAML or JSON; a directory; - for stdin)")
    w.add_argument("--since", default="1h", metavar="DURATION",
                   help="flows active within this long (default: 1h)")
    w.add_argument("-n", "--namespace", default="", help="only flows from or to pods of NS")
    w.add_argument("--limit", default="10000", metavar="N",
                   help="read at most N flow records (default: 10000)")
    w.add_argument("--node", metavar="N", help="in a lab: only this node's agent")
    w.add_argument("--agent-addr", action="append", default=[], metavar="HOST:PORT",
                   help="an agent to ask (repeatable; default: the lab's, else this node's)")
    w.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    w.add_argument("--all", action="store_true", help="list unchanged flows too")
    w.add_argument("-o", "--output", choices=("table", "json"), default="table")
    w.set_defaults(func=cmd_whatif)


def proposals_of(paths: list[str]) -> list[Proposal]:
    """The policies in ``paths`` as proposals; a TabbyError naming every bad document."""
    from tabby.cli.documents import read
    from tabby.policy.staged import proposal
    docs = read(paths)
    bad = [line for d in docs for line in d.errors]
    if bad:
        raise TabbyError("; ".join(bad))
    found = [proposal(d.obj) for d in docs if d.obj is not None]
    if not found:
        raise UsageError(f"{', '.join(paths)}: no policy in the file")
    return found


def replay(records: Iterable[FlowRecord], view: StagedView) -> tuple[list[Change], int]:
    """Each group of records (node, direction, source, destination, protocol, port)
    evaluated with the proposals in place; and how many records could not be (their
    endpoint is gone, or a Pass record). Pure given the view."""
    from tabby.policy.staged import flow_packet
    groups: dict[tuple[Any, ...], list[FlowRecord]] = {}
    skipped = 0
    for r in records:
        if r.verdict not in ("allow", "deny"):
            skipped += 1
            continue
        key = (r.node, r.direction, r.src, r.dst, r.protocol, r.dport, r.verdict)
        groups.setdefault(key, []).append(r)
    out: list[Change] = []
    for group in groups.values():
        newest = max(group, key=lambda r: (r.end, r.start))
        after = view.decide(flow_packet(newest.family, newest.src, newest.dst,
                                        newest.protocol, newest.sport, newest.dport),
                            newest.direction)
        if after is None:
            skipped += len(group)
            continue
        out.append(Change(newest, len(group), after))
    out.sort(key=lambda c: (not c.changed, -c.record.end))
    return out, skipped


def cmd_whatif(args: argparse.Namespace) -> int:
    from tabby.agent.cache import StoreCache
    from tabby.cli.context import open_client
    from tabby.cli.flows import build_filter, collect, targets
    from tabby.policy.staged import StagedView
    proposals = proposals_of(args.filename)
    for name in ("pod", "policy", "verdict"):
        setattr(args, name, "")
    args.port = None
    flt = build_filter(args, time.time())
    agents = targets(args)
    records, failed = collect(agents, flt, args.timeout)
    if len(failed) == len(agents):
        raise TabbyError("no agent answered: " + "; ".join(failed))
    client = open_client(args)
    try:
        cache = StoreCache(client.store, "")
        cache.load()
        snapshot = cache.snapshot()
    finally:
        client.store.close()
    changes, skipped = replay(records, StagedView(snapshot, proposals))
    shown = [c for c in changes if args.all or c.changed]
    if args.output == "json":
        print(json.dumps({"items": [c.to_json() for c in shown],
                          "evaluated": sum(c.flows for c in changes),
                          "changed": sum(c.flows for c in changes if c.changed),
                          "skipped": skipped, "warnings": failed}, indent=2))
        return 0
    import sys
    for problem in failed:
        print(f"warning: {problem}", file=sys.stderr)
    print(render_table(shown, changes, skipped))
    return 0


def render_table(shown: list[Change], changes: list[Change], skipped: int) -> str:
    from tabby.agent.flowrecord import PROTOCOLS
    rows = [COLUMNS]
    for c in shown:
        r = c.record
        rows.append((r.node, r.direction, r.src_ep or r.src, r.dst_ep or r.dst,
                     PROTOCOLS.get(r.protocol, str(r.protocol)),
                     "-" if r.dport is None else str(r.dport), str(c.flows),
                     _now(r), c.after.describe()))
    evaluated = sum(c.flows for c in changes)
    changed = sum(c.flows for c in changes if c.changed)
    summary = (f"{changed} of {evaluated} flow records would change verdict"
               + (f" ({skipped} not evaluated: Pass records, or endpoints gone)"
                  if skipped else ""))
    if len(rows) == 1:
        return summary
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                      for row in rows)
    return f"{table}\n{summary}"


def _now(r: FlowRecord) -> str:
    if r.policy_kind:
        where = f"{r.policy_namespace}/{r.policy_name}" if r.policy_namespace else r.policy_name
        rule = f" rule {r.rule}" if r.rule is not None else ""
        return f"{r.verdict} by {r.policy_kind} {where}{rule}"
    if r.reason == "tier-deny":
        return f"{r.verdict}: end of tier {r.tier}"
    return f"{r.verdict}: {r.reason}"
