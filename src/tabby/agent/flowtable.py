"""Aggregating logged packets and conntrack entries into flow records (pure).

``FlowTable`` holds the flows being built: per (flow id, 5-tuple), one
record. A logged packet of an allowed connection (its first) opens a flow
(state ``open``); conntrack entries (``observe``) give it packets and bytes and,
when the connection has ended (TCP TIME_WAIT / CLOSE, or gone from the table),
end it (``ended``). Denied packets (each one logged, within the kernel's rate)
add up in one ``denied`` record per interval. ``dirty()`` hands the records
changed since the last call to the writer with their store row id (None: new),
``written()`` takes the ids back, ``expire()`` forgets what is finished.

No I/O and no clock of its own: the collector (``tabby.agent.flows``) passes
``now`` in. Tests drive it with made-up records.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tabby.agent.flowrecord import FlowRecord
from tabby.dataplane.conntrack import CtEntry, Tuple5
from tabby.dataplane.nflog import LogRecord
from tabby.policy.flowids import FlowRule

Key = tuple[str, str, str, int, int | None, int | None]
CT_GRACE = 2.0  # seconds an allowed flow may be missing from conntrack before it ends


@dataclass(slots=True)
class _Flow:
    record: FlowRecord
    row: int | None = None
    dirty: bool = True
    done: bool = False  # ended or its interval is over: forget once written


class FlowTable:
    def __init__(self, node: str, interval: float, max_flows: int = 100_000) -> None:
        self.node = node
        self.interval = interval
        self.max_flows = max_flows
        self.flows: dict[Key, _Flow] = {}
        self.overflow = 0  # records dropped because the table was full

    def add(self, rec: LogRecord, rule: FlowRule, endpoints: Mapping[str, str],
            now: float) -> None:
        sport = rec.sport
        dport = rec.dport if rec.dport is not None else rec.icmp_type
        src, dst = str(rec.src), str(rec.dst)
        key: Key = (rule.id, src, dst, rec.protocol, sport, dport)
        flow = self.flows.get(key)
        if flow is not None and not flow.done:
            if rule.outcome != "allow":
                r = flow.record
                flow.record = dataclasses.replace(r, end=now, packets=r.packets + 1,
                                                  bytes=r.bytes + rec.length)
                flow.dirty = True
            return
        if len(self.flows) >= self.max_flows:
            self.overflow += 1
            return
        allowed = rule.outcome == "allow"
        self.flows[key] = _Flow(FlowRecord(
            node=self.node, start=now, end=now, family=rec.family, src=src, dst=dst,
            protocol=rec.protocol, sport=sport, dport=dport, direction=rule.direction,
            verdict=rule.outcome, reason=rule.verdict, flow_id=rule.id,
            src_ep=endpoints.get(src, ""), dst_ep=endpoints.get(dst, ""),
            policy_kind=rule.kind, policy_namespace=rule.namespace, policy_name=rule.name,
            tier=rule.tier, rule=rule.rule, peer=rule.peer,
            packets=0 if allowed else 1, bytes=0 if allowed else rec.length,
            state="open" if allowed else "denied"))

    def open_flows(self) -> int:
        return sum(1 for f in self.flows.values() if f.record.state == "open")

    def observe(self, entries: Iterable[CtEntry], now: float) -> None:
        """Counters from a conntrack dump for the open (allowed) flows; ends the ones whose
        connection has ended."""
        by_tuple: dict[Tuple5, CtEntry] = {}
        for e in entries:
            by_tuple[e.orig] = e
            by_tuple.setdefault(e.reply.reversed(), e)
        for key, flow in self.flows.items():
            r = flow.record
            if r.state != "open":
                continue
            got = by_tuple.get(Tuple5(ipaddress.ip_address(key[1]),
                                      ipaddress.ip_address(key[2]), key[3], key[4],
                                      r.dport if key[3] not in (1, 58) else None))
            if got is None:
                if now - r.start >= CT_GRACE:
                    flow.record = dataclasses.replace(r, state="ended")
                    flow.dirty = flow.done = True
                continue
            state = "ended" if got.closed else "open"
            if (got.packets, got.bytes, state) != (r.packets, r.bytes, r.state):
                flow.record = dataclasses.replace(r, end=now, packets=got.packets,
                                                  bytes=got.bytes, state=state)
                flow.dirty = True
                flow.done = got.closed

    def expire(self, now: float) -> None:
        """Close denied records whose interval is over; forget finished, written flows."""
        for key, flow in list(self.flows.items()):
            if flow.record.state == "denied" and now - flow.record.start >= self.interval:
                flow.done = True
            if flow.done and not flow.dirty:
                del self.flows[key]

    def dirty(self) -> list[tuple[Key, int | None, FlowRecord]]:
        out = [(k, f.row, f.record) for k, f in self.flows.items() if f.dirty]
        for _, f in self.flows.items():
            f.dirty = False
        return out

    def written(self, rows: Iterable[tuple[Key, int | None]]) -> None:
        for key, row in rows:
            flow = self.flows.get(key)
            if flow is not None and row is not None:
                flow.row = row

    def pending(self) -> list[FlowRecord]:
        return [f.record for f in self.flows.values()]

