"""PodWirer against a real kernel: one node namespace, pod namespaces, real traffic.

The wirer works on "this thread's namespace" for the node side, so each test
body runs with the test thread inside the scratch node namespace
(``entered_netns``); the pod side is reached by path, as CNI hands it over.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tabby.dataplane.netlink import CallCounts, entered_netns
from tabby.dataplane.pods import PodWirer, PodWiring, host_veth_name
from tabby.errors import DataplaneError
from tabby.marks import HOST_MAC

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 (network namespaces)")

PREFIX = f"ta-pw-{os.getpid()}"


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def nspath(name: str) -> str:
    return f"/var/run/netns/{name}"


@pytest.fixture
def node() -> Iterator[str]:
    """A node namespace with forwarding on and a default route (proxy ARP needs one)."""
    made: list[str] = []

    def add(name: str) -> str:
        ip("netns", "add", name)
        made.append(name)
        return name

    name = add(f"{PREFIX}-node")
    try:
        ip("netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.accept_dad=0",
           "net.ipv6.conf.default.accept_dad=0")
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "route", "add", "default", "dev", "lo")
        for i in (1, 2):
            add(f"{PREFIX}-pod{i}")
        with entered_netns(nspath(name)):
            yield name
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def wiring(i: int, ifname: str = "eth0") -> PodWiring:
    return PodWiring(host_veth_name(f"cid{i}", ifname), nspath(f"{PREFIX}-pod{i}"), ifname,
                     (ipaddress.ip_interface(f"198.19.0.{i}/32"),
                      ipaddress.ip_interface(f"fd7a:bb1e:1::{i}/128")), mtu=1400)


def tcp_roundtrip(src: str, dst_ns: str, dst: str, port: int = 8080) -> bytes:
    """Listen on ``dst`` in namespace ``dst_ns``, connect from ``src``; returns the answer."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with entered_netns(nspath(dst_ns)):
        server = socket.socket(family, socket.SOCK_STREAM)
    with entered_netns(nspath(src)):
        client = socket.socket(family, socket.SOCK_STREAM)
    with server, client:
        server.bind((dst, port))
        server.listen()
        client.settimeout(5)
        client.connect((dst, port))
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"pong")
        return client.recv(16)


def test_hostveth_name_is_short_and_stable() -> None:
    name = host_veth_name("0123456789abcdef" * 4, "eth0")
    assert name.startswith("tab") and len(name) == 15
    assert name == host_veth_name("0123456789abcdef" * 4, "eth0")
    assert name != host_veth_name("0123456789abcdef" * 4, "eth1")


def test_wire_two_pods_and_talk_both_families(node: str) -> None:
    counts = CallCounts()
    wirer = PodWirer(counts)
    first = wirer.wire(wiring(1))
    wirer.wire(wiring(2))
    assert first.host_mac == HOST_MAC and first.ifname == "eth0" and first.pod_mac
    pod1 = f"{PREFIX}-pod1"
    routes = ip("-n", pod1, "route")
    assert "default via 169.254.1.1 dev eth0" in routes
    assert "169.254.1.1 dev eth0" in routes and "scope link" in routes
    assert "default via fe80::ecee:eeff:feee:eeee dev eth0" in ip("-6", "-n", pod1, "route")
    assert "mtu 1400" in ip("-n", pod1, "link", "show", "eth0")
    host = ip("-n", node, "-d", "link", "show", wiring(1).host_veth)
    assert HOST_MAC in host and "mtu 1400" in host
    assert ip("netns", "exec", node, "sysctl", "-n",
              f"net.ipv4.conf.{wiring(1).host_veth}.proxy_arp").strip() == "1"
    pod2 = f"{PREFIX}-pod2"
    assert tcp_roundtrip(pod1, pod2, "198.19.0.2") == b"pong"
    assert tcp_roundtrip(pod1, pod2, "fd7a:bb1e:1::2") == b"pong"
    assert wirer.inspect(wiring(1)) == [] and wirer.inspect(wiring(2)) == []


def test_wire_is_idempotent_and_fixes_addresses(node: str) -> None:
    wirer = PodWirer(CallCounts())
    first = wirer.wire(wiring(1))
    again = wirer.wire(wiring(1))
    assert again == first  # same pair reused
    changed = PodWiring(wiring(1).host_veth, wiring(1).netns, "eth0",
                        (ipaddress.ip_interface("198.19.0.9/32"),), mtu=1400)
    wirer.wire(changed)
    addrs = ip("-n", f"{PREFIX}-pod1", "addr", "show", "eth0")
    assert "198.19.0.9/32" in addrs and "198.19.0.1/32" not in addrs
    assert "fd7a:bb1e:1::1" not in addrs


def test_inspect_reports_what_is_missing(node: str) -> None:
    wirer = PodWirer(CallCounts())
    w = wiring(1)
    wirer.wire(w)
    ip("-n", node, "route", "del", "198.19.0.1/32")
    ip("-n", f"{PREFIX}-pod1", "route", "del", "default")
    problems = wirer.inspect(w)
    assert any("host route 198.19.0.1/32" in p for p in problems), problems
    assert any("route 0.0.0.0/0 via 169.254.1.1" in p for p in problems), problems
    wirer.wire(w)
    assert wirer.inspect(w) == []


def test_unwire_is_idempotent(node: str) -> None:
    wirer = PodWirer(CallCounts())
    w = wiring(1)
    wirer.wire(w)
    assert wirer.host_veths() == [w.host_veth]
    assert wirer.unwire(w.host_veth) is True
    assert wirer.unwire(w.host_veth) is False
    assert "eth0" not in ip("-n", f"{PREFIX}-pod1", "link")
    assert "198.19.0.1" not in ip("-n", node, "route")
    assert wirer.inspect(w) == [f"host interface {w.host_veth} is missing",
                                f"eth0 is missing in {w.netns}"]


def test_foreign_interface_in_the_pod_is_refused(node: str) -> None:
    ip("-n", f"{PREFIX}-pod1", "link", "add", "eth0", "type", "veth", "peer", "name", "x")
    with pytest.raises(DataplaneError, match="did not create"):
        PodWirer(CallCounts()).wire(wiring(1))


def test_missing_netns_is_an_error(node: str) -> None:
    w = PodWiring("tab000000000000", "/var/run/netns/ta-no-such-ns", "eth0", ())
    with pytest.raises(DataplaneError, match="does not exist"):
        PodWirer(CallCounts()).wire(w)
