"""RouteReconciler and SysctlReconciler against a real kernel, in a scratch namespace."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tabby.calc.node import node_sysctls
from tabby.calc.routes import Route
from tabby.dataplane.netlink import CallCounts, Netlink
from tabby.dataplane.routes import RouteReconciler
from tabby.dataplane.sysctls import SysctlReconciler
from tabby.marks import ROUTE_PROTOCOL

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 (network namespaces)")

net = ipaddress.ip_network
addr = ipaddress.ip_address


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace with veth ``up0`` on 198.18.0.11/24 and fd7a:bb1e::11/64 (peer ``up1``)."""
    name = f"ta-rt-{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
           "net.ipv6.conf.default.accept_dad=0")
        ip("-n", name, "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        ip("-n", name, "link", "add", "tab000000000001", "type", "veth", "peer", "name", "pp1")
        for dev in ("lo", "up0", "up1", "tab000000000001", "pp1"):
            ip("-n", name, "link", "set", dev, "up")
        ip("-n", name, "addr", "add", "198.18.0.11/24", "dev", "up0")
        ip("-n", name, "addr", "add", "fd7a:bb1e::11/64", "dev", "up0", "nodad")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def path(name: str) -> str:
    return f"/var/run/netns/{name}"


def routes_of(name: str, protocol: int | None = ROUTE_PROTOCOL) -> set[str]:
    out = set()
    for family in ("-4", "-6"):
        cmd = [family, "-n", name, "route", "show"]
        if protocol is not None:
            cmd += ["proto", str(protocol)]
        for line in ip(*cmd).splitlines():
            out.add(" ".join(w for w in line.split() if w not in ("pref", "medium")))
    return out


DESIRED = frozenset({
    Route(net("198.19.0.0/26"), "blackhole"),
    Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12")),
    Route(net("198.19.0.1/32"), "unicast", None, "tab000000000001"),
    Route(net("fd7a:bb1e:1::/122"), "blackhole"),
    Route(net("fd7a:bb1e:1::40/122"), "unicast", addr("fd7a:bb1e::12")),
    Route(net("fd7a:bb1e:1::1/128"), "unicast", None, "tab000000000001"),
})


def test_apply_installs_then_is_a_no_op(ns: str) -> None:
    counts = CallCounts()
    rec = RouteReconciler(counts, netns=path(ns))
    first = rec.apply(DESIRED)
    assert len(first.replaced) == len(DESIRED) and not first.errors and rec.synced
    kernel = routes_of(ns)
    assert "blackhole 198.19.0.0/26" in kernel
    assert "198.19.0.64/26 via 198.18.0.12 dev up0" in kernel
    assert "198.19.0.1 dev tab000000000001 scope link" in kernel
    assert "fd7a:bb1e:1::40/122 via fd7a:bb1e::12 dev up0 metric 1024" in kernel
    dumps = counts.snapshot()[0]["route_dump"]
    second = rec.apply(DESIRED)
    assert second.changes == 0 and second.unchanged == len(DESIRED)
    assert counts.snapshot()[0]["route_dump"] == dumps  # skipped: nothing changed
    third = rec.apply(DESIRED, full=True)
    assert third.changes == 0 and third.unchanged == len(DESIRED)
    assert counts.snapshot()[0]["route_dump"] > dumps
    assert counts.snapshot()[0].get("route_replace") == len(DESIRED)


def test_changed_route_is_replaced_in_place_and_unwanted_deleted(ns: str) -> None:
    rec = RouteReconciler(CallCounts(), netns=path(ns))
    rec.apply(DESIRED)
    moved = Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.13"))
    gone = Route(net("fd7a:bb1e:1::/122"), "blackhole")
    want = (DESIRED - {Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12")), gone}
            ) | {moved}
    result = rec.apply(want)
    assert result.replaced == [moved]
    assert [str(kr.dst) for kr in result.deleted] == ["fd7a:bb1e:1::/122"]
    kernel = routes_of(ns)
    assert "198.19.0.64/26 via 198.18.0.13 dev up0" in kernel
    assert not any("198.18.0.12" in line for line in kernel)


def test_foreign_routes_are_never_touched(ns: str) -> None:
    ip("-n", ns, "route", "add", "198.19.9.0/24", "via", "198.18.0.1", "proto", "static")
    ip("-n", ns, "route", "add", "blackhole", "198.19.0.64/26", "proto", "12")  # BIRD's
    ip("-6", "-n", ns, "route", "add", "fd7a:bb1e:9::/64", "via", "fd7a:bb1e::1",
       "proto", "boot")
    before = routes_of(ns, None) - routes_of(ns)
    rec = RouteReconciler(CallCounts(), netns=path(ns))
    result = rec.apply(DESIRED)
    assert [str(r.dst) for r in result.conflicts] == ["198.19.0.64/26"]
    rec.apply(frozenset())  # sweep everything of ours
    assert routes_of(ns) == set()
    after = routes_of(ns, None)
    assert before <= after
    assert "blackhole 198.19.0.64/26 proto bird" in after


def test_leftovers_swept_only_after_a_clean_first_pass(ns: str) -> None:
    ip("-n", ns, "route", "add", "blackhole", "198.19.7.0/26", "proto", str(ROUTE_PROTOCOL))
    # The first pass fails one route (gateway off-link): nothing is swept yet.
    bad = Route(net("198.19.0.128/26"), "unicast", addr("198.18.99.1"))
    rec = RouteReconciler(CallCounts(), netns=path(ns))
    first = rec.apply(DESIRED | {bad})
    assert first.errors and not first.swept and not rec.synced
    assert "blackhole 198.19.7.0/26" in routes_of(ns)
    assert "198.19.0.1 dev tab000000000001 scope link" in routes_of(ns)
    second = rec.apply(DESIRED)
    assert second.swept and [str(kr.dst) for kr in second.deleted] == ["198.19.7.0/26"]
    assert "blackhole 198.19.7.0/26" not in routes_of(ns)


def test_missing_device_is_unresolved_not_an_error(ns: str) -> None:
    rec = RouteReconciler(CallCounts(), netns=path(ns))
    ghost = Route(net("198.19.0.2/32"), "unicast", None, "tab00000000dead")
    result = rec.apply(DESIRED | {ghost})
    assert result.unresolved == [ghost] and not result.errors and rec.synced


def test_route_changed_behind_our_back_is_restored(ns: str) -> None:
    rec = RouteReconciler(CallCounts(), netns=path(ns))
    rec.apply(DESIRED)
    ip("-n", ns, "route", "del", "198.19.0.1/32")
    ip("-n", ns, "route", "replace", "blackhole", "198.19.0.0/26", "proto",
       str(ROUTE_PROTOCOL), "metric", "5")  # a duplicate of ours at another metric
    assert rec.apply(DESIRED).changes == 0  # same desired state: the kernel is not read
    result = rec.apply(DESIRED, full=True)
    assert [str(r.dst) for r in result.replaced] == ["198.19.0.1/32"]
    assert [kr.priority for kr in result.deleted] == [5]
    assert len([r for r in routes_of(ns) if "198.19.0.0/26" in r]) == 1


def test_node_sysctls(ns: str) -> None:
    rec = SysctlReconciler(CallCounts(), netns=path(ns))
    first = rec.apply(node_sysctls())
    assert sorted(first.written) == ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"]
    assert rec.apply(node_sysctls()).written == []
    with Netlink.open(CallCounts(), path(ns)) as nl:
        assert nl.sysctl_get("net/ipv4/ip_forward") == "1"
