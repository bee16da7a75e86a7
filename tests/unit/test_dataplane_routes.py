"""The route reconciler's rules, without root: RouteReconciler against FakeNetlink.

Adopt what is ours and right, replace what is ours and wrong, never touch
another protocol's route (report the conflict), sweep ours nobody wants only
after a clean pass, ignore other tables, count a missing device as unresolved,
skip a pass whose desired state did not change unless it is a full one. The
same rules run against a real kernel in tests/netns/test_dataplane_routes.py;
tests/netns/test_fakes_agree.py keeps the fake honest. Also SysctlReconciler.
"""

from __future__ import annotations

import errno
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from tabby.calc.node import node_sysctls
from tabby.calc.routes import Route
from tabby.dataplane.netlink import KernelRoute
from tabby.dataplane.routes import RouteReconciler
from tabby.dataplane.sysctls import SysctlReconciler
from tabby.marks import ROUTE_PROTOCOL
from tabby.testing.fakes import FakeNetlink

net = ipaddress.ip_network
addr = ipaddress.ip_address
TAB = "tab000000000001"
BIRD = 12

DESIRED = frozenset({
    Route(net("198.19.0.0/26"), "blackhole"),
    Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12")),
    Route(net("198.19.0.1/32"), "unicast", None, TAB),
    Route(net("fd7a:bb1e:1::/122"), "blackhole"),
    Route(net("fd7a:bb1e:1::40/122"), "unicast", addr("fd7a:bb1e::12")),
    Route(net("fd7a:bb1e:1::1/128"), "unicast", None, TAB),
})


def node() -> FakeNetlink:
    """A node: uplink up0 on 198.18.0.11/24 and fd7a:bb1e::11/64, one pod veth."""
    kernel = FakeNetlink()
    kernel.add_link("up0", "veth", peer="up1")
    kernel.add_link(TAB, "veth", peer="pp1")
    for dev in ("lo", "up1", "up0", "pp1", TAB):
        kernel.set_link(dev, up=True)
    kernel.add_address("up0", ipaddress.ip_interface("198.18.0.11/24"))
    kernel.add_address("up0", ipaddress.ip_interface("fd7a:bb1e::11/64"), nodad=True)
    return kernel


def reconciler(kernel: FakeNetlink) -> RouteReconciler:
    return RouteReconciler(kernel.counts, netlink=kernel.open)


def shown(kernel: FakeNetlink, protocol: int | None = ROUTE_PROTOCOL) -> set[str]:
    """The main table as ``Route`` text (devices by name), with metrics where not default."""
    names = {link.index: link.name for link in kernel.links()}
    out = set()
    for version in (4, 6):
        for kr in kernel.routes(version, protocol):
            dev = names.get(kr.oif) if kr.oif is not None and kr.gateway is None else None
            text = str(Route(kr.dst, "blackhole" if kr.type == "blackhole" else "unicast",
                             kr.gateway, dev or (names.get(kr.oif) if kr.onlink else None),
                             kr.onlink))
            metric = f" metric {kr.priority}" if kr.priority not in (None, 1024) else ""
            proto = f" proto {kr.protocol}" if protocol is None else ""
            out.add(text + metric + proto)
    return out


def calls(kernel: FakeNetlink, op: str) -> int:
    return kernel.counts.snapshot()[0].get(op, 0)


def test_first_pass_installs_then_passes_are_skipped_until_a_full_one() -> None:
    kernel = node()
    rec = reconciler(kernel)
    first = rec.apply(DESIRED)
    assert sorted(map(str, first.replaced)) == sorted(map(str, DESIRED))
    assert not first.errors and first.swept and rec.synced
    assert shown(kernel) == set(map(str, DESIRED))
    dumps = calls(kernel, "route_dump")
    second = rec.apply(DESIRED)
    assert second.changes == 0 and second.unchanged == len(DESIRED) and not second.swept
    assert calls(kernel, "route_dump") == dumps  # skipped: the kernel is not even read
    third = rec.apply(DESIRED, full=True)
    assert third.changes == 0 and third.unchanged == len(DESIRED) and third.swept
    assert calls(kernel, "route_dump") > dumps
    assert calls(kernel, "route_replace") == len(DESIRED)


def test_a_restarted_agent_adopts_its_routes_in_place_and_sweeps_its_leftovers() -> None:
    kernel = node()
    reconciler(kernel).apply(DESIRED | {Route(net("198.19.7.0/26"), "blackhole")})
    writes = calls(kernel, "route_replace")
    result = reconciler(kernel).apply(DESIRED)  # a new agent, the same kernel
    assert result.replaced == [] and result.unchanged == len(DESIRED)
    assert [str(kr.dst) for kr in result.deleted] == ["198.19.7.0/26"]
    assert calls(kernel, "route_replace") == writes  # nothing rewritten, nothing flushed
    assert shown(kernel) == set(map(str, DESIRED))


def test_a_route_of_ours_that_differs_is_replaced_in_place() -> None:
    kernel = node()
    rec = reconciler(kernel)
    rec.apply(DESIRED)
    moved = Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.13"))
    blackholed = Route(net("198.19.0.1/32"), "blackhole")  # was a device route
    want = frozenset({*(r for r in DESIRED if r.dst not in (moved.dst, blackholed.dst)),
                      moved, blackholed})
    result = rec.apply(want)
    assert sorted(map(str, result.replaced)) == sorted(map(str, [moved, blackholed]))
    assert result.deleted == []  # replaced, never deleted and re-added
    assert shown(kernel) == set(map(str, want))


def test_a_foreign_route_is_left_alone_and_reported_as_a_conflict() -> None:
    kernel = node()
    kernel.replace_route(net("198.19.0.64/26"), protocol=BIRD, type="blackhole")
    kernel.replace_route(net("fd7a:bb1e:1::/122"), protocol=4, gateway=addr("fd7a:bb1e::1"))
    foreign = shown(kernel, None) - shown(kernel)
    rec = reconciler(kernel)
    result = rec.apply(DESIRED)
    assert sorted(str(r.dst) for r in result.conflicts) == ["198.19.0.64/26",
                                                            "fd7a:bb1e:1::/122"]
    assert not result.errors and rec.synced
    rec.apply(frozenset())  # sweep all of ours
    assert shown(kernel) == set()
    assert shown(kernel, None) - shown(kernel) == foreign
    assert "blackhole 198.19.0.64/26 proto 12" in foreign


def test_a_conflict_is_retried_once_the_foreign_route_goes() -> None:
    kernel = node()
    kernel.replace_route(net("198.19.0.0/26"), protocol=BIRD, type="blackhole")
    rec = reconciler(kernel)
    assert len(rec.apply(DESIRED).conflicts) == 1
    kernel.delete_route(kernel.routes(4, BIRD)[0])
    again = rec.apply(DESIRED)  # same desired state, but the last pass was not clean
    assert [str(r) for r in again.replaced] == ["blackhole 198.19.0.0/26"]
    assert again.conflicts == []


def test_a_connected_route_of_the_kernel_is_foreign_too() -> None:
    kernel = node()
    want = Route(net("198.18.0.0/24"), "blackhole")
    result = reconciler(kernel).apply(frozenset({want}))
    assert result.conflicts == [want]
    assert "198.18.0.0/24 dev up0 proto 2" in shown(kernel, None)


def test_ours_no_longer_wanted_are_swept() -> None:
    kernel = node()
    rec = reconciler(kernel)
    rec.apply(DESIRED)
    keep = frozenset(r for r in DESIRED if r.dst.version == 4)
    result = rec.apply(keep)
    assert sorted(str(kr.dst) for kr in result.deleted) == sorted(
        str(r.dst) for r in DESIRED - keep)
    assert shown(kernel) == set(map(str, keep))


def test_leftovers_wait_for_the_first_clean_pass() -> None:
    kernel = node()
    kernel.replace_route(net("198.19.7.0/26"), protocol=ROUTE_PROTOCOL, type="blackhole")
    off_link = Route(net("198.19.0.128/26"), "unicast", addr("198.18.99.1"))
    rec = reconciler(kernel)
    first = rec.apply(DESIRED | {off_link})
    assert first.failed == [off_link] and not first.swept and not rec.synced
    assert first.errors == ["route_replace unicast 198.19.0.128/26 via 198.18.99.1:"
                            " Network is unreachable"]
    assert "blackhole 198.19.7.0/26" in shown(kernel)  # not swept yet
    second = rec.apply(DESIRED)
    assert second.swept and [str(kr.dst) for kr in second.deleted] == ["198.19.7.0/26"]


def test_our_old_route_stays_while_its_replacement_is_refused() -> None:
    kernel = node()
    rec = reconciler(kernel)
    rec.apply(DESIRED)
    unreachable = Route(net("fd7a:bb1e:1::40/122"), "unicast", addr("fd7a:bb1e:99::1"))
    result = rec.apply(frozenset(r for r in DESIRED if r.dst != unreachable.dst)
                       | {unreachable})
    assert result.failed == [unreachable] and result.deleted == []
    assert "No route to host" in result.errors[0]
    assert "fd7a:bb1e:1::40/122 via fd7a:bb1e::12" in shown(kernel)


def test_routes_in_other_tables_are_left_alone() -> None:
    kernel = node()
    other = KernelRoute(net("198.19.0.0/26"), "blackhole", None, None, ROUTE_PROTOCOL, 0, None,
                        False)
    kernel.plant_route(other, table=100)  # ours by protocol, but not the main table
    rec = reconciler(kernel)
    assert rec.apply(DESIRED).conflicts == []  # another table holds no main-table dst
    rec.apply(frozenset())
    assert shown(kernel) == set()
    assert kernel.table(100, 4) == [other]


def test_a_missing_device_is_unresolved_until_it_appears() -> None:
    kernel = node()
    ghost = Route(net("198.19.0.2/32"), "unicast", None, "tab0000000000ff")
    rec = reconciler(kernel)
    first = rec.apply(DESIRED | {ghost})
    assert first.unresolved == [ghost] and not first.errors and rec.synced
    kernel.add_link("tab0000000000ff", "veth", peer="pp2", up=True)
    kernel.set_link("pp2", up=True)
    second = rec.apply(DESIRED | {ghost})  # not skipped: the last pass left one out
    assert second.replaced == [ghost] and second.unresolved == []
    assert str(ghost) in shown(kernel)


def test_a_full_pass_repairs_what_changed_behind_our_back() -> None:
    kernel = node()
    rec = reconciler(kernel)
    rec.apply(DESIRED)
    kernel.delete_route(next(r for r in kernel.routes(4) if r.dst == net("198.19.0.1/32")))
    kernel.plant_route(KernelRoute(net("198.19.0.0/26"), "blackhole", None, None,
                                   ROUTE_PROTOCOL, 0, 5, False))  # a duplicate at metric 5
    assert rec.apply(DESIRED).changes == 0  # same desired state: the kernel is not read
    result = rec.apply(DESIRED, full=True)
    assert [str(r.dst) for r in result.replaced] == ["198.19.0.1/32"]
    assert [kr.priority for kr in result.deleted] == [5]
    assert shown(kernel) == set(map(str, DESIRED))


def test_after_an_error_the_next_pass_reads_the_kernel_again() -> None:
    kernel = node()
    kernel.fail("route_replace", errno.EPERM)
    rec = reconciler(kernel)
    first = rec.apply(DESIRED)
    assert len(first.failed) == 1 and "Operation not permitted" in first.errors[0]
    dumps = calls(kernel, "route_dump")
    second = rec.apply(DESIRED)
    assert calls(kernel, "route_dump") > dumps
    assert second.replaced == first.failed and not second.errors
    assert shown(kernel) == set(map(str, DESIRED))


def test_onlink_routes_through_a_vxlan_device_are_adopted_not_rewritten() -> None:
    kernel = node()
    kernel.add_vxlan("vxlan.tabby", vni=4096, local=addr("198.18.0.11"), port=4789,
                     mac="02:aa:00:00:00:01", mtu=1450)
    kernel.set_link("vxlan.tabby", up=True)
    desired = frozenset({Route(net("198.19.1.0/26"), "unicast", addr("198.19.1.0"),
                               "vxlan.tabby", onlink=True)})
    rec = reconciler(kernel)
    assert len(rec.apply(desired, full=True).replaced) == 1
    again = rec.apply(desired, full=True)
    assert again.replaced == [] and again.deleted == [] and again.unchanged == 1
    without = frozenset({Route(net("198.19.1.0/26"), "unicast", addr("198.19.1.0"),
                               "vxlan.tabby")})  # without onlink the hop cannot resolve
    assert rec.apply(without).failed == list(without)


def test_a_deleted_device_takes_our_routes_and_a_full_pass_notices() -> None:
    kernel = node()
    rec = reconciler(kernel)
    rec.apply(DESIRED)
    kernel.delete_link("pp1")  # the pod's end: the pair goes, and its routes with it
    assert not any(TAB in line for line in shown(kernel))
    result = rec.apply(DESIRED, full=True)
    assert sorted(str(r.dst) for r in result.unresolved) == ["198.19.0.1/32",
                                                             "fd7a:bb1e:1::1/128"]


OFF_LINK = Route(net("198.19.3.0/26"), "unicast", addr("198.18.99.1"))  # never resolves
CANDIDATES = sorted(DESIRED | {
    Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.13")),
    Route(net("198.19.0.1/32"), "blackhole"),
    Route(net("198.19.2.0/26"), "blackhole"),
    Route(net("198.19.0.2/32"), "unicast", None, "tab0000000000ff"),  # no such device
    Route(net("fd7a:bb1e:1::40/122"), "blackhole"),
    OFF_LINK,
}, key=str)


def one_per_dst(routes: set[Route]) -> frozenset[Route]:
    return frozenset({r.dst: r for r in sorted(routes, key=str)}.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sets(st.sampled_from(CANDIDATES)), st.booleans()), max_size=6),
       st.sets(st.sampled_from(CANDIDATES)))
def test_any_sequence_of_passes_then_a_clean_one_ends_as_from_scratch(
        passes: list[tuple[set[Route], bool]], last: set[Route]) -> None:
    """No hysteresis: once a pass goes through without error (leftovers are swept only
    then), the kernel holds what one pass on a fresh node would give."""
    kernel = node()
    rec = reconciler(kernel)
    for chosen, full in passes:
        rec.apply(one_per_dst(chosen), full=full)
    desired = one_per_dst(last - {OFF_LINK})
    assert not rec.apply(desired).errors
    scratch = node()
    reconciler(scratch).apply(desired)
    assert shown(kernel) == shown(scratch)
    assert rec.apply(desired).changes == 0 and rec.apply(desired, full=True).changes == 0


def test_sysctls_are_written_only_when_they_differ() -> None:
    kernel = node()
    rec = SysctlReconciler(kernel.counts, netlink=kernel.open)
    first = rec.apply(node_sysctls())
    assert first.written == ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"]
    assert rec.apply(node_sysctls()).written == []
    assert kernel.sysctl_get("net/ipv4/conf/up0/forwarding") == "1"
    missing = rec.apply({"net/ipv4/conf/gone0/proxy_arp": "1"})
    assert missing.written == [] and "No such file or directory" in missing.errors[0]
