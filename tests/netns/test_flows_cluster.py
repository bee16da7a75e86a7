"""Flows cluster-wide, and how soon (lab ``fl2``, two nodes, IPv4).

A client pod on node-1, a server pod on node-2 whose policy denies TCP 81. The
lab's agents serve ``/flows`` on their node address too (``--flows-addr``).

- Within a second: the test sends one SYN to the denied port from the client's
  namespace and polls node-2's agent's ``/flows`` over HTTP inside node-2's
  namespace (no CLI start in between) until the record of that very connection
  (its source port) is served; the time from the SYN must be under one second.
- Cluster-wide: ``tabby flows`` with the lab's datastore and no lab named, run in
  the ToR's namespace (which routes to every node; the root namespace is never
  wired to a lab), finds the agents from the Node objects and lists both nodes'
  records of that connection (node-1's egress, node-2's ingress deny).
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tabby.agent.flowrecord import make_filter
from tabby.dataplane.netns import entered_netns
from tabby.lab import builder, system
from tabby.lab.state import LabState, load, require

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "fl2"
TABBY = [sys.executable, "-m", "tabby.cli.main"]
MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: f2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: f2, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: main, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: f2, labels: {app: server}}
spec:
  nodeName: node-2
  containers: [{name: main, image: busybox, ports: [{containerPort: 80}, {containerPort: 81}]}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-in, namespace: f2}
spec:
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, destination: {ports: [80]}}
  - {action: Deny, protocol: TCP, destination: {ports: [81]}}
"""


def tabby(*args: str) -> str:
    done = subprocess.run([*TABBY, "--lab", LAB, *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, f"tabby {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def connects(pod_netns: str, ip: str, port: int, timeout: float = 1.0) -> bool:
    with entered_netns(f"/var/run/netns/{pod_netns}"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        return sock.connect_ex((ip, port)) == 0
    finally:
        sock.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    if load(LAB) is not None:
        builder.down(LAB)
    try:
        tabby("lab", "up", "--name", LAB, "--nodes", "2", "--stack", "ipv4")
        f = tmp_path_factory.mktemp("fl2") / "m.yaml"
        f.write_text(MANIFESTS)
        tabby("apply", "-f", str(f))
        state = require(LAB)
        client, server = _pod(state, "client"), _pod(state, "server")
        deadline = time.monotonic() + 60
        while not (connects(client.netns, str(server.ips[0]), 80)
                   and not connects(client.netns, str(server.ips[0]), 81, 0.5)):
            assert time.monotonic() < deadline, "the server's policy never took effect"
            time.sleep(0.2)
        yield state
    finally:
        state_now = load(LAB)
        if state_now is not None:
            builder.down(LAB)
            assert [p for p in state_now.all_procs() if system.alive(p)] == []
        assert not [ns for ns in system.netns_list() if ns.startswith((f"{LAB}-", f"{LAB}_"))]


def _pod(state: LabState, name: str) -> Any:
    return next(p for p in state.pods if p.namespace == "f2" and p.name == name)


def _node(state: LabState, name: str) -> Any:
    return next(n for n in state.nodes if n.name == name)


def agent_flows(netns: str, query: dict[str, str]) -> list[dict[str, Any]]:
    """GET /flows from the agent's metrics listener, inside node namespace ``netns``."""
    host, port = builder.AGENT_METRICS.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        with entered_netns(f"/var/run/netns/{netns}"):
            conn.connect()
        conn.request("GET", "/flows?" + urllib.parse.urlencode(query))
        resp = conn.getresponse()
        assert resp.status == 200
        return list(json.loads(resp.read())["items"])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def denied(lab: LabState) -> dict[str, Any]:
    """One SYN to the denied port, and how long until node-2's agent serves its record."""
    client, server = _pod(lab, "client"), _pod(lab, "server")
    node2 = _node(lab, "node-2").netns
    query = make_filter(port=81, verdict="deny", since=time.time() - 5).to_query()
    with entered_netns(f"/var/run/netns/{client.netns}"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sent = time.monotonic()
        assert sock.connect_ex((str(server.ips[0]), 81)) == errno.EINPROGRESS
        sport = sock.getsockname()[1]
        deadline = sent + 15  # generous; the figure is asserted below
        while True:
            got = [i for i in agent_flows(node2, query) if i["sourcePort"] == sport]
            if got:
                seen = time.monotonic() - sent
                break
            assert time.monotonic() < deadline, "node-2 never served the denied record"
            time.sleep(0.02)
    finally:
        sock.close()
    print(f"denied record served by node-2's /flows {seen * 1000:.0f} ms after the SYN")
    return {"sport": sport, "seen": seen, "record": got[0]}


def test_denied_record_is_served_within_a_second(denied: dict[str, Any]) -> None:
    rec = denied["record"]
    assert (rec["node"], rec["direction"], rec["verdict"], rec["rule"]) == (
        "node-2", "ingress", "deny", 1)
    assert rec["policy"]["name"] == "server-in" and rec["source"] == "f2/client"
    assert denied["seen"] < 1.0, f"served {denied['seen']:.2f}s after the SYN"


def test_flows_without_a_lab_asks_every_node_at_its_address(lab: LabState,
                                                            denied: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TABBY_LAB", "TABBY_DATASTORE")}
    env["TABBY_LAB"] = f"{LAB}-not-a-lab"  # no lab is chosen: Nodes come from the datastore
    done = subprocess.run(["ip", "netns", "exec", f"{LAB}-tor", *TABBY, "--datastore",
                           lab.datastore, "flows", "-o", "json", "--since", "5m",
                           "--port", "81"],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # every node answered
    items = [i for i in json.loads(done.stdout)["items"] if i["sourcePort"] == denied["sport"]]
    assert {(i["node"], i["direction"]) for i in items} == {("node-1", "egress"),
                                                            ("node-2", "ingress")}
