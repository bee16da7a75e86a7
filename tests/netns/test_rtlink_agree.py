"""RawNetlink (raw sockets, pod wiring's default) against Netlink (pyroute2) on real kernels.

One sequence of the calls ``PodNetlink`` and ``RouteNetlink`` name runs on two
fresh pairs of namespaces (a node and a pod each), once through each adapter;
after every step the outcome (a value, or the errno of the NetlinkError) must be
equal. Fresh namespaces number their interfaces alike, so ``Link`` values
compare whole, except the MAC the kernel picks at random for a veth end tabby
does not name. The link-group calls (``retire_link``, ``delete_group``) that
only RawNetlink and FakeNetlink have run on both of those instead, and must
leave the same links behind.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tabby.dataplane.netlink import CallCounts, Link, Netlink, NetlinkError, RouteChange
from tabby.dataplane.rtlink import RawNetlink
from tabby.marks import HOST_MAC, RETIRED_GROUP, ROUTE_PROTOCOL
from tabby.testing.fakes import FakeNetlink

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

PREFIX = f"cnx-agree-{os.getpid()}"
net = ipaddress.ip_network
addr = ipaddress.ip_address
itf = ipaddress.ip_interface
Kernel = Any  # a Netlink, a RawNetlink or a FakeNetlink: the same calls
Step = tuple[str, Callable[[Kernel, str], object]]
TAB = "tab0123456789ab"


@pytest.fixture
def spaces() -> Iterator[list[tuple[str, str]]]:
    """Two (node, pod) pairs of fresh namespaces, as paths."""
    names = [f"{PREFIX}-{who}{i}" for i in range(2) for who in ("n", "p")]
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    try:
        for name in names:
            for key in ("all", "default"):
                subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                                f"net.ipv6.conf.{key}.accept_dad=0"], check=True, timeout=20)
        paths = [f"/var/run/netns/{n}" for n in names]
        yield [(paths[0], paths[1]), (paths[2], paths[3])]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def outcome(step: Callable[[Kernel, str], object], k: Kernel, pod: str) -> object:
    try:
        return comparable(step(k, pod))
    except NetlinkError as exc:
        return f"errno {exc.code}"
    except OSError as exc:  # Netlink lets a missing peer namespace through as it is
        return f"errno {exc.errno}"


def comparable(value: object) -> object:
    if isinstance(value, Link):
        mac = value.mac if value.mac == HOST_MAC or value.kind != "veth" else "random"
        return Link(value.index, value.name, mac, value.mtu, value.up, value.kind,
                    value.peer_index)
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, tuple) and value and hasattr(value[0], "change"):
        return [(o.done, o.error.code if o.error else 0) for o in value]
    return value


def change(dst: str, dev: str | None = None, gateway: str | None = None,
           delete: bool = False) -> RouteChange:
    return RouteChange(net(dst), ROUTE_PROTOCOL, "unicast", addr(gateway) if gateway else None,
                       dev, delete=delete)


def steps() -> list[Step]:
    v4, v6 = itf("198.19.0.5/32"), itf("fd7a:bb1e:1::5/128")
    return [
        ("no such link", lambda k, p: k.link(TAB)),
        ("veth", lambda k, p: k.add_veth(TAB, "eth0", p, mac=HOST_MAC, mtu=1400)),
        ("name taken", lambda k, p: k.add_veth(TAB, "eth9", p)),
        ("bad netns", lambda k, p: k.add_veth("tabx", "eth9", p + "-gone")),
        ("lookup", lambda k, p: k.link(TAB)),
        ("links", lambda k, p: k.links()),
        ("up, mtu", lambda k, p: k.set_link(TAB, up=True, mtu=1450)),
        ("mac", lambda k, p: k.set_link(TAB, mac="02:00:00:00:00:07")),
        ("mac back", lambda k, p: k.set_link(TAB, mac=HOST_MAC)),
        ("bad mtu", lambda k, p: k.set_link(TAB, mtu=10)),
        ("set no link", lambda k, p: k.set_link("nope0", up=True)),
        ("after", lambda k, p: k.link(TAB)),
        ("address v4", lambda k, p: k.add_address(TAB, v4)),
        ("address v6", lambda k, p: k.add_address(TAB, v6, nodad=True)),
        ("address again", lambda k, p: k.add_address(TAB, v4)),
        ("addresses", lambda k, p: [a for a in k.addresses(TAB) if not a.ip.is_link_local]),
        ("address of no link", lambda k, p: k.add_address("nope0", v4)),
        ("delete address", lambda k, p: k.delete_address(TAB, v4)),
        ("delete it again", lambda k, p: k.delete_address(TAB, v4)),
        ("host route", lambda k, p: k.replace_route(net("198.19.0.9/32"), protocol=ROUTE_PROTOCOL,
                                                    dev=TAB, scope_link=True)),
        ("host route v6", lambda k, p: k.replace_route(net("fd7a:bb1e:1::9/128"),
                                                       protocol=ROUTE_PROTOCOL, dev=TAB)),
        ("route to no link", lambda k, p: k.replace_route(net("198.19.0.10/32"),
                                                          protocol=ROUTE_PROTOCOL, dev="nope0")),
        ("bad gateway", lambda k, p: k.replace_route(net("198.19.1.0/26"), protocol=ROUTE_PROTOCOL,
                                                     gateway=addr("198.18.99.1"))),
        ("batch", lambda k, p: tuple(k.change_routes([
            change("198.19.0.11/32", dev=TAB), change("198.19.2.0/26", gateway="198.18.99.1"),
            change("198.19.0.9/32", delete=True), change("198.19.0.12/32", delete=True),
            change("198.19.0.13/32", dev="nope0")]))),
        ("routes", lambda k, p: [(str(r.dst), r.type, r.gateway, r.oif, r.protocol, r.scope)
                                 for v in (4, 6) for r in k.routes(v, ROUTE_PROTOCOL)]),
        ("sysctl", lambda k, p: k.sysctl_set(f"net/ipv4/conf/{TAB}/proxy_arp", "1")),
        ("sysctl read", lambda k, p: k.sysctl_get(f"net/ipv4/conf/{TAB}/proxy_arp")),
        ("sysctl no link", lambda k, p: k.sysctl_get("net/ipv4/conf/nope0/proxy_arp")),
        ("delete", lambda k, p: k.delete_link(TAB)),
        ("delete again", lambda k, p: k.delete_link(TAB)),
        ("gone", lambda k, p: [x.name for x in k.links()]),
    ]


def run_all(open_one: Callable[[str], Kernel], node: str, pod: str) -> list[object]:
    got = []
    for _name, step in steps():
        with open_one(node) as k:  # a fresh handle per step, as callers use them
            got.append(outcome(step, k, pod))
    return got


def test_raw_sockets_answer_as_pyroute2_does(spaces: list[tuple[str, str]]) -> None:
    (node_a, pod_a), (node_b, pod_b) = spaces
    counts = CallCounts()
    expected = run_all(lambda ns: Netlink.open(counts, ns), node_a, pod_a)
    got = run_all(lambda ns: RawNetlink.open(counts, ns), node_b, pod_b)
    for (name, _), want, have in zip(steps(), expected, got, strict=True):
        assert have == want, name
    assert "errno 17" in map(str, got) and "errno 22" in map(str, got)  # the errors ran


def retire_steps(veths: tuple[str, ...]) -> list[Step]:
    return [
        *[(f"veth {v}", lambda k, p, v=v: k.add_veth(v, v.replace("tab", "e"), p) and None)
          for v in veths],
        *[(f"up {v}", lambda k, p, v=v: k.set_link(v, up=True)) for v in veths],
        ("nothing retired", lambda k, p: k.delete_group(RETIRED_GROUP)),
        ("retire", lambda k, p: k.retire_link(veths[0], RETIRED_GROUP)),
        ("retire another", lambda k, p: k.retire_link(veths[1], RETIRED_GROUP)),
        ("retire none", lambda k, p: k.retire_link("nope0", RETIRED_GROUP)),
        ("retired is down", lambda k, p: k.link(veths[0]).up),
        ("reap", lambda k, p: k.delete_group(RETIRED_GROUP)),
        ("left", lambda k, p: sorted(x.name for x in k.links())),
        ("reap again", lambda k, p: k.delete_group(RETIRED_GROUP)),
    ]


def test_retired_links_go_in_one_request_on_the_kernel_and_the_fake(
        spaces: list[tuple[str, str]]) -> None:
    (node, pod), _ = spaces
    veths = ("tab000000000001", "tab000000000002", "tab000000000003")
    fake = FakeNetlink()
    fake_pod = "/var/run/netns/pod"
    fake.add_netns(fake_pod)
    real, faked = [], []
    for _name, step in retire_steps(veths):
        with RawNetlink.open(CallCounts(), node) as k:
            real.append(outcome(step, k, pod))
        faked.append(outcome(step, fake.open(None), fake_pod))
    assert real == faked
    assert real[-2] == ["lo", veths[2]] and real[-1] is False
    pod_links = subprocess.run(["ip", "-n", os.path.basename(pod), "-o", "link"],
                               capture_output=True, text=True, check=True).stdout
    assert "e000000000001" not in pod_links and "e000000000003" in pod_links  # peers went too
    assert errno.ENODEV == 19 and "errno 19" not in map(str, real)  # absent is False, not raised
