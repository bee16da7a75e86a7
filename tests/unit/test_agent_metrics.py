"""The agent's Prometheus text: counters, gauges, histograms, escaping."""

from __future__ import annotations

import pytest

from tabby.agent.http import parse_addr
from tabby.agent.metrics import AgentMetrics, Registry
from tabby.errors import ConfigError


def test_counter_and_gauge_render() -> None:
    r = Registry()
    c = r.counter("t_requests_total", "Requests.", ("command",))
    g = r.gauge("t_things", "Things.")
    c.inc("ADD")
    c.inc("ADD")
    c.inc("DEL", amount=3)
    g.set(2.5)
    assert r.render() == (
        "# HELP t_requests_total Requests.\n"
        "# TYPE t_requests_total counter\n"
        't_requests_total{command="ADD"} 2\n'
        't_requests_total{command="DEL"} 3\n'
        "# HELP t_things Things.\n"
        "# TYPE t_things gauge\n"
        "t_things 2.5\n")


def test_histogram_buckets_are_cumulative() -> None:
    r = Registry()
    h = r.histogram("t_seconds", "Time.", ("command",), buckets=(0.01, 0.1, 1.0))
    for value in (0.005, 0.01, 0.05, 0.5, 2.0):
        h.observe(value, "ADD")
    text = r.render()
    assert 't_seconds_bucket{command="ADD",le="0.01"} 2\n' in text
    assert 't_seconds_bucket{command="ADD",le="0.1"} 3\n' in text
    assert 't_seconds_bucket{command="ADD",le="1"} 4\n' in text
    assert 't_seconds_bucket{command="ADD",le="+Inf"} 5\n' in text
    assert 't_seconds_count{command="ADD"} 5\n' in text
    assert 't_seconds_sum{command="ADD"} 2.565\n' in text
    assert h.count("ADD") == 5


def test_label_values_are_escaped() -> None:
    r = Registry()
    c = r.counter("t_total", "x", ("v",))
    c.inc('a"b\\c\nd')
    assert 't_total{v="a\\"b\\\\c\\nd"} 1' in r.render()


def test_wrong_label_count_is_refused() -> None:
    c = Registry().counter("t_total", "x", ("a",))
    with pytest.raises(ValueError):
        c.inc()


def test_agent_metrics_read_netlink_counts_at_render_time() -> None:
    counts = ({"route_replace": 3}, {"route_replace": 1})
    m = AgentMetrics(lambda: counts)
    m.observe("ADD", 0.02, True)
    m.observe("ADD", 0.5, False)
    text = m.registry.render()
    assert 'tabby_netlink_calls_total{op="route_replace"} 3' in text
    assert 'tabby_netlink_errors_total{op="route_replace"} 1' in text
    assert 'tabby_cni_requests_total{command="ADD",result="error"} 1' in text
    assert 'tabby_cni_request_duration_seconds_count{command="ADD"} 2' in text


@pytest.mark.parametrize("text, addr", [
    ("127.0.0.1:9099", ("127.0.0.1", 9099)),
    ("[::1]:9099", ("::1", 9099)),
    (":0", ("0.0.0.0", 0)),
])
def test_parse_addr(text: str, addr: tuple[str, int]) -> None:
    assert parse_addr(text) == addr


@pytest.mark.parametrize("text", ["9099", "host:", "host:99999", "host:x"])
def test_parse_addr_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_addr(text)
