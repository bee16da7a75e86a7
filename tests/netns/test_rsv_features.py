"""IPReservation, all-interfaces host endpoints and service-account rules with real packets.

One dual-stack 2-node lab (``rsvl``), everything through ``tabby apply`` as a
user would: pods never get a reserved address and ``ipam check`` names the
holders of a newly reserved one; a ``*`` host endpoint with a policy denying
one port closes that port of the host to a peer and to a pod of the other
node while forwarded pod traffic passes, until an applyOnForward policy
says otherwise; a rule admitting one service account's pods (by the
ServiceAccount's labels) admits exactly those. Every check polls with a
deadline.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from tabby.lab import builder, system
from tabby.lab.state import LabState, PodRecord, load, require
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "rsvl"
TABBY = [sys.executable, "-m", "tabby.cli.main", "--lab", LAB]
CONVERGE = 20.0
NODE1 = {"ipv4": "198.18.0.11", "ipv6": "fd7a:bb1e::11"}

RESERVED = [  # the lowest addresses IPAM would hand out, and a whole block of each family
    "198.19.0.0/26", "198.19.0.64/29", "198.19.0.128/29", "198.19.0.192/29", "198.19.1.0/29",
    "fd7a:bb1e:1::/122", "fd7a:bb1e:1::40/125", "fd7a:bb1e:1::80/125", "fd7a:bb1e:1::c0/125",
    "fd7a:bb1e:1::100/125",
]


def pod(name: str, ns: str, node: str, labels: dict[str, str] | None = None,
        account: str = "") -> str:
    sa = f"\n          serviceAccountName: {account}" if account else ""  # dedented below
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: {ns}, labels: {json.dumps(labels or {})}}}
        spec:
          nodeName: {node}{sa}
          containers: [{{name: m, image: busybox, ports: [{{containerPort: 80}},
                                                         {{containerPort: 81}}]}}]
        ---
        """)


NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: rsv}
---
apiVersion: v1
kind: Namespace
metadata: {name: hep}
---
apiVersion: v1
kind: Namespace
metadata: {name: sa}
---
"""


def tabby(*args: str, stdin: str | None = None, check: bool = True
          ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*TABBY, *args], input=stdin, capture_output=True, text=True,
                          timeout=180, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"tabby {' '.join(args)}: {done.stdout}\n{done.stderr}")
    return done


def probe(src: str, dst: str, port: int, family: str) -> bool:
    out = tabby("lab", "probe", "-o", "json", "--from", src, "--to", dst, "--port", str(port),
                "--protocol", "tcp", "--family", family, "--timeout", "0.5").stdout
    probes: list[dict[str, Any]] = json.loads(out)["probes"]
    assert len(probes) == 1, probes
    return bool(probes[0]["connected"])


def expect(cases: dict[tuple[str, str, int], bool]) -> None:
    """Each (from, to, port) connects or not, on both families."""
    def ok() -> bool:
        return all(probe(s, d, p, f) == want for (s, d, p), want in cases.items()
                   for f in ("ipv4", "ipv6"))
    try:
        wait_for(f"reachability {cases}", ok, CONVERGE)
    except AssertionError:
        got = {(k, f): probe(*k, f) for k in cases for f in ("ipv4", "ipv6")}
        raise AssertionError(f"expected {cases} on both families, got {got}") from None


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    if load(LAB) is not None:
        builder.down(LAB)
    try:
        tabby("lab", "up", "--name", LAB, "--nodes", "2", "--stack", "dual")
        tabby("apply", "-f", "-", stdin=NAMESPACES)
        yield require(LAB)
    finally:
        if load(LAB) is not None:
            tabby("lab", "down", "--name", LAB, check=False)
        assert not [n for n in system.netns_list() if n.startswith((f"{LAB}-", f"{LAB}_"))]


def record(ns: str, name: str) -> PodRecord:
    got = require(LAB).pod(ns, name)
    assert got is not None, f"{ns}/{name} is not in the lab"
    return got


# -- IPReservation ----------------------------------------------------------------------


def pod_addresses(ref: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The pod's global addresses on eth0, as the pod itself sees them (lab exec)."""
    out = tabby("lab", "exec", ref, "--", "ip", "-j", "addr", "show", "dev", "eth0").stdout
    return [ipaddress.ip_address(a["local"]) for link in json.loads(out)
            for a in link["addr_info"] if a.get("scope") == "global"]


def reservation(name: str, cidrs: list[str]) -> str:
    return (f"apiVersion: projectcalico.org/v3\nkind: IPReservation\nmetadata: {{name: {name}}}\n"
            f"spec: {{reservedCIDRs: {json.dumps(cidrs)}}}\n")


def test_pods_never_get_reserved_addresses_and_check_names_late_holders(lab: LabState) -> None:
    tabby("apply", "-f", "-", stdin=reservation("rsv-low", RESERVED))
    try:
        pods = "".join(pod(f"r{i}", "rsv", f"node-{1 + i % 2}") for i in range(4))
        tabby("apply", "-f", "-", stdin=pods)
        reserved = [ipaddress.ip_network(c) for c in RESERVED]
        held = {}
        for i in range(4):
            got = pod_addresses(f"rsv/r{i}")
            assert sorted(a.version for a in got) == [4, 6], got
            assert not [a for a in got if any(a in c for c in reserved)], got
            held[f"r{i}"] = got
        # a reservation over an address already held: kept by its pod, named by check
        late = [f"{a}/{a.max_prefixlen}" for a in held["r0"]]
        tabby("apply", "-f", "-", stdin=reservation("rsv-late", late))
        done = tabby("ipam", "check", "-o", "json", check=False)
        problems = json.loads(done.stdout)["problems"]
        assert done.returncode == 1
        found = {p["subject"] for p in problems if p["kind"] == "reserved-address"}
        assert found == {str(a) for a in held["r0"]}, problems
        assert pod_addresses("rsv/r0") == held["r0"]
        tabby("delete", "ipreservation", "rsv-late")
        after = json.loads(tabby("ipam", "check", "-o", "json", check=False).stdout)
        assert not [p for p in after["problems"] if p["kind"] == "reserved-address"]
    finally:
        tabby("delete", "ipreservation", "rsv-late", check=False)
        tabby("delete", "ipreservation", "rsv-low", check=False)


# -- all-interfaces host endpoints --------------------------------------------------------

STAR = """
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-1-all, labels: {role: star-host}}
spec: {node: node-1, interfaceName: "*"}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: star-no-8080}
spec:
  order: 100
  selector: role == 'star-host'
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [8080]}}, {action: Allow}]
  egress: [{action: Allow}]
"""

ON_FORWARD = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: star-fwd-no-80}
spec:
  order: 200  # after star-no-8080, whose Deny 8080 then still comes first for host traffic
  selector: role == 'star-host'
  applyOnForward: true
  types: [Ingress]
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [80]}}, {action: Allow}]
"""

LISTENER = textwrap.dedent("""
    import socket, sys, threading
    def serve(port):
        s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port)); s.listen(16)
        while True:
            conn, _ = s.accept(); conn.sendall(b"hi"); conn.close()
    for port in map(int, sys.argv[1:]):
        threading.Thread(target=serve, args=(port,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
""")
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5)"


def reaches(netns: str, family: str, port: int) -> bool:
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CONNECT,
                           NODE1[family], str(port)], capture_output=True, timeout=30,
                          check=False)
    return done.returncode == 0


def host_ports(places: list[str], want: dict[int, bool]) -> None:
    def ok() -> bool:
        return all(reaches(n, f, p) == w for n in places for f in NODE1 for p, w in want.items())
    try:
        wait_for(f"node-1's ports {want} from {places}", ok, CONVERGE)
    except AssertionError:
        got = {(n, f, p): reaches(n, f, p) for n in places for f in NODE1 for p in want}
        raise AssertionError(f"expected {want}, got {got}") from None


def test_star_host_endpoint_polices_the_host_and_forwarding_only_on_forward(
        lab: LabState) -> None:
    tabby("apply", "-f", "-", stdin=pod("s1", "hep", "node-1") + pod("c2", "hep", "node-2"))
    places = [f"{LAB}-tor", record("hep", "c2").netns]  # a peer, and a pod of node-2
    listener = subprocess.Popen(["ip", "netns", "exec", lab.node("node-1").netns,
                                 sys.executable, "-c", LISTENER, "8080", "8081"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        host_ports(places, {8080: True, 8081: True})
        expect({("hep/c2", "hep/s1", 80): True})
        tabby("apply", "-f", "-", stdin=STAR)
        host_ports(places, {8080: False, 8081: True})
        # forwarded through node-1's interfaces: no applyOnForward policy, not policed
        expect({("hep/c2", "hep/s1", 80): True, ("hep/c2", "hep/s1", 81): True})
        tabby("apply", "-f", "-", stdin=ON_FORWARD)
        expect({("hep/c2", "hep/s1", 80): False, ("hep/c2", "hep/s1", 81): True})
        host_ports(places, {8080: False, 8081: True})
        tabby("delete", "-f", "-", stdin=STAR + "---\n" + ON_FORWARD)
        host_ports(places, {8080: True})
        expect({("hep/c2", "hep/s1", 80): True})
    finally:
        listener.kill()
        listener.communicate()
        tabby("delete", "-f", "-", "--ignore-not-found", stdin=STAR + "---\n" + ON_FORWARD,
              check=False)


# -- serviceAccounts --------------------------------------------------------------------

ACCOUNTS = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot, namespace: sa, labels: {team: ops}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: intern, namespace: sa, labels: {team: dev}}
---
"""

ONLY_OPS = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db-from-ops, namespace: sa}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {serviceAccounts: {selector: team == 'ops'}}}]
"""


def test_service_account_rule_admits_only_that_accounts_pods(lab: LabState) -> None:
    tabby("apply", "-f", "-", stdin=ACCOUNTS + pod("db", "sa", "node-1", {"app": "db"})
          + pod("ops", "sa", "node-2", account="robot")
          + pod("dev", "sa", "node-2", account="intern")
          + pod("anon", "sa", "node-1"))
    try:
        expect({("sa/ops", "sa/db", 80): True, ("sa/dev", "sa/db", 80): True})
        tabby("apply", "-f", "-", stdin=ONLY_OPS)
        expect({("sa/ops", "sa/db", 80): True, ("sa/dev", "sa/db", 80): False,
                ("sa/anon", "sa/db", 80): False})
        # the ServiceAccount's labels, not the pod's, decide: relabel the intern's account
        tabby("apply", "-f", "-", stdin=ACCOUNTS.replace("team: dev", "team: ops"))
        expect({("sa/dev", "sa/db", 80): True, ("sa/anon", "sa/db", 80): False})
    finally:
        tabby("delete", "-f", "-", "--ignore-not-found", stdin=ONLY_OPS, check=False)
