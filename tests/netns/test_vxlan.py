"""VXLAN, natOutgoing and the IPIP refusal on real labs.

- ``tx1``: two nodes, dual stack, ``--encap vxlan`` (vxlanMode Always): pods on
  the two nodes talk over IPv4 and IPv6 while the ToR has no route to any pod
  CIDR, and the VXLAN devices' counters show the traffic went through them;
  a pod reaches a namespace outside the cluster (behind the ToR, made here)
  that sees the node's address (natOutgoing); a pool asking for IPIP is
  refused with a clear error (apply warning, /healthz, CNI ADD).
- ``tx2``: two racks, ``--encap vxlan-crosssubnet``: traffic within a rack is
  routed plainly, traffic between racks is encapsulated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tabby.dataplane.netlink import entered_netns
from tabby.ipam import IPAM
from tabby.lab import builder, system
from tabby.lab.pods import LabPods
from tabby.lab.state import LabState, load, require
from tabby.model import IPAMBlock, IPPool, Node, Pod
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

TABBY = [sys.executable, "-m", "tabby.cli.main"]
OUT = "txo-out"  # the outside namespace, behind tx1's ToR
OUT_V4, OUT_V6 = "198.18.99.2", "fd7a:bb1e:0:63::2"  # not the --bgp ext subnet
ECHO_PORT = 7007
ECHO = ("import socket,sys\n"  # answers every TCP connection with the peer's address
        "s=socket.create_server(('::',int(sys.argv[1])),family=socket.AF_INET6,"
        "dualstack_ipv6=True)\n"
        "while True:\n"
        "    c,a=s.accept();c.sendall(a[0].removeprefix('::ffff:').encode());c.close()\n")
IPIP_POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: tx-ipip}
spec: {cidr: 198.18.96.0/20, ipipMode: Always, natOutgoing: true}
"""

TIMEOUT = 15.0  # seconds a wait_for in this module may take


def tabby(lab: str, *args: str, check: bool = True, stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*TABBY, "--lab", lab, *args], capture_output=True, text=True,
                          timeout=120, check=False, input=stdin)
    if check and done.returncode != 0:
        raise AssertionError(f"tabby {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


def ip_json(netns: str, *args: str) -> Any:
    return json.loads(system.run(["ip", "-n", netns, "-j", *args]) or "[]")


def tx_packets(netns: str, dev: str) -> int:
    return int(ip_json(netns, "-s", "link", "show", dev)[0]["stats64"]["tx"]["packets"])


def routes(netns: str, version: int) -> list[dict[str, Any]]:
    return list(ip_json(netns, f"-{version}", "route", "show"))


def pod(name: str, node: str) -> Pod:
    return Pod.from_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": "default", "labels": {"app": name}}, "spec": {
        "nodeName": node, "containers": [{"name": "main", "image": "busybox",
                                          "ports": [{"containerPort": 80}]}]}})


def probe(lab: str, src: str, dst: str, family: str) -> bool:
    done = tabby(lab, "lab", "probe", "-o", "json", "--from", f"default/{src}", "--to",
                 f"default/{dst}", "--family", family)
    probes = json.loads(done.stdout)["probes"]
    assert len(probes) == 1
    return bool(probes[0]["connected"])


def healthz(netns: str) -> tuple[int, str]:
    with entered_netns(f"/var/run/netns/{netns}"):
        conn = http.client.HTTPConnection("127.0.0.1", 9099, timeout=2)
        conn.connect()  # the socket is made inside the node's namespace
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@contextlib.contextmanager
def lab_up(name: str, *args: str) -> Iterator[LabState]:
    if load(name) is not None:
        builder.down(name)
    try:
        tabby(name, "lab", "up", "--name", name, *args)
        yield require(name)
    finally:
        if load(name) is not None:
            builder.down(name)
        assert not [ns for ns in system.netns_list() if ns.startswith((f"{name}-", f"{name}_"))]


def tunnel_routes(netns: str, version: int) -> list[dict[str, Any]]:
    return [r for r in routes(netns, version)
            if r.get("dev", "").startswith("vxlan") and "onlink" in r.get("flags", [])]


@pytest.fixture(scope="module")
def tx1() -> Iterator[LabPods]:
    with lab_up("tx1", "--nodes", "2", "--stack", "dual", "--encap", "vxlan") as state:
        # The agents publish their VTEPs after their first pass; tunnels follow at once.
        nodes = [n.netns for n in state.nodes]
        wait_for("routes through the tunnels", lambda: all(
            tunnel_routes(n, v) for n in nodes for v in (4, 6)), TIMEOUT)
        with LabPods.open(state.name) as pods:
            assert pods.apply_pods([pod("a", "node-1"), pod("b", "node-2")]) == [
                "created", "created"]
            yield pods


# -- VXLAN Always ------------------------------------------------------------------

def test_vxlan_devices_and_pod_mtu(tx1: LabPods) -> None:
    for node in ("tx1-node-1", "tx1-node-2"):
        links = {link["ifname"]: link for link in ip_json(node, "-d", "link", "show")}
        v4, v6 = links["vxlan.tabby"], links["vxlan-v6.tabby"]
        assert (v4["mtu"], v4["linkinfo"]["info_data"]["id"]) == (1450, 4096)
        assert (v6["mtu"], v6["linkinfo"]["info_data"]["id"]) == (1430, 6096)
        assert v4["linkinfo"]["info_data"]["port"] == 4789
        assert not v4["linkinfo"]["info_data"].get("learning", False)
    record = require("tx1").pod("default", "a")
    assert record is not None
    assert ip_json(record.netns, "link", "show", "eth0")[0]["mtu"] == 1430  # dual: 1500 - 70
    # the VTEPs come from IPAM, and IPAM's check knows them for what they are
    assert "no problems found" in tabby("tx1", "ipam", "check").stdout


@pytest.mark.parametrize(("family", "dev"), [("ipv4", "vxlan.tabby"),
                                              ("ipv6", "vxlan-v6.tabby")])
def test_always_pods_talk_through_the_tunnel(tx1: LabPods, family: str, dev: str) -> None:
    version = 4 if family == "ipv4" else 6
    pool = "198.19." if version == 4 else "fd7a:bb1e:1:"
    assert not [r for r in routes("tx1-tor", version) if r["dst"].startswith(pool)]
    assert [r for r in tunnel_routes("tx1-node-2", version) if r["dev"] == dev]
    before = tx_packets("tx1-node-2", dev), tx_packets("tx1-node-1", dev)
    assert probe("tx1", "b", "a", family)
    after = tx_packets("tx1-node-2", dev), tx_packets("tx1-node-1", dev)
    assert after[0] > before[0] and after[1] > before[1]  # request and answer both tunnelled
    tracked = system.run(["ip", "netns", "exec", "tx1-node-2", "conntrack", "-L", "-f", family,
                          "-p", "udp", "--dport", "4789"])
    assert tracked.strip() == ""  # the tunnel's own packets skip conntrack


# -- natOutgoing ---------------------------------------------------------------------

@pytest.fixture
def outside(tx1: LabPods) -> Iterator[None]:
    """A namespace behind tx1's ToR, outside every pool, running an echo-the-peer server."""
    if OUT in system.netns_list():
        system.delete_netns([OUT])
    proc: subprocess.Popen[bytes] | None = None
    try:
        system.add_netns([OUT])
        system.ip_batch(["link add txout type veth peer name eth0 netns " + OUT,
                         "addr add 198.18.99.1/24 dev txout",
                         "addr add fd7a:bb1e:0:63::1/64 dev txout nodad", "link set txout up"],
                        "tx1-tor")
        system.ip_batch(["link set lo up", "link set eth0 up", f"addr add {OUT_V4}/24 dev eth0",
                         f"addr add {OUT_V6}/64 dev eth0 nodad",
                         "route add default via 198.18.99.1",
                         "route add default via fd7a:bb1e:0:63::1"], OUT)
        proc = subprocess.Popen(["ip", "netns", "exec", OUT, sys.executable, "-c", ECHO,
                                 str(ECHO_PORT)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("the echo server", lambda: bool(system.run(
            ["ss", "-N", OUT, "-Htln", f"sport = :{ECHO_PORT}"]).strip()), TIMEOUT)
        yield
    finally:
        if proc is not None:
            proc.kill()  # ip netns exec execs python: this PID is the server's
            proc.wait()
        system.delete_netns([OUT])  # takes the veth pair with it


def connect_from_pod(netns: str, host: str) -> str:
    code = ("import socket,sys\n"
            "c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
            "print(c.recv(100).decode())\n")
    return system.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, host,
                       str(ECHO_PORT)]).strip()


def test_nat_outgoing_shows_the_node_address_outside(tx1: LabPods, outside: None) -> None:
    record = require("tx1").pod("default", "a")
    assert record is not None  # on node-1: 198.18.0.11, fd7a:bb1e::11
    assert connect_from_pod(record.netns, OUT_V4) == "198.18.0.11"
    assert connect_from_pod(record.netns, OUT_V6) == "fd7a:bb1e::11"
    ruleset = system.run(["ip", "netns", "exec", "tx1-node-1", "nft", "list", "chain", "inet",
                          "tabby", "natout-post"])
    assert "masquerade" in ruleset


HOSTS_EXCLUDED = """apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {natOutgoingExclusions: IPPoolsAndHostIPs}
"""


def test_nat_outgoing_exclusions_keep_the_pod_address_towards_nodes(tx1: LabPods) -> None:
    """IPPoolsOnly (the default): another node sees pod traffic from node-1's address, so
    its host endpoint policy cannot tell pods from the node; IPPoolsAndHostIPs: it sees the
    pod's own address."""
    record = require("tx1").pod("default", "a")
    assert record is not None
    pod_v4 = next(str(a) for a in record.ips if a.version == 4)
    port = ECHO_PORT + 1
    server = subprocess.Popen(["ip", "netns", "exec", "tx1-node-2", sys.executable, "-c", ECHO,
                               str(port)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def seen() -> str:
        code = ("import socket,sys\n"
                "c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
                "print(c.recv(100).decode())\n")
        return system.run(["ip", "netns", "exec", record.netns, sys.executable, "-c", code,
                           "198.18.0.12", str(port)]).strip()

    def hosts_set() -> bool:
        return "natout-v4-hosts" in system.run(
            ["ip", "netns", "exec", "tx1-node-1", "nft", "list", "sets", "table", "inet",
             "tabby"])
    try:
        wait_for("the echo server on node-2", lambda: bool(system.run(
            ["ss", "-N", "tx1-node-2", "-Htln", f"sport = :{port}"]).strip()), TIMEOUT)
        assert seen() == "198.18.0.11"  # masqueraded to node-1's address
        tabby("tx1", "apply", "-f", "-", stdin=HOSTS_EXCLUDED)
        wait_for("the host addresses in natout-v4-hosts", hosts_set, TIMEOUT)
        assert seen() == pod_v4
    finally:
        tabby("tx1", "delete", "felixconfiguration", "default", check=False)
        server.kill()  # ip netns exec execs python: this PID is the server's
        server.wait()
    wait_for("natout-v4-hosts to go with the setting", lambda: not hosts_set(), TIMEOUT)


# -- IPIP -----------------------------------------------------------------------------

def cni_add(state: LabState, node: str, netns: str, pool: str) -> subprocess.CompletedProcess[str]:
    """tabby-cni ADD as a runtime would run it, asking for one address from ``pool``."""
    rec = next(n for n in state.nodes if n.name == node)
    config = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tabby-cni",
              "socket": str(rec.cni_socket), "ipam": {"assign_ipv4": "true", "assign_ipv6": "false",
                                                      "ipv4_pools": [pool]}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "tx-ipip-1", "CNI_NETNS":
           f"/var/run/netns/{netns}", "CNI_IFNAME": "eth0", "CNI_PATH": str(rec.cni_bin_dir),
           "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=ipip"}
    return subprocess.run([str(rec.cni_bin_dir / "tabby-cni")], input=json.dumps(config),
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=30,
                          check=False)


def test_an_ipip_pool_is_refused_clearly(tx1: LabPods) -> None:
    applied = tabby("tx1", "apply", "-f", "-", stdin=IPIP_POOL)
    assert "ipippool" in applied.stdout.replace(".", "").lower() or "tx-ipip" in applied.stdout
    assert "warning: IPPool/tx-ipip asks for ipipMode Always" in applied.stderr
    try:
        wait_for("/healthz to name the IPIP pool",
                 lambda: "IPPool/tx-ipip" in healthz("tx1-node-1")[1], TIMEOUT)
        status, text = healthz("tx1-node-1")
        assert status == 200 and text.startswith("ok\n") and "no IPIP support" in text
        state = require("tx1")
        log = next(n for n in state.nodes if n.name == "node-1").agent_log.read_text()
        assert "IPPool/tx-ipip" in log and "ERROR" in log
        system.add_netns(["txo-ipip"])
        try:
            done = cni_add(state, "node-1", "txo-ipip", "tx-ipip")
        finally:
            system.delete_netns(["txo-ipip"])
        error = json.loads(done.stdout)
        assert done.returncode != 0 and error["code"] == 7, done.stdout
        assert "IPPool/tx-ipip" in error["msg"] and "vxlanMode" in error["msg"]
        assert IPAM(tx1.client).addresses_of("k8s-pod-network.tx-ipip-1.eth0") == ()
        ipip_net = ipaddress.IPv4Network("198.18.96.0/20")
        assert not [b for b in tx1.client.list(IPAMBlock) if isinstance(
            b.spec.cidr, ipaddress.IPv4Network) and b.spec.cidr.subnet_of(ipip_net)]
    finally:
        tabby("tx1", "delete", "ippool", "tx-ipip")
    wait_for("/healthz back to plain ok", lambda: healthz("tx1-node-1")[1] == "ok\n", TIMEOUT)
    assert tx1.client.try_get(IPPool, "tx-ipip") is None


def test_turning_vxlan_off_gives_the_tunnels_back(tx1: LabPods) -> None:
    """Last of tx1's tests: the IPv4 pool stops asking for VXLAN."""
    def never(pool: IPPool) -> IPPool:
        return dataclasses.replace(pool, spec=dataclasses.replace(pool.spec, vxlan_mode="Never"))
    tx1.client.mutate(IPPool, "default-ipv4-ippool", "", never)
    wait_for("vxlan.tabby to go", lambda: not any(
        link["ifname"] == "vxlan.tabby" for n in ("tx1-node-1", "tx1-node-2")
        for link in ip_json(n, "link", "show")), TIMEOUT)
    for name in ("node-1", "node-2"):
        node = tx1.client.get(Node, name)
        assert node.spec.vxlan.ipv4_address is None and node.spec.vxlan.ipv6_address
        assert IPAM(tx1.client).addresses_of(f"vxlan-tunnel-addr-{name}") == ()
    wait_for("plain IPv4 routes", lambda: not tunnel_routes("tx1-node-2", 4), TIMEOUT)
    assert probe("tx1", "b", "a", "ipv4") and probe("tx1", "b", "a", "ipv6")
    assert "no problems found" in tabby("tx1", "ipam", "check").stdout


# -- CrossSubnet across two racks ---------------------------------------------------

@pytest.fixture(scope="module")
def tx2() -> Iterator[LabPods]:
    with lab_up("tx2", "--nodes", "3", "--racks", "2", "--encap", "vxlan-crosssubnet") as state:
        racks = {n.name: n.rack for n in state.topology.nodes}
        assert racks == {"node-1": 1, "node-2": 1, "node-3": 2}
        wait_for("routes through the tunnel between racks", lambda: all(
            tunnel_routes(f"tx2-node-{i}", 4) for i in (1, 3)), TIMEOUT)
        with LabPods.open(state.name) as pods:
            pods.apply_pods([pod("a", "node-1"), pod("b", "node-2"), pod("c", "node-3")])
            yield pods


def test_cross_subnet_encapsulates_only_between_racks(tx2: LabPods) -> None:
    node1 = routes("tx2-node-1", 4)
    blocks = {r["dst"]: r for r in node1 if r["dst"].startswith("198.19.")}
    assert any(r.get("gateway") == "198.18.0.12" and r.get("dev") == "eth0"
               for r in blocks.values()), blocks  # node-2's block: plain, same rack
    assert any(r.get("dev") == "vxlan.tabby" for r in blocks.values()), blocks  # node-3's
    before = tx_packets("tx2-node-1", "vxlan.tabby")
    assert probe("tx2", "a", "b", "ipv4")
    assert tx_packets("tx2-node-1", "vxlan.tabby") == before  # same rack: not tunnelled
    assert probe("tx2", "a", "c", "ipv4")
    assert tx_packets("tx2-node-1", "vxlan.tabby") > before  # across racks: tunnelled
