"""``tabby ui`` without a browser: the views (pure), the server over real HTTP, the CLI's checks.

The store is a real SQLite file read with the CLI's own loader; flows and probes
come through the server's ``Sources`` seam (the netns test drives the real ones
in Chromium: tests/netns/test_ui.py).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.agent.flowrecord import FlowFilter, FlowRecord
from tabby.cli.main import main
from tabby.cli.ui import load_snapshot, parse_listen
from tabby.errors import ConfigError
from tabby.lab.probe import Probe, ProbeResult
from tabby.lab.state import LabState, PodRecord
from tabby.policy.program import build_program
from tabby.policy.synthetic import from_yaml, pod_endpoint
from tabby.snapshot import Snapshot
from tabby.store import open_store
from tabby.store.client import Client
from tabby.ui import views
from tabby.ui.server import Sources, UIServer

DOCS = """
apiVersion: v1
kind: Namespace
metadata: {name: fl}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-in, namespace: fl}
spec:
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, destination: {ports: [80]}}
  - {action: Deny, protocol: TCP, destination: {ports: [81]}}
"""


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    url = f"sqlite:///{tmp_path_factory.mktemp('ui') / 'store.db'}"
    store = open_store(url)
    client = Client(store)
    for obj in from_yaml(DOCS):
        client.apply(obj)
    client.apply(pod_endpoint("fl/client", {"app": "client"}, "node-1",
                              ("198.19.0.1/32", "fd7a:bb1e:1::1/128")))
    client.apply(pod_endpoint("fl/server", {"app": "server"}, "node-2",
                              ("198.19.0.65/32", "fd7a:bb1e:1::41/128"),
                              (("http", "TCP", 80), ("", "TCP", 81))))
    client.apply(pod_endpoint("fl/v6only", {"app": "other"}, "node-2", ("fd7a:bb1e:1::42/128",)))
    store.close()
    return load_snapshot(url)


def cell(matrix: dict[str, Any], src: str, dst: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in matrix["cells"] if (c["from"], c["to"]) == (src, dst)]
    assert len(found) == 1
    return found[0]


def test_policy_matrix_names_the_denying_policy_and_rule(snapshot: Snapshot) -> None:
    program = build_program(snapshot, None)
    m = views.policy_matrix(program, "tcp", 81, "ipv4")
    assert m["mode"] == "policy" and m["port"] == 81 and m["family"] == "ipv4"
    assert m["pods"] == ["fl/client", "fl/server"]  # v6only has no IPv4 address
    denied = cell(m, "fl/client", "fl/server")
    assert denied["verdict"] == "deny" and denied["direction"] == "ingress"
    assert denied["policy"] == {"kind": "NetworkPolicy", "namespace": "fl",
                                "name": "server-in", "tier": "default"}
    assert denied["rule"] == 1 and denied["reason"] == "rule"
    back = cell(m, "fl/server", "fl/client")
    assert back["verdict"] == "allow" and back["reason"] == "no-policy" and "policy" not in back
    allowed = cell(views.policy_matrix(program, "tcp", 80, "ipv4"), "fl/client", "fl/server")
    assert allowed["verdict"] == "allow" and allowed["rule"] == 0
    # a port no rule names: the end of the default tier denies it
    ended = cell(views.policy_matrix(program, "tcp", 82, "ipv4"), "fl/client", "fl/server")
    assert ended["verdict"] == "deny" and ended["reason"] == "default-deny"
    assert ended["tier"] == "default" and ended["rule"] is None and "policy" not in ended
    assert len(views.policy_matrix(program, "tcp", 81, "ipv6")["pods"]) == 3


@pytest.mark.parametrize(("query", "word"), [
    ({"protocol": "icmp"}, "protocol"), ({"port": "http"}, "port"), ({"port": "0"}, "port"),
    ({"family": "ipv5"}, "family"), ({"colour": "red"}, "colour")])
def test_matrix_query_errors_name_the_parameter(query: dict[str, str], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        views.parse_matrix_query(query, ["ipv4"])


def test_matrix_query_defaults_to_the_first_family() -> None:
    assert views.parse_matrix_query({}, ["ipv6", "ipv4"]) == ("tcp", 80, "ipv6")
    assert views.parse_matrix_query({"protocol": "UDP", "port": "53"}, ["ipv4"]) == (
        "udp", 53, "ipv4")


def test_topology_lists_nodes_and_their_pods(snapshot: Snapshot) -> None:
    t = views.topology(snapshot, None)
    assert t["lab"] is None and t["families"] == ["ipv4", "ipv6"]
    assert [n["name"] for n in t["nodes"]] == ["node-1", "node-2"]
    server = next(p for p in t["nodes"][1]["pods"] if p["ref"] == "fl/server")
    assert server["ips"] == ["198.19.0.65", "fd7a:bb1e:1::41"]
    assert server["ports"] == [{"port": 80, "protocol": "tcp", "name": "http"},
                               {"port": 81, "protocol": "tcp", "name": ""}]


# -- the server over HTTP -------------------------------------------------------------

def record(node: str, end: float, verdict: str, port: int) -> FlowRecord:
    return FlowRecord(node=node, start=end - 1, end=end, family=4, src="198.19.0.1",
                      dst="198.19.0.65", protocol=6, sport=40000, dport=port,
                      direction="ingress", verdict=verdict, reason=verdict, flow_id="ab12",
                      src_ep="fl/client", dst_ep="fl/server", policy_kind="NetworkPolicy",
                      policy_namespace="fl", policy_name="server-in", tier="default",
                      rule=1 if verdict == "deny" else 0, packets=2, bytes=120)


class Fake:
    """The world the server sees: a snapshot, no lab, two agents' flows, canned probes."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snap = snapshot
        self.filters: list[FlowFilter] = []
        self.lab: LabState | None = None

    def flows(self, flt: FlowFilter) -> tuple[list[FlowRecord], list[str]]:
        self.filters.append(flt)
        got = [record("node-2", 1000.0, "allow", 80), record("node-2", 1005.0, "deny", 81)]
        got = sorted((r for r in got if flt.matches(r)), key=lambda r: r.end, reverse=True)
        return got, ["node-1: no answer within 2s"]

    def probe(self, lab: LabState, protocol: str, port: int, family: str) -> list[ProbeResult]:
        a, b = lab.pods
        return [ProbeResult(Probe(a, b, family, protocol, port), False, error="timed out"),
                ProbeResult(Probe(b, a, family, protocol, port), True, answer="client")]

    def sources(self) -> Sources:
        return Sources(snapshot=lambda: self.snap, lab=lambda: self.lab, flows=self.flows,
                       probe=self.probe, clock=lambda: 1010.0)


@pytest.fixture
def served(snapshot: Snapshot) -> Iterator[tuple[UIServer, Fake]]:
    fake = Fake(snapshot)
    server = UIServer(("127.0.0.1", 0), fake.sources())
    server.start()
    try:
        yield server, fake
    finally:
        server.close()


def get(server: UIServer, path: str, host: str | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{server.address[1]}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def test_page_and_its_files_are_served(served: tuple[UIServer, Fake]) -> None:
    server, _ = served
    assert server.url == f"http://127.0.0.1:{server.address[1]}/"
    status, ctype, html = get(server, "/")
    assert status == 200 and ctype.startswith("text/html")
    assert '<script src="/app.js">' in html and 'href="/app.css"' in html
    assert "http" not in html.replace("http-equiv", "")  # nothing from elsewhere (no CDN)
    status, ctype, js = get(server, "/app.js")
    assert status == 200 and "javascript" in ctype and "/api/flows" in js
    assert ".innerHTML" not in js and "insertAdjacentHTML" not in js  # textContent only
    assert get(server, "/app.css")[0] == 200
    assert get(server, "/etc/passwd")[0] == 404


def test_flows_newest_first_with_policy_rule_and_the_silent_agents(
        served: tuple[UIServer, Fake]) -> None:
    server, fake = served
    status, ctype, body = get(server, "/api/flows")
    assert status == 200 and ctype == "application/json"
    answer = json.loads(body)
    assert [i["port"] for i in answer["items"]] == [81, 80]
    deny = answer["items"][0]
    assert deny["verdict"] == "deny" and deny["rule"] == 1
    assert deny["policy"]["name"] == "server-in" and deny["source"] == "fl/client"
    assert answer["errors"] == ["node-1: no answer within 2s"]
    assert fake.filters[-1].since == pytest.approx(1010.0 - 900) and fake.filters[-1].limit == 200
    answer = json.loads(get(server, "/api/flows?verdict=deny&since=0")[2])
    assert [i["verdict"] for i in answer["items"]] == ["deny"]
    status, _, body = get(server, "/api/flows?verdict=maybe")
    assert status == 400 and "--verdict 'maybe'" in json.loads(body)["error"]


def test_matrix_and_topology_over_http(served: tuple[UIServer, Fake]) -> None:
    server, _ = served
    status, _, body = get(server, "/api/matrix?protocol=tcp&port=81&family=ipv4")
    m = json.loads(body)
    assert status == 200 and cell(m, "fl/client", "fl/server")["rule"] == 1
    status, _, body = get(server, "/api/matrix?port=99999")
    assert status == 400 and "port '99999'" in json.loads(body)["error"]
    status, _, body = get(server, "/api/matrix?mode=probe&port=81")
    assert status == 400 and "need a lab" in json.loads(body)["error"]
    t = json.loads(get(server, "/api/topology")[2])
    assert t["now"] == 1010.0 and len(t["nodes"]) == 2


def test_live_probe_matrix_is_labelled_and_timed(served: tuple[UIServer, Fake],
                                                tmp_path: Path) -> None:
    server, fake = served
    pods = tuple(PodRecord("fl", name, name, node, f"x-{name}", f"c-{name}",
                           ips=(ipaddress.ip_address(ip),)) for name, node, ip in (
        ("client", "node-1", "198.19.0.1"), ("server", "node-2", "198.19.0.65")))
    fake.lab = LabState("uit", tmp_path, "up", {"name": "uit", "nodes": 2}, "memory://",
                        pods=pods)
    m = json.loads(get(server, "/api/matrix?mode=probe&port=81")[2])
    assert m["mode"] == "probe" and m["taken"] == 1010.0
    assert cell(m, "fl/client", "fl/server")["verdict"] == "deny"
    assert cell(m, "fl/server", "fl/client")["verdict"] == "allow"
    status, _, body = get(server, "/api/matrix?mode=probe&protocol=sctp")
    assert status == 400 and "tcp or udp" in json.loads(body)["error"]


def test_requests_for_another_host_are_refused(served: tuple[UIServer, Fake]) -> None:
    server, _ = served
    port = server.address[1]
    assert get(server, "/api/topology", host=f"localhost:{port}")[0] == 200
    status, _, body = get(server, "/api/topology", host=f"evil.example:{port}")
    assert status == 403 and "loopback" in body


# -- the CLI's address ----------------------------------------------------------------

def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8099", explicit=False) == ("127.0.0.1", 8099)
    assert parse_listen("localhost:0", explicit=False) == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8099", explicit=False) == ("::1", 8099)
    assert parse_listen("0.0.0.0:8099", explicit=True) == ("0.0.0.0", 8099)
    with pytest.raises(ConfigError, match=r"\$TABBY_UI_LISTEN .*not a loopback"):
        parse_listen("0.0.0.0:8099", explicit=False)
    for bad in ("8099", "127.0.0.1:http", "127.0.0.1:70000", "example.org:80"):
        with pytest.raises(ConfigError, match="--listen"):
            parse_listen(bad, explicit=True)


def test_port_in_use_is_one_clear_error(snapshot: Snapshot) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"127.0.0.1:{port}: the port is in use"):
            UIServer(("127.0.0.1", port), Fake(snapshot).sources())


def test_cli_bad_listen_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--datastore", "memory://", "ui", "--listen", "nowhere"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--listen 'nowhere'" in err
