"""``tabby version``: the client's version, and an agent's read from its real /metrics."""

from __future__ import annotations

import json
import platform
import socket
from collections.abc import Iterator

import pytest

import tabby
from tabby.agent.http import HealthServer
from tabby.agent.metrics import AgentMetrics
from tabby.cli.main import main
from tabby.cli.version import Target, answer, parse_build_info, render_text

CLIENT = {"version": tabby.__version__, "python": platform.python_version(),
          "distribution": "tabby-network"}


@pytest.fixture
def agent_http() -> Iterator[str]:
    """The agent's own metrics served by its own HTTP server on a free loopback port."""
    metrics = AgentMetrics(lambda: ({}, {}))
    server = HealthServer(("127.0.0.1", 0), metrics.registry.render, lambda: (True, "ok"))
    server.start()
    try:
        host, port = server.address
        yield f"{host}:{port}"
    finally:
        server.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_agent_exports_its_build_info() -> None:
    text = AgentMetrics(lambda: ({}, {})).registry.render()
    assert "# TYPE tabby_build_info gauge\n" in text
    assert parse_build_info(text) == {"version": tabby.__version__,
                                      "python": platform.python_version()}


def test_parse_build_info_unescapes_and_ignores_other_series() -> None:
    text = ('tabby_build_info_other{version="9"} 1\n'
            'tabby_build_info{version="1.2.3-\\"rc\\"",python="3.13\\\\x"} 1\n')
    assert parse_build_info(text) == {"version": '1.2.3-"rc"', "python": "3.13\\x"}
    assert parse_build_info("tabby_ready 1\n") is None


def test_answer_says_why_there_is_no_version() -> None:
    target = Target("node-1", "lab-node-1", "127.0.0.1", 9099)
    gone = answer(target, None, "connection refused")
    assert (gone.reachable, gone.version, gone.error) == (False, None, "connection refused")
    other = answer(target, "up 1\n", None)
    assert other.reachable and other.version is None and "tabby_build_info" in str(other.error)
    assert render_text(CLIENT, [gone]) == (
        f"tabby {tabby.__version__}\nagent on node-1 (netns lab-node-1, 127.0.0.1:9099):"
        " not reachable: connection refused")


def test_version_reads_a_live_agents_metrics(agent_http: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--agent-addr", agent_http, "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: out[k] for k in CLIENT} == CLIENT and out["client"] == CLIENT
    assert out["agents"] == [{"node": "this node", "netns": None, "address": agent_http,
                              "reachable": True, "version": tabby.__version__,
                              "python": platform.python_version(), "error": None}]
    assert main(["version", "--agent-addr", agent_http]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"tabby {tabby.__version__}",
        f"agent on this node ({agent_http}): tabby {tabby.__version__},"
        f" Python {platform.python_version()}"]


def test_an_unreachable_agent_is_reported_not_an_error(
        closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--agent-addr", f"127.0.0.1:{closed_port}", "-o", "json"]) == 0
    agent = json.loads(capsys.readouterr().out)["agents"][0]
    assert (agent["reachable"], agent["version"], agent["error"]) == (
        False, None, "connection refused")


def test_client_only_keeps_the_old_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--client", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {**CLIENT, "client": CLIENT}
    assert main(["version", "--client"]) == 0
    assert capsys.readouterr().out == f"tabby {tabby.__version__}\n"


@pytest.mark.parametrize("argv", [
    ["--timeout", "0"], ["--timeout", "x"], ["--agent-addr", "nohost"],
    ["--agent-addr", "h:99999"], ["--client", "--node", "node-1"],
    ["--node", "node-1", "--agent-addr", "127.0.0.1:1"], ["--bogus"]])
def test_misused_flags_are_usage_errors(argv: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["version", *argv])
    except SystemExit as exc:  # argparse's own checks
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert "tabby version: error:" in err and err.count("error:") == 1


def test_node_without_a_lab_is_a_user_error(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TABBY_LAB", "no-such-lab-dcx")
    assert main(["version", "--node", "node-1"]) == 1
    assert capsys.readouterr().err == (
        "error: --node node-1: no lab named 'no-such-lab-dcx' is up (use --lab NAME;"
        " outside a lab, --agent-addr HOST:PORT)\n")
