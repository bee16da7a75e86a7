"""10,000 routes through RouteReconciler into a real kernel, in batches, with a bad one.

Every route must be in the kernel afterwards (checked with ``ip route``, not
with tabby's own reader), the bad one reported by destination with the
kernel's reason, and the raw batch must report a refusal in the middle of a
send against the request that caused it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tabby.calc.routes import Route
from tabby.dataplane.netlink import CallCounts, Netlink, RouteChange
from tabby.dataplane.routes import RouteReconciler
from tabby.marks import ROUTE_PROTOCOL

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 (network namespaces)")

net = ipaddress.ip_network
addr = ipaddress.ip_address
GATEWAY = addr("198.18.0.12")
COUNT = 10_000


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace with veth ``up0`` on 198.18.0.11/24 and fd7a:bb1e::11/64."""
    name = f"rtx-bulk-{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    ip("netns", "add", name)
    try:
        ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
           "net.ipv6.conf.default.accept_dad=0")
        ip("-n", name, "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        for dev in ("lo", "up0", "up1"):
            ip("-n", name, "link", "set", dev, "up")
        ip("-n", name, "addr", "add", "198.18.0.11/24", "dev", "up0")
        ip("-n", name, "addr", "add", "fd7a:bb1e::11/64", "dev", "up0", "nodad")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60,
                       check=False)


def kernel_routes(name: str) -> set[str]:
    """``DST via GW`` of every proto-77 IPv4 route, as iproute2 reads them."""
    out = ip("-4", "-n", name, "route", "show", "proto", str(ROUTE_PROTOCOL))
    return {" ".join(line.split()[:3]) for line in out.splitlines()}


def test_ten_thousand_routes_all_land_and_the_bad_one_is_reported(ns: str) -> None:
    blocks = ipaddress.IPv4Network("198.19.0.0/16").subnets(new_prefix=30)
    good = {Route(next(blocks), "unicast", GATEWAY) for _ in range(COUNT - 1)}
    good |= {Route(net("fd7a:bb1e:7::/64"), "unicast", addr("fd7a:bb1e::12"))}
    bad = Route(net("198.18.200.0/24"), "unicast", addr("198.18.99.1"))  # nothing reaches it
    rec = RouteReconciler(CallCounts(), netns=f"/var/run/netns/{ns}")
    result = rec.apply(frozenset(good | {bad}))
    assert result.failed == [bad] and len(result.replaced) == len(good)
    assert len(result.errors) == 1
    assert "198.18.200.0/24 via 198.18.99.1" in result.errors[0]
    assert "Network is unreachable" in result.errors[0]
    v4 = {f"{r.dst} via {r.gateway}" for r in good if r.dst.version == 4}
    assert kernel_routes(ns) == v4 and len(v4) == COUNT - 1
    assert "fd7a:bb1e:7::/64 via fd7a:bb1e::12" in ip("-6", "-n", ns, "route", "show",
                                                      "proto", str(ROUTE_PROTOCOL))
    # Once the gateway resolves, the next pass (a full one, after the error) adds it and
    # rewrites nothing else.
    ip("-n", ns, "addr", "add", "198.18.99.2/24", "dev", "up0")
    again = rec.apply(frozenset(good | {bad}))
    assert again.replaced == [bad] and not again.errors and again.unchanged == len(good)
    assert len(kernel_routes(ns)) == COUNT


def test_a_refusal_mid_batch_maps_to_its_own_request(ns: str) -> None:
    """3,000 changes take several sends; refusals in the middle of one and as the very
    last request (the one that carries the ack) each land on their own change."""
    blocks = ipaddress.IPv4Network("198.19.0.0/16").subnets(new_prefix=28)
    changes = [RouteChange(next(blocks), ROUTE_PROTOCOL, gateway=GATEWAY) for _ in range(3000)]
    changes[300] = RouteChange(net("198.20.44.0/24"), ROUTE_PROTOCOL, gateway=GATEWAY,
                               dev="nosuch0")
    changes[1500] = RouteChange(net("198.20.0.0/24"), ROUTE_PROTOCOL, gateway=addr("10.9.9.9"))
    changes[-1] = RouteChange(net("198.20.1.0/24"), ROUTE_PROTOCOL, gateway=addr("10.9.9.8"))
    changes.append(RouteChange(net("198.21.0.0/24"), ROUTE_PROTOCOL, "blackhole", delete=True))
    changes.append(RouteChange(net("198.20.2.0/24"), ROUTE_PROTOCOL, gateway=addr("10.9.9.7")))
    with Netlink.open(CallCounts(), f"/var/run/netns/{ns}") as nl:
        outcomes = nl.change_routes(changes)
    assert [o.change for o in outcomes] == changes
    failed = {i: o.error for i, o in enumerate(outcomes) if o.error is not None}
    assert set(failed) == {300, 1500, 2999, 3001}
    assert failed[300] is not None and failed[300].code == errno.ENODEV
    assert all(e is not None and e.code == errno.ENETUNREACH
               for i, e in failed.items() if i != 300)
    assert "198.20.0.0/24 via 10.9.9.9" in str(failed[1500])
    assert "198.20.2.0/24 via 10.9.9.7" in str(failed[3001])
    assert not outcomes[3000].done and outcomes[3000].error is None  # deleting what is not there
    assert len(kernel_routes(ns)) == 2997
