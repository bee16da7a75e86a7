"""Flow logs, the pure parts: flow ids, the log rules, NFLOG and conntrack parsing, the
flow table, the store's bounds and failures, filters, the CLI's bad input."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct
from pathlib import Path

import pytest

from tabby.agent.flowrecord import FlowRecord, make_filter, parse_duration
from tabby.agent.flows import gate_overflow
from tabby.agent.flowstore import FlowStore
from tabby.agent.flowtable import FlowTable
from tabby.cli.main import main
from tabby.dataplane import conntrack, nflog, nlsock
from tabby.errors import ConfigError
from tabby.marks import flow_id_of_prefix, flow_log_prefix
from tabby.nft.render import render_full
from tabby.policy.flowids import FlowLog, flow_ids, no_policy_id, rule_id, tier_end_id
from tabby.policy.flowlog import OVER_COMMENT
from tabby.policy.nftables import PolicyRules
from tabby.policy.program import build_program
from tabby.policy.synthetic import from_yaml, pod_endpoint, snapshot_of
from tabby.snapshot import Snapshot

DOCS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, destination: {ports: [80]}}
  - {action: Log}
  - {action: Deny, protocol: TCP, destination: {ports: [81]}}
"""


def snap() -> Snapshot:
    return snapshot_of([*from_yaml(DOCS),
                        pod_endpoint("shop/web", {"app": "web"}, "node-1", ("198.19.0.5/32",)),
                        pod_endpoint("shop/cli", {"app": "cli"}, "node-1", ("198.19.0.6/32",))])


# -- ids and rules --------------------------------------------------------------------

def test_flow_ids_are_stable_and_name_their_rule() -> None:
    ids = flow_ids(build_program(snap(), "node-1"))
    allow = ids.get(rule_id("np/shop/web-in", "ingress", 0, None, "allow"))
    deny = ids.get(rule_id("np/shop/web-in", "ingress", 2, None, "deny"))
    assert allow is not None and deny is not None
    assert (allow.kind, allow.namespace, allow.name, allow.tier, allow.rule) == (
        "NetworkPolicy", "shop", "web-in", "default", 0)
    assert deny.outcome == "deny" and deny.rule == 2 and allow.outcome == "allow"
    end = ids.get(tier_end_id("default", "ingress"))
    assert end is not None and end.outcome == "deny" and end.policy() is None
    assert ids.get(no_policy_id("egress")) is not None
    assert len({allow.id, deny.id, end.id}) == 3 and len(allow.id) == 10
    assert flow_ids(build_program(snap(), "node-1")) == ids  # the same on every pass
    assert flow_id_of_prefix(flow_log_prefix(allow.id)) == allow.id
    assert flow_id_of_prefix("tabby np/x ingress 1: ") is None


def test_log_rules_precede_their_verdicts_only_when_on() -> None:
    off = render_full(PolicyRules("node-1").part(snap()))
    assert "log group" not in off and "pol-flowlog" not in off
    text = render_full(PolicyRules("node-1", FlowLog(group=9, rate=50, burst=10)).part(snap()))
    allow = rule_id("np/shop/web-in", "ingress", 0, None, "allow")
    deny = rule_id("np/shop/web-in", "ingress", 2, None, "deny")
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if f'prefix "tf:{allow}"' in line)
    assert "tcp dport 80" in lines[at] and "meta mark & 0x40000 != 0 log group 9" in lines[at]
    assert "tcp dport 80" in lines[at + 1] and "return" in lines[at + 1]
    assert any(f'prefix "tf:{deny}"' in line for line in lines)
    assert f'prefix "tf:{tier_end_id("default", "ingress")}"' in text  # the default deny
    assert "limit rate 50/second burst 10 packets" in text
    assert f'"{OVER_COMMENT}"' in text
    assert "pol-fl-open-e" in text  # pods no egress policy selects: logged as no-policy
    assert text.count("log group 9") >= 4


# -- NFLOG and conntrack --------------------------------------------------------------

def _nflog_message(prefix: str, payload: bytes, indev: int = 3) -> bytes:
    body = nflog.NFGEN.pack(socket.AF_INET, 0, 7)
    body += nlsock.attr(nflog.NFULA_PREFIX, prefix.encode() + b"\0")
    body += nlsock.attr(nflog.NFULA_IFINDEX_INDEV, struct.pack("!I", indev))
    body += nlsock.attr(nflog.NFULA_PAYLOAD, payload)
    kind = (nflog.NFNL_SUBSYS_ULOG << 8) | nflog.NFULNL_MSG_PACKET
    return nlsock.HDR.pack(nlsock.HDR.size + len(body), kind, 0, 0, 0) + body


def test_nflog_parses_prefix_addresses_and_ports() -> None:
    ip4 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 60, 0, 0, 64, 6, 0,
                      bytes([198, 19, 0, 6]), bytes([198, 19, 0, 5])) + struct.pack("!HH", 4321, 81)
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64,
                      ipaddress.IPv6Address("fd7a::1").packed,
                      ipaddress.IPv6Address("fd7a::2").packed) + struct.pack("!HHHH", 5, 53, 8, 0)
    recs = nflog.parse_messages(_nflog_message("tf:0123456789", ip4)
                                + _nflog_message("tf:abcdefabcd", ip6, indev=4))
    assert [(r.prefix, r.family, str(r.src), str(r.dst), r.protocol, r.sport, r.dport)
            for r in recs] == [("tf:0123456789", 4, "198.19.0.6", "198.19.0.5", 6, 4321, 81),
                               ("tf:abcdefabcd", 6, "fd7a::1", "fd7a::2", 17, 5, 53)]
    assert recs[0].length == 60 and recs[0].indev == 3 and recs[1].length == 48
    assert nflog.parse_messages(b"\x01\x02") == []  # truncated: nothing, no exception


def _ct_tuple(src: str, dst: str, sport: int, dport: int) -> bytes:
    ip = nlsock.attr(1, ipaddress.ip_address(src).packed) + nlsock.attr(
        2, ipaddress.ip_address(dst).packed)
    proto = nlsock.attr(1, bytes([6])) + nlsock.attr(2, struct.pack("!H", sport)) \
        + nlsock.attr(3, struct.pack("!H", dport))
    return nlsock.attr(1, ip) + nlsock.attr(2, proto)


def test_conntrack_entry_with_counters_and_tcp_state() -> None:
    counters = nlsock.attr(1, struct.pack("!Q", 6)) + nlsock.attr(2, struct.pack("!Q", 400))
    body = nflog.NFGEN.pack(socket.AF_INET, 0, 0) \
        + nlsock.attr(conntrack.CTA_TUPLE_ORIG, _ct_tuple("198.19.0.6", "198.19.0.5", 4321, 80)) \
        + nlsock.attr(conntrack.CTA_TUPLE_REPLY, _ct_tuple("198.19.0.5", "198.19.0.6", 80, 4321)) \
        + nlsock.attr(conntrack.CTA_PROTOINFO, nlsock.attr(1, nlsock.attr(1, bytes([7])))) \
        + nlsock.attr(conntrack.CTA_COUNTERS_ORIG, counters) \
        + nlsock.attr(conntrack.CTA_COUNTERS_REPLY, counters)
    e = conntrack.parse_entry(body)
    assert e is not None and e.closed and (e.packets, e.bytes) == (12, 800)
    assert e.orig.dport == 80 and e.reply.reversed() == e.orig


# -- the flow table ---------------------------------------------------------------------

def _rec(dport: int, sport: int = 4321) -> nflog.LogRecord:
    return nflog.LogRecord("", 4, ipaddress.IPv4Address("198.19.0.6"),
                           ipaddress.IPv4Address("198.19.0.5"), 6, sport, dport, length=60)


def test_table_adds_up_denied_packets_per_interval_and_ends_allowed_flows() -> None:
    ids = flow_ids(build_program(snap(), "node-1"))
    deny = ids.get(rule_id("np/shop/web-in", "ingress", 2, None, "deny"))
    allow = ids.get(rule_id("np/shop/web-in", "ingress", 0, None, "allow"))
    assert deny is not None and allow is not None
    eps = {"198.19.0.5": "shop/web", "198.19.0.6": "shop/cli"}
    t = FlowTable("node-1", interval=10)
    for i in range(3):
        t.add(_rec(81), deny, eps, 100.0 + i)
    t.add(_rec(80, 5555), allow, eps, 100.0)
    batch = {r.dport: r for _, _, r in t.dirty()}
    assert (batch[81].packets, batch[81].bytes, batch[81].state) == (3, 180, "denied")
    assert batch[81].dst_ep == "shop/web" and batch[81].rule == 2
    assert (batch[80].state, batch[80].packets) == ("open", 0)
    tup = conntrack.Tuple5(ipaddress.IPv4Address("198.19.0.6"),
                           ipaddress.IPv4Address("198.19.0.5"), 6, 5555, 80)
    t.observe([conntrack.CtEntry(tup, tup.reversed(), conntrack.TCP_TIME_WAIT, 10, 900)], 101)
    (_, _, ended), = t.dirty()
    assert (ended.state, ended.packets, ended.bytes) == ("ended", 10, 900)
    t.expire(111.0)
    assert t.flows == {}
    t.add(_rec(81), deny, eps, 112.0)  # a new interval: a new record
    assert [r.start for _, _, r in t.dirty()] == [112.0]


def test_an_allowed_flow_missing_from_conntrack_ends() -> None:
    allow = flow_ids(build_program(snap(), "node-1")).get(no_policy_id("egress"))
    assert allow is not None
    t = FlowTable("node-1", interval=10)
    t.add(_rec(80), allow, {}, 100.0)
    t.dirty()
    t.observe([], 100.5)
    assert not t.dirty()  # within the grace: conntrack may not have it yet
    t.observe([], 103.0)
    assert [r.state for _, _, r in t.dirty()] == ["ended"]


# -- the store ------------------------------------------------------------------------------

def _flow(end: float, port: int = 81) -> FlowRecord:
    return FlowRecord("node-1", end - 1, end, 4, "198.19.0.6", "198.19.0.5", 6, 4321, port,
                      "ingress", "deny", "deny", "0123456789", "shop/cli", "shop/web",
                      "NetworkPolicy", "shop", "web-in", "default", 2, None, 1, 60)


def test_store_keeps_its_bounds_oldest_first(tmp_path: Path) -> None:
    now = 1_000_000.0
    store = FlowStore.open(str(tmp_path / "f.db"), max_rows=5, retention=100,
                           clock=lambda: now)
    store.put([(None, _flow(now - 200))] + [(None, _flow(now - 10 + i, 80 + i))
                                            for i in range(7)])
    assert store.enforce() == 3 and store.rows == 5 and store.evicted == 3
    got = store.query(make_filter(since=0))
    assert [r.dport for r in got] == [86, 85, 84, 83, 82]  # newest first; oldest gone
    assert store.fallback == ""
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_store_that_cannot_be_written_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = FlowStore.open(str(blocker / "flows.db"))  # its directory is a file
    assert "keeping flows in memory" in store.fallback
    assert store.put([(None, _flow(10.0))]) == [1]
    full = FlowStore.open(str(tmp_path / "full.db"))
    full.db.execute("PRAGMA max_page_count = 8")  # SQLite's own "database or disk is full"
    for _ in range(200):
        ids = full.put([(None, _flow(10.0))] * 50)
    assert ids == [None] * 50 and full.write_errors > 0
    assert isinstance(full.query(make_filter()), list)


def test_store_updates_a_flow_in_place(tmp_path: Path) -> None:
    store = FlowStore.open(str(tmp_path / "f.db"), retention=1e12)
    (rid,) = store.put([(None, _flow(50.0))])
    assert rid is not None
    store.put([(rid, dataclasses.replace(_flow(60.0), packets=9, state="ended"))])
    (got,) = store.query(make_filter())
    assert (got.end, got.packets, got.state, store.rows) == (60.0, 9, "ended", 1)


# -- filters, JSON, the CLI -------------------------------------------------------------------

def test_filters_match_and_refuse_bad_syntax() -> None:
    rec = _flow(100.0)
    assert make_filter(namespace="shop", pod="web", verdict="deny", port=81,
                       policy="shop/web-in").matches(rec)
    assert not make_filter(pod="other/web").matches(rec)
    assert not make_filter(since=101).matches(rec)
    assert FlowRecord.from_json(rec.to_json()) == rec
    assert parse_duration("5m") == 300 and parse_duration("90") == 90
    for kwargs, word in (({"verdict": "maybe"}, "--verdict"), ({"port": "http"}, "--port"),
                         ({"pod": "a/b/c"}, "--pod"), ({"limit": "0"}, "--limit")):
        with pytest.raises(ConfigError, match=word):
            make_filter(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--since"):
        parse_duration("5 minutes")


def test_cli_bad_filter_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flows", "--since", "yesterday", "--agent-addr", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--since 'yesterday'" in err
    assert main(["flows", "-f", "-o", "json", "--agent-addr", "127.0.0.1:1"]) == 2


def test_gate_overflow_is_read_from_the_counter_rule() -> None:
    listing = {"nftables": [{"metainfo": {}}, {"rule": {"comment": OVER_COMMENT, "expr": [
        {"counter": {"packets": 42, "bytes": 4200}}]}}]}
    assert gate_overflow(listing) == 42 and gate_overflow({"nftables": []}) is None
