"""Policy in a real kernel: a 2-node lab (``tp1``), policies through ``tabby apply``.

Focused checks (the full matrix is test_policy_conformance): default deny,
an allow opening exactly its port, egress deny with replies still passing,
anti-spoofing of a pod's source address, and a host endpoint with failsafe
ports. Every check polls with a deadline: the agents converge in well under
a second, a change never shows at once.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tabby.lab import builder, system
from tabby.lab.state import LabState, load, require
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "tp1"
TABBY = [sys.executable, "-m", "tabby.cli.main", "--lab", LAB]
CONVERGE = 15.0

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {tier: back}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: a}}
spec:
  nodeName: node-1
  containers: [{name: m, image: busybox, ports: [{containerPort: 80, name: http},
                                                 {containerPort: 81}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: b}}
spec:
  nodeName: node-1
  containers: [{name: m, image: busybox, ports: [{containerPort: 80}, {containerPort: 81}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: team, labels: {app: c}}
spec:
  nodeName: node-2
  containers: [{name: m, image: busybox, ports: [{containerPort: 80}, {containerPort: 81}]}]
"""

DENY_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: default}
spec: {podSelector: {}}
"""

ALLOW_TEAM_HTTP = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-team-http, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {tier: back}}}]
    ports: [{port: http}]
"""

DENY_EGRESS = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: team}
spec:
  selector: app == 'c'
  types: [Egress]
  egress: [{action: Deny, protocol: TCP, destination: {ports: [80, 81]}}]
"""

HOST_ENDPOINT = """
apiVersion: tabby.dev/v1
kind: HostEndpoint
metadata: {name: node-1-eth0, labels: {role: host}}
spec: {node: node-1, interfaceName: eth0}
"""


def tabby(*args: str, stdin: str | None = None, check: bool = True
          ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*TABBY, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"tabby {' '.join(args)}: {done.stdout}\n{done.stderr}")
    return done


def connected(src: str, dst: str, port: int, family: str = "ipv4") -> bool:
    out = tabby("lab", "probe", "-o", "json", "--from", src, "--to", dst, "--port", str(port),
                "--protocol", "tcp", "--family", family, "--timeout", "0.5").stdout
    probes: list[dict[str, Any]] = json.loads(out)["probes"]
    assert len(probes) == 1, probes
    return bool(probes[0]["connected"])


def expect(cases: dict[tuple[str, str, int], bool], family: str = "ipv4") -> None:
    def ok() -> bool:
        return all(connected(s, d, p, family) == want for (s, d, p), want in cases.items())
    try:
        wait_for(f"reachability {cases}", ok, CONVERGE)
    except AssertionError:
        got = {k: connected(*k, family) for k in cases}
        raise AssertionError(f"expected {cases}, got {got}") from None


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    if load(LAB) is not None:
        builder.down(LAB)
    try:
        tabby("lab", "up", "--name", LAB, "--nodes", "2", "--stack", "dual")
        tabby("apply", "-f", "-", stdin=PODS)
        yield require(LAB)
    finally:
        if load(LAB) is not None:
            tabby("lab", "down", "--name", LAB, check=False)
        assert not [n for n in system.netns_list() if n.startswith((f"{LAB}-", f"{LAB}_"))]


@pytest.fixture
def clean(lab: LabState) -> Iterator[LabState]:
    yield lab
    for doc in (DENY_INGRESS, ALLOW_TEAM_HTTP, DENY_EGRESS, HOST_ENDPOINT):
        tabby("delete", "-f", "-", "--ignore-not-found", stdin=doc, check=False)


def test_default_deny_then_an_allow_opens_exactly_its_port(clean: LabState) -> None:
    expect({("team/c", "default/a", 80): True, ("default/b", "default/a", 81): True})
    tabby("apply", "-f", "-", stdin=DENY_INGRESS)
    expect({("team/c", "default/a", 80): False, ("default/b", "default/a", 80): False,
            ("team/c", "default/b", 81): False, ("default/a", "team/c", 80): True})
    tabby("apply", "-f", "-", stdin=ALLOW_TEAM_HTTP)
    cases = {("team/c", "default/a", 80): True, ("team/c", "default/a", 81): False,
             ("default/b", "default/a", 80): False, ("team/c", "default/b", 80): False}
    expect(cases)
    expect(cases, family="ipv6")
    explained = json.loads(tabby("policy", "explain", "--from", "team/c", "--to", "default/a",
                                 "--port", "80", "-o", "json").stdout)
    assert explained["verdict"] == "allow"
    assert explained["ingress"]["policy"]["name"] == "allow-team-http"
    tabby("delete", "networkpolicy", "deny-ingress", "allow-team-http", "-n", "default")
    expect({("team/c", "default/a", 81): True, ("default/b", "default/a", 80): True})


def test_egress_deny_and_replies_to_allowed_connections(clean: LabState) -> None:
    tabby("apply", "-f", "-", stdin=DENY_EGRESS)
    expect({("team/c", "default/a", 80): False, ("team/c", "default/b", 81): False,
            ("default/a", "team/c", 80): True})  # c answers: replies pass conntrack
    explained = json.loads(tabby("policy", "explain", "--from", "team/c", "--to", "default/a",
                                 "--port", "81", "-o", "json").stdout)
    assert explained["verdict"] == "deny" and explained["egress"]["rule"]["action"] == "Deny"


def _pod_netns(lab: LabState, ref: str) -> str:
    ns, _, name = ref.partition("/")
    pod = lab.pod(ns, name)
    assert pod is not None, ref
    return pod.netns


RECEIVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 9999))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(100)
        print(peer[0], flush=True)
""")
SENDER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 0))
    for _ in range(3):
        s.sendto(b"x", (sys.argv[2], 9999))
""")


def test_a_spoofed_source_address_is_dropped(lab: LabState) -> None:
    a, c = lab.pod("default", "a"), lab.pod("team", "c")
    b = lab.pod("default", "b")
    assert a is not None and b is not None and c is not None
    a_ip, b_ip, c_ip = (str(p.ip(4)) for p in (a, b, c))
    rp_filter = subprocess.run(["ip", "netns", "exec", lab.node("node-1").netns, "sysctl", "-n",
                                "net.ipv4.conf.all.rp_filter"], capture_output=True, text=True,
                               check=True).stdout.strip()
    assert rp_filter == "0"  # so only tabby's anti-spoofing can drop what follows
    receiver = subprocess.Popen(["ip", "netns", "exec", c.netns, sys.executable, "-c", RECEIVER],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        seen: list[str] = []

        def send(source: str) -> None:
            subprocess.run(["ip", "netns", "exec", a.netns, sys.executable, "-c", SENDER,
                            source, c_ip], check=True, timeout=30)

        # b's address on a's eth0: a neighbour's, routable, and not a's to use.
        subprocess.run(["ip", "-n", a.netns, "addr", "add", f"{b_ip}/32", "dev", "eth0"],
                       check=True)
        try:
            send(b_ip)
        finally:
            subprocess.run(["ip", "-n", a.netns, "addr", "del", f"{b_ip}/32", "dev", "eth0"],
                           check=True)
        send(a_ip)  # then a's own: the control, which must arrive
        deadline = time.monotonic() + CONVERGE
        while a_ip not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([receiver.stdout], [], [], 0.2)
            if ready:
                seen.append(receiver.stdout.readline().strip())
        assert a_ip in seen
        assert b_ip not in seen, seen
    finally:
        receiver.kill()
        receiver.communicate()


LISTENER = textwrap.dedent("""
    import socket, sys, threading
    def serve(port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(16)
        while True:
            conn, _ = s.accept(); conn.sendall(b"hi"); conn.close()
    for port in map(int, sys.argv[1:]):
        threading.Thread(target=serve, args=(port,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
""")
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5)"


def _host_reachable(lab: LabState, port: int) -> bool:
    node_ip = "198.18.0.11"
    done = subprocess.run(["ip", "netns", "exec", f"{LAB}-tor", sys.executable, "-c", CONNECT,
                           node_ip, str(port)], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def test_host_endpoint_denies_all_but_failsafe_ports(clean: LabState) -> None:
    node = clean.node("node-1")
    listener = subprocess.Popen(["ip", "netns", "exec", node.netns, sys.executable, "-c",
                                 LISTENER, "22", "8080"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        wait_for("both host ports open", lambda: _host_reachable(clean, 22)
                 and _host_reachable(clean, 8080), CONVERGE)
        tabby("apply", "-f", "-", stdin=HOST_ENDPOINT)
        wait_for("port 8080 closed by the host endpoint",
                 lambda: not _host_reachable(clean, 8080), CONVERGE)
        assert _host_reachable(clean, 22)  # failsafe
        expect({("team/c", "default/a", 80): True})  # forwarded traffic is not host traffic
        tabby("delete", "hostendpoint", "node-1-eth0")
        wait_for("port 8080 open again", lambda: _host_reachable(clean, 8080), CONVERGE)
    finally:
        listener.kill()
        listener.communicate()

