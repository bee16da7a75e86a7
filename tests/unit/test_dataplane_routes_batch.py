"""Routes in batches, without root: RouteReconciler over FakeNetlink, and rtnl's codec.

A pass hands the kernel all its writes in one ``change_routes`` call (and its
deletions in another); the kernel answers each request, so one bad route fails
alone and is reported while the rest go in; the sweep's second read is skipped
when the first read held nothing that could go. The codec's bytes are checked
against the layout the kernel reads. The same batch runs against a real kernel
with 10,000 routes in tests/netns/test_routes_bulk.py.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence

from tabby.calc.routes import Route
from tabby.dataplane.netlink import RT_SCOPE_LINK, RouteChange, RouteOutcome
from tabby.dataplane.routes import RouteReconciler
from tabby.dataplane.rtnl import RTM_DELROUTE, RTM_NEWROUTE, decode_route, encode_route
from tabby.marks import ROUTE_PROTOCOL
from tabby.testing.fakes import FakeNetlink

net = ipaddress.ip_network
addr = ipaddress.ip_address
TAB = "tab000000000001"


class Recording(FakeNetlink):
    """A FakeNetlink that keeps each batch it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[RouteChange]] = []

    def change_routes(self, changes: Sequence[RouteChange]) -> list[RouteOutcome]:
        self.batches.append(list(changes))
        return super().change_routes(changes)


def node() -> Recording:
    kernel = Recording()
    kernel.add_link("up0", "veth", peer="up1", up=True)
    kernel.add_link(TAB, "veth", peer="pp1", up=True)
    kernel.set_link("up1", up=True)
    kernel.set_link("pp1", up=True)
    kernel.add_address("up0", ipaddress.ip_interface("198.18.0.11/24"))
    kernel.add_address("up0", ipaddress.ip_interface("fd7a:bb1e::11/64"), nodad=True)
    return kernel


def remote(count: int) -> frozenset[Route]:
    blocks = ipaddress.IPv4Network("198.19.0.0/16").subnets(new_prefix=29)
    return frozenset(Route(next(blocks), "unicast", addr("198.18.0.12")) for _ in range(count))


def dumps(kernel: FakeNetlink) -> int:
    return kernel.counts.snapshot()[0].get("route_dump", 0)


def ours(kernel: FakeNetlink) -> set[str]:
    return {str(r.dst) for v in (4, 6) for r in kernel.routes(v, ROUTE_PROTOCOL)}


def test_a_pass_writes_every_route_in_one_batch_and_reads_once() -> None:
    kernel = node()
    want = remote(500) | {Route(net("198.19.255.1/32"), "unicast", None, TAB)}
    result = RouteReconciler(kernel.counts, netlink=kernel.open).apply(want)
    assert len(result.replaced) == len(want) and not result.errors and result.swept
    assert [len(b) for b in kernel.batches] == [len(want)]
    # nothing of ours was there before the writes, so the sweep needed no second read
    assert dumps(kernel) == 2
    assert ours(kernel) == {str(r.dst) for r in want}
    assert kernel.counts.snapshot()[0]["route_replace"] == len(want)


def test_one_refused_route_fails_alone_and_is_named() -> None:
    kernel = node()
    bad = Route(net("198.19.254.0/26"), "unicast", addr("198.18.99.1"))  # no route to it
    want = remote(100) | {bad}
    rec = RouteReconciler(kernel.counts, netlink=kernel.open)
    result = rec.apply(want)
    assert result.failed == [bad] and len(result.replaced) == 100
    assert len(result.errors) == 1 and "198.19.254.0/26 via 198.18.99.1" in result.errors[0]
    assert "Network is unreachable" in result.errors[0]
    assert ours(kernel) == {str(r.dst) for r in want - {bad}}
    assert not rec.synced  # an error: no sweep yet, and the next pass is a full one
    kernel.add_address("up0", ipaddress.ip_interface("198.18.99.2/24"))
    again = rec.apply(want)
    assert again.replaced == [bad] and not again.errors and rec.synced


def test_leftovers_go_in_one_batch_and_a_route_already_gone_is_no_error() -> None:
    kernel = node()
    first = remote(50)
    RouteReconciler(kernel.counts, netlink=kernel.open).apply(first)
    keep = frozenset(sorted(first, key=str)[:10])
    kernel.batches.clear()
    result = RouteReconciler(kernel.counts, netlink=kernel.open).apply(keep)  # a new agent
    assert [len(b) for b in kernel.batches] == [40] and all(c.delete for c in kernel.batches[0])
    assert len(result.deleted) == 40 and not result.errors
    assert ours(kernel) == {str(r.dst) for r in keep}
    gone = kernel.batches[0][0]
    (outcome,) = kernel.change_routes([gone])
    assert outcome == RouteOutcome(gone, False, None)  # already gone: not done, no error


def test_the_sweep_reads_again_only_when_something_of_ours_may_go() -> None:
    kernel = node()
    RouteReconciler(kernel.counts, netlink=kernel.open).apply(remote(20))
    before = dumps(kernel)
    RouteReconciler(kernel.counts, netlink=kernel.open).apply(remote(20))  # all right already
    assert dumps(kernel) - before == 2
    before = dumps(kernel)
    RouteReconciler(kernel.counts, netlink=kernel.open).apply(remote(19))  # one leftover
    assert dumps(kernel) - before == 4


def test_fake_batch_outcomes_follow_the_changes_in_order() -> None:
    kernel = node()
    changes = [
        RouteChange(net("198.19.1.0/26"), ROUTE_PROTOCOL, "blackhole"),
        RouteChange(net("198.19.1.64/26"), ROUTE_PROTOCOL, dev="nosuch0"),
        RouteChange(net("198.19.1.128/32"), ROUTE_PROTOCOL, dev=TAB, scope=RT_SCOPE_LINK),
        RouteChange(net("198.19.9.0/26"), ROUTE_PROTOCOL, "blackhole", delete=True),
    ]
    outcomes = kernel.change_routes(changes)
    assert [o.change for o in outcomes] == changes
    assert [o.done for o in outcomes] == [True, False, True, False]
    error = outcomes[1].error
    assert error is not None and error.code == errno.ENODEV and "nosuch0" in str(error)
    assert outcomes[3].error is None
    assert ours(kernel) == {"198.19.1.0/26", "198.19.1.128/32"}
    (scoped,) = [r for r in kernel.routes(4, ROUTE_PROTOCOL) if r.dst == net("198.19.1.128/32")]
    assert scoped.scope == RT_SCOPE_LINK


def test_encoded_requests_have_the_kernels_layout() -> None:
    kind, flags, body = encode_route(
        delete=False, family=socket.AF_INET, dst=bytes([198, 19, 0, 8]), dst_len=29,
        table=254, protocol=77, scope=0, type=1, gateway=bytes([198, 18, 0, 12]), oif=3)
    assert kind == RTM_NEWROUTE and flags == 0x1 | 0x100 | 0x400  # request, replace, create
    assert body == (struct.pack("=BBBBBBBBI", socket.AF_INET, 29, 0, 0, 254, 77, 0, 1, 0)
                    + struct.pack("=HH", 8, 1) + bytes([198, 19, 0, 8])
                    + struct.pack("=HH", 8, 5) + bytes([198, 18, 0, 12])
                    + struct.pack("=HHI", 8, 4, 3))
    kind, flags, body = encode_route(
        delete=True, family=socket.AF_INET6, dst=net("fd7a:bb1e:1::/122").network_address.packed,
        dst_len=122, table=254, protocol=77, scope=0, type=6, priority=1024)
    assert kind == RTM_DELROUTE and flags == 0x1
    raw = decode_route(body)  # a dump's route has the same body
    assert (raw.family, raw.dst_len, raw.protocol, raw.type, raw.priority, raw.gateway) == (
        socket.AF_INET6, 122, 77, 6, 1024, None)
    assert raw.dst == net("fd7a:bb1e:1::/122").network_address.packed


def test_a_default_route_has_no_destination_attribute() -> None:
    _, _, body = encode_route(delete=False, family=socket.AF_INET, dst=bytes(4), dst_len=0,
                              table=254, protocol=77, scope=0, type=1,
                              gateway=bytes([169, 254, 1, 1]))
    assert len(body) == 12 + 8
    raw = decode_route(body)
    assert raw.dst == b"" and raw.gateway == bytes([169, 254, 1, 1]) and raw.oif is None
