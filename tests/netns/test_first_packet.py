"""Fail closed, and open on time: a new pod's first allowed packet, measured from ADD.

A pod under a default-deny policy must never be reachable before its policy
is in place (fail closed: its veth is unknown to the nft table, which drops
its traffic), and should be reachable by what its policy allows as soon as
CNI ADD returns: ADD runs (or joins) a pass before it answers, so the runtime
never starts a workload whose first connections are dropped.

Each round: a Pod object (app=web) is written, then ``tabby-cni`` ADD runs as
a runtime would run it (its own network namespace, the lab node's socket);
the moment ADD returns, a prober already running in a client pod's namespace
(role=client, allowed ICMP by a Calico policy) starts pinging the new address
every millisecond and reports when the first echo came back. A third pod
(role=other) is never allowed: its pings must all fail. The figures (p50, p95
over the rounds) are printed; the issue's goal is p95 <= 20 ms (it was 50-70
ms: the agent's next pass).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tabby.lab import system
from tabby.lab.pods import LabPods
from tabby.lab.state import LabState, load, require
from tabby.model import Pod, parse_manifest
from tests.netns.test_lab_cluster import assert_torn_down, ensure_gone, pod, tabby

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "tfp"
ROUNDS = 12
POLICY = {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
          "metadata": {"name": "web-icmp", "namespace": "default"},
          "spec": {"selector": "app == 'web'", "types": ["Ingress"],
                   "ingress": [{"action": "Allow", "protocol": "ICMP",
                                "source": {"selector": "role == 'client'"}}]}}
# Reads target addresses on stdin; pings each every millisecond (raw ICMP socket) until
# the first echo reply or 3 s; prints "<ip> <ms>" or "<ip> timeout".
PROBER = r"""
import os, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
ident = os.getpid() & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.001)
for line in sys.stdin:
    ip = line.strip()
    t0 = time.monotonic(); seq = 0; got = None
    while got is None and time.monotonic() - t0 < float(sys.argv[1]):
        seq += 1
        head = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xffff)
        s.sendto(struct.pack("!BBHHH", 8, 0, csum(head), ident, seq & 0xffff), (ip, 0))
        try:
            while True:
                data, peer = s.recvfrom(1500)
                if peer[0] == ip and data[20] == 0 and struct.unpack("!H", data[24:26])[0] == ident:
                    got = (time.monotonic() - t0) * 1000; break
        except socket.timeout:
            pass
    print(ip, "timeout" if got is None else "%.2f" % got, flush=True)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    ensure_gone(LAB)
    try:
        tabby("lab", "up", "--name", LAB, "--nodes", "1", "--stack", "ipv4", lab=LAB)
        yield require(LAB)
    finally:
        state = load(LAB)
        if state is not None:
            tabby("lab", "down", "--name", LAB, lab=LAB)
            assert_torn_down(state)


class Prober:
    def __init__(self, netns: str, give_up: float) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PROBER, str(give_up)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def first_reply(self, ip: str) -> float | None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(ip + "\n")
        self.proc.stdin.flush()
        _, result = self.proc.stdout.readline().split()
        return None if result == "timeout" else float(result)

    def close(self) -> None:
        self.proc.kill()  # ip netns exec execs python: this PID is the prober's
        self.proc.communicate()  # reaps it and closes both pipes


def cni(state: LabState, command: str, container: str, netns: str, name: str) -> Any:
    node = state.nodes[0]
    config = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tabby-cni",
              "socket": str(node.cni_socket),
              "ipam": {"assign_ipv4": "true", "assign_ipv6": "false"}}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_IFNAME": "eth0",
           "CNI_PATH": str(node.cni_bin_dir), "PATH": os.environ.get("PATH", ""),
           "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"}
    done = subprocess.run([str(node.cni_bin_dir / "tabby-cni")], input=json.dumps(config),
                          capture_output=True, text=True, env=env, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout) if done.stdout else None


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(pct / 100 * len(ordered) + 0.5) - 1)]


def test_new_pods_are_closed_until_programmed_and_open_when_add_returns(lab: LabState) -> None:
    netns = [f"tfp-w{i}" for i in range(ROUNDS)]
    with LabPods.open(LAB) as driver:
        driver.client.apply(parse_manifest(POLICY))
        # The policy reaches the agent through its watch: pods added before it arrives
        # are (rightly) open. Start once the node's table holds it for a canary web pod.
        assert driver.apply_pod(pod("canary", node="node-1", labels={"app": "web"},
                                    ports=())) == "created"
        deadline = time.monotonic() + 15
        while "web-icmp" not in system.run(["ip", "netns", "exec", lab.nodes[0].netns, "nft",
                                            "list", "table", "inet", "tabby"]):
            assert time.monotonic() < deadline, "the policy never reached the node's table"
            time.sleep(0.05)
        assert driver.apply_pod(pod("client", node="node-1", labels={"role": "client"},
                                    ports=())) == "created"
        assert driver.apply_pod(pod("other", node="node-1", labels={"role": "other"},
                                    ports=())) == "created"
        state = require(LAB)
        client, other = state.pod("default", "client"), state.pod("default", "other")
        assert client is not None and other is not None
        allowed, denied = Prober(client.netns, 3.0), Prober(other.netns, 0.2)
        firsts: list[float] = []
        try:
            system.add_netns(netns)
            for i, ns in enumerate(netns):
                system.ip_batch(["link set lo up"], ns)
                name = f"web-{i}"
                driver.client.apply(Pod.from_manifest({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "default",
                                 "labels": {"app": "web"}},
                    "spec": {"nodeName": "node-1", "containers": [{"name": "m"}]}}))
                result = cni(state, "ADD", f"tfp{i:04d}", ns, name)
                ip = result["ips"][0]["address"].split("/")[0]
                first = allowed.first_reply(ip)  # from the moment ADD returned
                assert first is not None, f"{name} ({ip}) never answered the client"
                firsts.append(first)
                assert denied.first_reply(ip) is None, f"{name} answered a denied pod"
        finally:
            allowed.close()
            denied.close()
            for i, ns in enumerate(netns):
                if ns in system.netns_list():
                    cni(state, "DEL", f"tfp{i:04d}", ns, f"web-{i}")
            system.delete_netns([n for n in netns if n in system.netns_list()])
    p50, p95 = percentile(firsts, 50), percentile(firsts, 95)
    print(f"first allowed packet after ADD returned: p50 {p50:.1f} ms, p95 {p95:.1f} ms,"
          f" max {max(firsts):.1f} ms over {len(firsts)} pods")
    assert p95 < 250, firsts  # generous: a loaded CI machine; the figure is in the output
