"""Flows readable cluster-wide: whom ``tabby flows`` asks outside a lab (the datastore's
Nodes at their addresses), the agent's ``--flows-addr`` and its listener (``/flows``
alone)."""

from __future__ import annotations

import argparse
import http.client
import json
import time
from pathlib import Path

import pytest

from tabby.agent.flowrecord import make_filter
from tabby.agent.flows import FlowCollector, FlowSettings
from tabby.agent.http import FLOWS_PORT
from tabby.agent.metrics import Registry
from tabby.cli.flows import Agent, agent_settings, collect, targets
from tabby.cli.main import build_parser
from tabby.dataplane.nflog import LogRecord
from tabby.errors import ConfigError
from tabby.model import Node
from tabby.store.client import Client
from tabby.store.sqlite import SQLiteStore


def _store(path: Path) -> str:
    url = f"sqlite://{path / 'tabby.db'}"
    client = Client(SQLiteStore(str(path / "tabby.db")))
    nodes = [
        {"metadata": {"name": "b"}, "spec": {"bgp": {"ipv4Address": "198.18.0.12/24"},
                                               "addresses": [{"address": "198.18.0.2",
                                                              "type": "InternalIP"}]}},
        {"metadata": {"name": "a"}, "spec": {"bgp": {"ipv6Address": "fd7a:bb1e::11/64"}}},
        {"metadata": {"name": "c"}, "spec": {"addresses": [{"address": "c.example",
                                                              "type": "Hostname"}]}},
    ]
    for n in nodes:
        client.apply(Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node", **n}))
    client.store.close()
    return url


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args([*argv])


def test_outside_a_lab_every_node_is_asked_at_its_address(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv("TABBY_LAB", "fl2-nolab")
    url = _store(tmp_path)
    agents = targets(_args("--datastore", url, "flows"))
    assert [(a.name, a.host, a.port) for a in agents] == [
        ("a", "fd7a:bb1e::11", FLOWS_PORT),  # no InternalIP: the BGP address
        ("b", "198.18.0.2", FLOWS_PORT),  # the InternalIP (status.hostIP) first
        ("c", "", FLOWS_PORT)]
    assert "has no address" in agents[2].problem
    one = targets(_args("--datastore", url, "flows", "--node", "b", "--flows-port", "9"))
    assert [(a.name, a.host, a.port) for a in one] == [("b", "198.18.0.2", 9)]
    with pytest.raises(ConfigError, match=r"--node zz: datastore .* has no Node"):
        targets(_args("--datastore", url, "flows", "--node", "zz"))


def test_unreachable_nodes_are_errors_and_the_rest_still_count(tmp_path: Path) -> None:
    flt = make_filter(since=0.0)
    records, failed = collect([Agent("c", None, "", 1, problem="its Node has no address"),
                               Agent("d", None, "127.0.0.1", 1)], flt, 2.0)
    assert records == [] and failed[0] == "c: its Node has no address"
    assert failed[1].startswith("d: 127.0.0.1:1: ") and "refused" in failed[1]


def test_no_nodes_and_no_datastore_means_this_nodes_agent(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv("TABBY_LAB", "fl2-nolab")
    monkeypatch.delenv("TABBY_DATASTORE", raising=False)
    SQLiteStore(str(tmp_path / "empty.db")).close()
    empty = targets(_args("--datastore", f"sqlite://{tmp_path / 'empty.db'}", "flows"))
    assert [(a.host, a.port) for a in empty] == [("127.0.0.1", 9099)]
    with pytest.raises(ConfigError, match="does not exist"):  # a datastore named: an error
        targets(_args("--datastore", f"sqlite://{tmp_path / 'missing.db'}", "flows"))


@pytest.mark.parametrize(("addr", "message"), [
    ("0.0.0.0:9097", "bind to the node's address, not every address"),
    ("[::]:9097", "not every address"),
    (":9097", "not every address"),
    ("node-1:9097", "'node-1' is not an IP address"),
    ("198.18.0.1", "expected HOST:PORT"),
])
def test_flows_addr_must_be_a_node_address(addr: str, message: str) -> None:
    args = _args("agent", "--node", "n", "--flow-logs", "on", "--flows-addr", addr)
    with pytest.raises(ConfigError, match=f"--flows-addr .*{message}"):
        agent_settings(args)


def test_flows_addr_is_parsed_and_ignored_with_flow_logs_off() -> None:
    on = agent_settings(_args("agent", "--node", "n", "--flow-logs", "on",
                              "--flows-addr", "fd7a:bb1e::11:9097"))
    assert on is not None and on.listen == ("fd7a:bb1e::11", 9097)
    assert agent_settings(_args("agent", "--node", "n", "--flow-logs", "off",
                                "--flows-addr", "198.18.0.1:9097")) is None


class _Quiet:
    overruns = 0

    def read(self, timeout: float) -> list[LogRecord]:
        time.sleep(timeout)
        return []

    def close(self) -> None:
        pass


class _NoConntrack:
    def dump(self) -> list[object]:
        return []

    def close(self) -> None:
        pass


def _collector(tmp_path: Path, listen: tuple[str, int]) -> FlowCollector:
    settings = FlowSettings(path=str(tmp_path / "flows.db"), listen=listen)
    return FlowCollector("node-1", settings, Registry(), source=_Quiet,
                         dumper=_NoConntrack, overflow=lambda: None)  # type: ignore[arg-type]


def _get(host: str, port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_the_flows_listener_serves_flows_and_nothing_else(tmp_path: Path) -> None:
    c = _collector(tmp_path, ("127.0.0.1", 0))
    c.start()
    try:
        deadline = time.monotonic() + 10
        while c.listener is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.listener is not None
        host, port = c.listener.address
        status, body = _get(host, port, "/flows?since=0")
        assert status == 200 and json.loads(body) == {"node": "node-1", "items": []}
        assert _get(host, port, "/metrics")[0] == 404  # /metrics stays on 127.0.0.1:9099
        assert _get(host, port, "/healthz")[0] == 404
    finally:
        c.close()


def test_an_address_not_up_yet_is_retried_and_never_stops_the_collector(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = _collector(tmp_path, ("203.0.113.254", FLOWS_PORT))  # not this machine's address
    c.start()
    try:
        deadline = time.monotonic() + 10
        while "trying again" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "cannot listen on 203.0.113.254:9097 for flows" in caplog.text
        assert c.listener is None
    finally:
        started = time.monotonic()
        c.close()
    assert time.monotonic() - started < 5

