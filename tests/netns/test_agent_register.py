"""Node self-registration on a real kernel: an agent in a namespace of its own,
told ``--ip autodetect --ip-autodetection-method interface=...`` (and its IPv6
twin through the environment, with ``NODENAME`` for ``--node``, as a DaemonSet
sets them), creates its Node with the addresses of that interface, not of the
decoy beside it; when the host's address changes, the Node follows within a
resync interval. And ``can-reach`` learns the source address towards a
destination from the kernel without a packet leaving.

Everything lives in one namespace this test makes (``tnd-reg-<pid>``: a veth pair,
lab-range addresses) and removes, with the agent, even when it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabby.lab.builder import tabby_command
from tabby.model import Node
from tabby.store import open_store
from tabby.store.client import Client
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

NODE = "tnd-node"
DEV, DECOY = "tndeth0", "tndeth1"
V4, V4_DECOY, V4_NEW = "198.18.250.11/24", "198.18.249.11/24", "198.18.251.12/25"
V6, V6_NEW = "fd7a:bb1e:250::11/64", "fd7a:bb1e:251::12/80"
DEADLINE = 20.0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"tnd-reg-{os.getpid()}"
    ip("netns", "add", name)
    try:
        for key in ("all", "default"):
            ip("netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")
        ip("-n", name, "link", "set", "lo", "up")
        # The decoy first: first-found would take it; the interface regex must not.
        ip("-n", name, "link", "add", DECOY, "type", "veth", "peer", "name", DEV)
        for dev, addresses in ((DECOY, [V4_DECOY]), (DEV, [V4, V6])):
            ip("-n", name, "link", "set", dev, "up")
            for address in addresses:
                ip("-n", name, "addr", "add", address, "dev", dev)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def agent(netns: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    url = f"sqlite://{tmp_path / 'tabby.db'}"
    log = tmp_path / "agent.log"
    env = {**os.environ, "NODENAME": NODE, "TABBY_IP6": "autodetect",
           "TABBY_IP6_AUTODETECTION_METHOD": f"interface=^{DEV}$"}
    argv = ["ip", "netns", "exec", netns, *tabby_command(), "--datastore", url, "agent",
            "--cni-socket", str(tmp_path / "cni.sock"), "--metrics-addr", "127.0.0.1:0",
            "--resync-interval", "1", "--ip", "autodetect",
            "--ip-autodetection-method", f"interface=^{DEV}$"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def agent_log(log: Path) -> str:
    """The tail of the agent's log, for a failed wait."""
    return "; agent log:\n" + log.read_text(errors="replace")[-3000:]


def addresses(client: Client) -> tuple[str, str] | None:
    node = client.try_get(Node, NODE)
    if node is None:
        return None
    return str(node.spec.bgp.ipv4_address), str(node.spec.bgp.ipv6_address)


def test_the_agent_registers_its_node_and_follows_the_hosts_address(
        netns: str, agent: tuple[str, Path]) -> None:
    url, log = agent
    with open_store(url) as store:
        client = Client(store)
        wait_for("the Node registered with tndeth0's addresses",
                 lambda: addresses(client) == (V4, V6), DEADLINE,
                 detail=lambda: agent_log(log))
        for family, old, new in (("-4", V4, V4_NEW), ("-6", V6, V6_NEW)):
            ip("-n", netns, family, "addr", "add", new, "dev", DEV)
            ip("-n", netns, family, "addr", "del", old, "dev", DEV)
        wait_for("the Node following the new addresses",
                 lambda: addresses(client) == (V4_NEW, V6_NEW), DEADLINE,
                 detail=lambda: agent_log(log))
    text = log.read_text()
    assert f"registered Node {NODE}: IPv4 {V4}, IPv6 {V6}" in text
    assert f"node addresses: IPv4 {V4_NEW}, IPv6 {V6_NEW}" in text


def sent_to(netns: str, destination: str) -> int:
    """Packets the namespace sent to ``destination`` (an nft counter on output)."""
    done = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "chain", "ip",
                           "tndtest", "out"], check=True, capture_output=True, text=True,
                          timeout=30)
    rules = [e["rule"] for e in json.loads(done.stdout)["nftables"] if "rule" in e]
    counters = [x["counter"] for r in rules for x in r["expr"] if "counter" in x]
    assert len(counters) == 1, rules
    return int(counters[0]["packets"])


def test_can_reach_learns_the_source_address_and_sends_nothing(netns: str) -> None:
    dest = "198.18.100.7"
    ip("-n", netns, "route", "add", "198.18.100.0/24", "via", "198.18.250.1")
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], check=True, timeout=30,
                   text=True, capture_output=True, input=(
                       "table ip tndtest {\n chain out {\n"
                       "  type filter hook output priority 0;\n"
                       f"  ip daddr {dest} counter\n }}\n}}\n"))
    code = ("from tabby.agent.autodetect import AddressPlan, HostAddresses\n"
            f"plan = AddressPlan.parse(4, 'autodetect', 'can-reach={dest}')\n"
            "print(HostAddresses([plan]).detect().addresses[4])")
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == V4  # the route's source: tndeth0's, not the decoy's
    assert sent_to(netns, dest) == 0
