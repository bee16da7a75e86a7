"""VxlanReconciler, onlink routes and the IPIP probe against a real kernel, in a scratch
namespace."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tabby.calc.routes import Route
from tabby.calc.vxlan import Fdb, Neighbour, VxlanDevice
from tabby.dataplane.netlink import CallCounts, link_kind_supported
from tabby.dataplane.routes import RouteReconciler
from tabby.dataplane.vxlan import VxlanReconciler

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

addr = ipaddress.ip_address
MAC1, MAC2, MAC3 = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
V4 = VxlanDevice(name="vxlan.tabby", version=4, vni=4096, port=4789, local=addr("198.18.0.11"),
                 mac=MAC1, mtu=1450, address=ipaddress.ip_interface("198.19.0.0/32"),
                 fdb=frozenset({Fdb(MAC2, addr("198.18.0.12"))}),
                 neighbours=frozenset({Neighbour(addr("198.19.0.64"), MAC2)}))
V6 = VxlanDevice(name="vxlan-v6.tabby", version=6, vni=6096, port=4789,
                 local=addr("fd7a:bb1e::11"), mac=MAC3, mtu=1430,
                 address=ipaddress.ip_interface("fd7a:bb1e:1::/128"),
                 fdb=frozenset({Fdb(MAC2, addr("fd7a:bb1e::12"))}),
                 neighbours=frozenset({Neighbour(addr("fd7a:bb1e:1::40"), MAC2)}))


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"txd-{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
           "net.ipv6.conf.default.accept_dad=0")
        ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        for dev in ("lo", "eth0", "eth1"):
            ip("-n", name, "link", "set", dev, "up")
        ip("-n", name, "addr", "add", "198.18.0.11/24", "dev", "eth0")
        ip("-n", name, "addr", "add", "fd7a:bb1e::11/64", "dev", "eth0", "nodad")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def link(ns: str, dev: str) -> dict[str, Any] | None:
    links = json.loads(ip("-n", ns, "-j", "-d", "link", "show"))
    return next((x for x in links if x["ifname"] == dev), None)


def fdb(ns: str, dev: str) -> set[tuple[str, str]]:
    entries = json.loads(subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev],
                                        capture_output=True, text=True, check=True).stdout)
    return {(e["mac"], e["dst"]) for e in entries if "dst" in e}


def neighbours(ns: str, dev: str, family: str) -> set[tuple[str, str, str]]:
    entries = json.loads(ip(family, "-n", ns, "-j", "neigh", "show", "dev", dev))
    return {(e["dst"], e.get("lladdr", ""), ",".join(e.get("state", [])))
            for e in entries if not ipaddress.ip_address(e["dst"]).is_multicast}


def test_devices_are_built_then_corrected_then_removed(ns: str) -> None:
    rec = VxlanReconciler(CallCounts(), f"/var/run/netns/{ns}")
    first = rec.apply((V4, V6))
    assert first.errors == [] and first.changes
    v4 = link(ns, "vxlan.tabby")
    assert v4 is not None and v4["address"] == MAC1 and v4["mtu"] == 1450
    info = v4["linkinfo"]["info_data"]
    assert (info["id"], info["local"], info["port"]) == (4096, "198.18.0.11", 4789)
    assert fdb(ns, "vxlan.tabby") == {(MAC2, "198.18.0.12")}
    assert fdb(ns, "vxlan-v6.tabby") == {(MAC2, "fd7a:bb1e::12")}
    assert neighbours(ns, "vxlan.tabby", "-4") == {("198.19.0.64", MAC2, "PERMANENT")}
    assert neighbours(ns, "vxlan-v6.tabby", "-6") == {("fd7a:bb1e:1::40", MAC2, "PERMANENT")}
    assert "198.19.0.0/32" in ip("-n", ns, "-4", "addr", "show", "dev", "vxlan.tabby")
    assert rec.apply((V4, V6)).changes == []  # nothing to do
    assert rec.apply((V4, V6), full=True).changes == []  # and nothing after reading back

    # a peer moved, one left, one came; stray entries an operator added go
    ip("-n", ns, "neigh", "add", "198.19.9.9", "lladdr", MAC3, "dev", "vxlan.tabby")
    moved = dataclasses.replace(V4, fdb=frozenset({Fdb(MAC2, addr("198.18.0.22")),
                                                   Fdb(MAC3, addr("198.18.0.13"))}),
                                neighbours=frozenset({Neighbour(addr("198.19.0.64"), MAC3)}))
    assert rec.apply((moved, V6), full=True).errors == []
    assert fdb(ns, "vxlan.tabby") == {(MAC2, "198.18.0.22"), (MAC3, "198.18.0.13")}
    assert neighbours(ns, "vxlan.tabby", "-4") == {("198.19.0.64", MAC3, "PERMANENT")}

    # a setting the kernel cannot change in place: the device is made again
    rekeyed = dataclasses.replace(moved, vni=4097, mtu=1400)
    result = rec.apply((rekeyed, V6))
    assert any("settings differ" in c for c in result.changes)
    v4 = link(ns, "vxlan.tabby")
    assert v4 is not None and v4["linkinfo"]["info_data"]["id"] == 4097 and v4["mtu"] == 1400
    assert fdb(ns, "vxlan.tabby") == {(MAC2, "198.18.0.22"), (MAC3, "198.18.0.13")}

    assert rec.apply(()).changes == ["deleted vxlan.tabby", "deleted vxlan-v6.tabby"]
    assert link(ns, "vxlan.tabby") is None and link(ns, "eth0") is not None


def test_onlink_routes_through_the_device_are_adopted_not_rewritten(ns: str) -> None:
    VxlanReconciler(CallCounts(), f"/var/run/netns/{ns}").apply((V4, V6))
    routes = RouteReconciler(CallCounts(), netns=f"/var/run/netns/{ns}")
    desired = frozenset({
        Route(ipaddress.ip_network("198.19.0.64/26"), "unicast", addr("198.19.0.64"),
              "vxlan.tabby", onlink=True),
        Route(ipaddress.ip_network("fd7a:bb1e:1::40/122"), "unicast", addr("fd7a:bb1e:1::40"),
              "vxlan-v6.tabby", onlink=True)})
    first = routes.apply(desired, full=True)
    assert first.errors == [] and len(first.replaced) == 2
    again = routes.apply(desired, full=True)
    assert again.replaced == [] and again.deleted == [] and again.unchanged == 2
    assert "onlink" in ip("-n", ns, "-6", "route", "show", "fd7a:bb1e:1::40/122")


def test_this_kernel_has_vxlan_but_no_ipip() -> None:
    own = os.readlink("/proc/thread-self/ns/net")
    assert link_kind_supported("vxlan") is True
    assert link_kind_supported("ipip") is False  # the refusal tests rely on this
    assert os.readlink("/proc/thread-self/ns/net") == own
