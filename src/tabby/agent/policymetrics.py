"""The agent's policy, nftables, BGP and IPAM metrics (docs/metrics.md).

::

    /metrics scrape --> RuleCounters: ONE ``nft -j list counters table inet tabby``
                        (packets reads it, bytes and the dropped count reuse it)
                          named counter pc-<flow id> --FlowIds--> (policy, tier, direction,
                          rule, action) --> summed per label set, at most MAX_RULE_SERIES
                    --> BGP: one ``show protocols all`` to BIRD (``--bgp bird`` only)
                    --> IPAM: the last pass's snapshot (blocks and pools, no store read)
    each pass      --> observe(Applied): nft programming time, mode and failures
    each new flow record --> flow(record): denied flows by policy (with flow logs)

Bounded label sets, so a scrape's size follows the configuration, never the traffic:

- ``tabby_policy_rule_{packets,bytes}_total``: one series per (policy kind,
  namespace, name, tier, direction, rule index, action) of a rule rendered on this
  node (Kubernetes from/to peers of one rule are summed): at most
  ``MAX_RULE_SERIES`` (5000); the ones beyond (sorted by labels) are left out and
  counted in ``tabby_policy_rule_series_dropped``.
- ``tabby_policy_denied_flows_total``: per deciding policy (or tier end), at most
  ``MAX_DENIED_SERIES`` (1000); later policies go into one ``name="(other)"`` series.
- ``tabby_bgp_peer_up``: one series per BGP session of this node's BIRD, at most 256.
- ``tabby_ipam_*``: one series per IP pool (and state).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tabby.agent.flowrecord import FlowRecord
from tabby.agent.metrics import FuncGauge, Registry
from tabby.errors import TabbyError
from tabby.ipam.blocks import reserved_count, used_count
from tabby.ipam.pools import pool_of
from tabby.marks import NFT_FAMILY, NFT_TABLE, flow_id_of_counter
from tabby.model import IPPool
from tabby.policy.flowids import FlowIds
from tabby.snapshot import Snapshot

MAX_RULE_SERIES = 5000
MAX_DENIED_SERIES = 1000
MAX_PEER_SERIES = 256
RULE_LABELS = ("kind", "namespace", "name", "tier", "direction", "rule", "action")
DENIED_LABELS = ("kind", "namespace", "name", "tier", "reason")
Key = tuple[str, ...]


def counter_values(listing: Mapping[str, Any], ids: FlowIds) -> dict[Key, tuple[int, int]]:
    """(packets, bytes) per rule label set, from ``nft -j list counters`` (pure)."""
    out: dict[Key, tuple[int, int]] = {}
    for item in listing.get("nftables", ()):
        c = item.get("counter") if isinstance(item, dict) else None
        if not isinstance(c, dict):
            continue
        fid = flow_id_of_counter(str(c.get("name", "")))
        rule = ids.get(fid) if fid is not None else None
        if rule is None:
            continue
        key = (rule.kind, rule.namespace, rule.name, rule.tier, rule.direction,
               "" if rule.rule is None else str(rule.rule), rule.verdict)
        p, b = out.get(key, (0, 0))
        out[key] = (p + int(c.get("packets", 0)), b + int(c.get("bytes", 0)))
    return out


def bounded(values: Mapping[Key, tuple[int, int]], limit: int
            ) -> tuple[dict[Key, tuple[int, int]], int]:
    """The first ``limit`` series by label and how many were left out."""
    keys = sorted(values)
    return {k: values[k] for k in keys[:limit]}, max(0, len(keys) - limit)


class RuleCounters:
    """Per-rule counters read back from the kernel: afresh when the packets metric is
    rendered (``fresh``), and the same answer for the bytes and dropped metrics rendered
    right after it in the same scrape (unless that answer is older than ``MAX_AGE``)."""

    MAX_AGE = 5.0

    def __init__(self, read: Callable[[str], str], ids: Callable[[], FlowIds],
                 limit: int = MAX_RULE_SERIES, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._read = read
        self._ids = ids
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, dict[Key, tuple[int, int]], int] = (-1e9, {}, 0)
        self.errors = 0

    def values(self, fresh: bool = False) -> tuple[dict[Key, tuple[int, int]], int]:
        with self._lock:
            now = self._clock()
            if fresh or now - self._last[0] >= self.MAX_AGE:
                try:
                    listing = json.loads(self._read(f"counters table {NFT_FAMILY} {NFT_TABLE}"))
                    got, dropped = bounded(counter_values(listing, self._ids()), self.limit)
                except (TabbyError, ValueError):
                    self.errors += 1
                    got, dropped = {}, 0  # no table yet, or unreadable: no series
                self._last = (now, got, dropped)
            return self._last[1], self._last[2]


def ipam_usage(snapshot: Snapshot) -> dict[str, tuple[int, int, int]]:
    """(blocks, used, free) addresses per pool, from a snapshot (pure)."""
    pools = list(snapshot.of(IPPool))
    out = {p.meta.name: [0, 0, p.spec.cidr.num_addresses] for p in pools}
    for b in snapshot.blocks:
        pool = pool_of(pools, b.spec.cidr)
        if pool is None:
            continue
        row = out[pool.meta.name]
        used = used_count(b.spec)
        row[0] += 1
        row[1] += used
        row[2] -= used + reserved_count(b.spec)
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


class PolicyMetrics:
    """Registers the series above on the agent's registry; the agent feeds it."""

    def __init__(self, r: Registry, *, nft_read: Callable[[str], str],
                 ids: Callable[[], FlowIds], bird_socket: Path | None = None) -> None:
        self.rules = RuleCounters(nft_read, ids)
        self._snapshot: Snapshot | None = None
        self._bird_socket = bird_socket
        self._bgp: tuple[float, dict[Key, float]] = (-1e9, {})
        r.add(FuncGauge("tabby_policy_rule_packets_total",
                        "Packets that reached a policy rule's verdict (new connections and"
                        " denied packets), per rule on this node.", RULE_LABELS,
                        lambda: {k: float(v[0])
                                 for k, v in self.rules.values(fresh=True)[0].items()},
                        kind="counter"))
        r.add(FuncGauge("tabby_policy_rule_bytes_total",
                        "Bytes of those packets, per policy rule on this node.", RULE_LABELS,
                        lambda: {k: float(v[1]) for k, v in self.rules.values()[0].items()},
                        kind="counter"))
        r.add(FuncGauge("tabby_policy_rule_series_dropped",
                        f"Rule series left out of the two above (more than {MAX_RULE_SERIES}).",
                        (), lambda: {(): float(self.rules.values()[1])}))
        self.nft_seconds = r.histogram("tabby_nft_program_duration_seconds",
                                       "Time of one nftables transaction, by mode (full:"
                                       " the whole table; delta: the difference).", ("mode",))
        self.nft_failures = r.counter("tabby_nft_program_failures_total",
                                      "nftables transactions the kernel refused.", ("mode",))
        self.denied = r.counter("tabby_policy_denied_flows_total",
                                "Denied flow records (one per 5-tuple and interval) by the"
                                " policy or tier end that denied them (needs flow logs).",
                                DENIED_LABELS)
        self._denied_keys: set[Key] = set()
        r.add(FuncGauge("tabby_bgp_peers", "This node's BGP sessions by BIRD's state.",
                        ("state",), lambda: self._peers("count")))
        r.add(FuncGauge("tabby_bgp_peer_up", "1 if the BGP session is Established, else 0.",
                        ("peer", "address", "type"), lambda: self._peers("up")))
        r.add(FuncGauge("tabby_ipam_blocks", "IPAM blocks in each IP pool (all nodes).",
                        ("pool",), lambda: {(k,): float(v[0]) for k, v in self._ipam().items()}))
        r.add(FuncGauge("tabby_ipam_addresses", "Addresses of each IP pool: used (held by a"
                        " handle) and free (neither used nor reserved).", ("pool", "state"),
                        self._ipam_addresses))

    # -- fed by the agent --------------------------------------------------------------
    def observe(self, mode: str, seconds: float, failed: bool, snapshot: Snapshot) -> None:
        """After a pass: its nft transaction (mode none: nothing sent), its snapshot."""
        self._snapshot = snapshot
        if mode == "none":
            return
        self.nft_seconds.observe(seconds, mode)
        if failed:
            self.nft_failures.inc(mode)

    def flow(self, rec: FlowRecord) -> FlowRecord:
        """A new flow record (the flow collector's writer): count it if denied."""
        if rec.verdict == "deny":
            key = (rec.policy_kind, rec.policy_namespace, rec.policy_name, rec.tier, rec.reason)
            if key not in self._denied_keys:
                if len(self._denied_keys) >= MAX_DENIED_SERIES:
                    key = ("", "", "(other)", "", rec.reason)
                else:
                    self._denied_keys.add(key)
            self.denied.inc(*key)
        return rec

    # -- read at scrape time ------------------------------------------------------------
    def _peers(self, what: str) -> dict[Key, float]:
        now = time.monotonic()  # one BIRD query per scrape: the count reads, up reuses
        if what == "count" or now - self._bgp[0] >= RuleCounters.MAX_AGE:
            self._bgp = (now, self._read_peers())
        prefix = "count:" if what == "count" else "up:"
        return {k[1:]: v for k, v in self._bgp[1].items() if k[0] == prefix}

    def _read_peers(self) -> dict[Key, float]:
        if self._bird_socket is None:
            return {}
        from tabby.bgp.status import node_status
        try:
            peers = node_status(self._bird_socket, timeout=1.0).peers
        except (TabbyError, OSError):
            return {}
        out: dict[Key, float] = {}
        for p in peers:
            out[("count:", p.state)] = out.get(("count:", p.state), 0.0) + 1
        for p in sorted(peers, key=lambda p: p.name)[:MAX_PEER_SERIES]:
            out[("up:", p.name, p.address, p.type)] = 1.0 if p.established else 0.0
        return out

    def _ipam(self) -> dict[str, tuple[int, int, int]]:
        snapshot = self._snapshot
        return ipam_usage(snapshot) if snapshot is not None else {}

    def _ipam_addresses(self) -> dict[Key, float]:
        out: dict[Key, float] = {}
        for pool, (_, used, free) in self._ipam().items():
            out[(pool, "used")] = float(used)
            out[(pool, "free")] = float(free)
        return out
