"""The pod listener and the prober, inside a private namespace (no agent needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.lab import listener, prober, system

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

NETNS = "tlp-listener"


@pytest.fixture
def netns() -> Iterator[str]:
    system.delete_netns([NETNS])
    system.add_netns([NETNS])
    try:
        system.ip_batch(["link set lo up"], NETNS)
        yield NETNS
    finally:
        system.delete_netns([NETNS])


@pytest.fixture
def web(netns: str, tmp_path: Path) -> Iterator[str]:
    argv = system.in_netns(netns, [sys.executable, "-I", "-S", listener.__file__,
                                   "--name", "web-1", "--port=8080", "--port=5353"])
    proc = system.spawn_ready(argv, "listener web-1", tmp_path / "listener.log")
    try:
        assert system.alive(proc)
        yield netns
    finally:
        system.stop([proc], grace=2.0)
        assert not system.alive(proc)


def run_prober(netns: str, probes: list[dict[str, Any]], timeout: float = 1.0
               ) -> dict[int, dict[str, Any]]:
    request = {"timeout": timeout, "probes": probes}
    done = subprocess.run(system.in_netns(netns, [sys.executable, "-I", "-S", prober.__file__]),
                          input=json.dumps(request), capture_output=True, text=True,
                          timeout=30, check=True)
    return {r["id"]: r for r in json.loads(done.stdout)["results"]}


def test_listener_answers_tcp_and_udp_on_both_families(web: str) -> None:
    probes = [{"id": i, "address": addr, "port": port, "protocol": proto, "expect": "web-1"}
              for i, (addr, port, proto) in enumerate([
                  ("127.0.0.1", 8080, "tcp"), ("127.0.0.1", 8080, "udp"),
                  ("::1", 5353, "tcp"), ("::1", 5353, "udp")])]
    results = run_prober(web, probes)
    assert [results[i]["connected"] for i in range(4)] == [True] * 4
    assert {r["answer"] for r in results.values()} == {"web-1"}


def test_prober_reports_refusals_wrong_names_and_silence(web: str) -> None:
    probes = [
        {"id": 0, "address": "127.0.0.1", "port": 8081, "protocol": "tcp", "expect": "web-1"},
        {"id": 1, "address": "127.0.0.1", "port": 8081, "protocol": "udp", "expect": "web-1"},
        {"id": 2, "address": "127.0.0.1", "port": 8080, "protocol": "tcp", "expect": "web-2"},
        # no route to anything but loopback here
        {"id": 3, "address": "198.18.255.254", "port": 80, "protocol": "tcp", "expect": "x"},
    ]
    results = run_prober(web, probes, timeout=0.5)
    assert not any(r["connected"] for r in results.values())
    assert results[0]["error"] == "ECONNREFUSED"
    assert results[1]["error"]  # ICMP port unreachable surfaces as a refusal
    assert results[2]["answer"] == "web-1" and results[2]["error"] == ""
    assert results[3]["error"] in ("ENETUNREACH", "timeout")


def test_more_probes_than_sockets_in_flight_all_get_answers(web: str) -> None:
    count = prober.MAX_IN_FLIGHT + 44
    probes = [{"id": i, "address": "127.0.0.1" if i % 2 else "::1", "port": 8080,
               "protocol": "tcp" if i % 3 else "udp", "expect": "web-1"} for i in range(count)]
    results = run_prober(web, probes, timeout=5.0)
    assert sorted(results) == list(range(count))
    assert all(r["connected"] for r in results.values())
