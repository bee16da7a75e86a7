"""The link reconcilers' rules, without root: VxlanReconciler and PodWirer on FakeNetlink.

VXLAN: create a wanted device, adopt a matching one, set in place what the
kernel can change (MAC, MTU, up) and rebuild what it cannot (VNI, local
address, port, kind), bring address, FDB and neighbours to exactly the wanted
set, delete a device of ours nobody wants, leave every other link alone. Pods:
a veth pair across namespaces, idempotent, checked and removed. The same rules
run against a real kernel in tests/netns/test_dataplane_vxlan.py and
test_dataplane_pods.py; tests/netns/test_fakes_agree.py keeps the fake honest.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
from typing import Any

import pytest

from tabby.calc.vxlan import Fdb, Neighbour, VxlanDevice
from tabby.dataplane.netlink import VxlanInfo
from tabby.dataplane.pods import GATEWAY_V6, PodWirer, PodWiring, host_veth_name
from tabby.dataplane.vxlan import VxlanReconciler
from tabby.errors import DataplaneError
from tabby.marks import HOST_MAC, ROUTE_PROTOCOL
from tabby.testing.fakes import FakeNetlink

addr = ipaddress.ip_address
iface = ipaddress.ip_interface
MAC1, MAC2, MAC3 = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
V4 = VxlanDevice(name="vxlan.tabby", version=4, vni=4096, port=4789, local=addr("198.18.0.11"),
                 mac=MAC1, mtu=1450, address=iface("198.19.0.0/32"),
                 fdb=frozenset({Fdb(MAC2, addr("198.18.0.12"))}),
                 neighbours=frozenset({Neighbour(addr("198.19.0.64"), MAC2)}))
V6 = VxlanDevice(name="vxlan-v6.tabby", version=6, vni=6096, port=4789,
                 local=addr("fd7a:bb1e::11"), mac=MAC3, mtu=1430,
                 address=iface("fd7a:bb1e:1::/128"),
                 fdb=frozenset({Fdb(MAC2, addr("fd7a:bb1e::12"))}),
                 neighbours=frozenset({Neighbour(addr("fd7a:bb1e:1::40"), MAC2)}))


@pytest.fixture
def kernel() -> FakeNetlink:
    """A node with an uplink eth0 on 198.18.0.11/24 and fd7a:bb1e::11/64."""
    k = FakeNetlink()
    k.add_link("eth0", "veth", peer="eth1")
    for dev in ("lo", "eth0", "eth1"):
        k.set_link(dev, up=True)
    k.add_address("eth0", iface("198.18.0.11/24"))
    k.add_address("eth0", iface("fd7a:bb1e::11/64"), nodad=True)
    return k


def reconciler(kernel: FakeNetlink) -> VxlanReconciler:
    return VxlanReconciler(kernel.counts, netlink=kernel.open)


def state(kernel: FakeNetlink, d: VxlanDevice) -> tuple[object, ...]:
    """What the kernel holds for ``d``: settings, link, global addresses, FDB, neighbours."""
    link, info = kernel.link(d.name), kernel.vxlan_info(d.name)
    assert link is not None and info is not None
    return ((info.vni, info.local, info.port, info.learning), (link.mac, link.mtu, link.up),
            {a for a in kernel.addresses(d.name) if not a.ip.is_link_local},
            {(e.mac, e.address) for e in kernel.fdb(d.name)},
            {(n.address, n.mac, n.permanent) for n in kernel.neighbours(d.name, d.version)
             if not n.address.is_multicast})


def wanted(d: VxlanDevice) -> tuple[object, ...]:
    return ((d.vni, d.local, d.port, False), (d.mac, d.mtu, True), {d.address},
            {(e.mac, e.dst) for e in d.fdb}, {(n.address, n.mac, True) for n in d.neighbours})


def test_devices_are_created_then_left_alone(kernel: FakeNetlink) -> None:
    rec = reconciler(kernel)
    first = rec.apply((V4, V6))
    assert first.errors == []
    assert "created vxlan.tabby (VNI 4096, local 198.18.0.11)" in first.changes
    assert state(kernel, V4) == wanted(V4) and state(kernel, V6) == wanted(V6)
    assert kernel.sysctl_get("net/ipv6/conf/vxlan-v6.tabby/accept_dad") == "0"
    assert rec.apply((V4, V6)).changes == []  # nothing changed: nothing read
    # read back in full: the kernel's link-local address and MLD entry are not ours
    assert rec.apply((V4, V6), full=True).changes == []


def test_a_matching_device_is_adopted_and_fixed_in_place(kernel: FakeNetlink) -> None:
    kernel.add_vxlan("vxlan.tabby", vni=4096, local=addr("198.18.0.11"), port=4789,
                     mac="02:aa:00:00:00:09", mtu=1500)  # left by an agent, MAC, MTU off
    kernel.replace_fdb("vxlan.tabby", MAC2, addr("198.18.0.12"))
    result = reconciler(kernel).apply((V4,))
    assert result.errors == []
    assert not any(c.startswith(("created", "deleted")) for c in result.changes)
    assert "set vxlan.tabby mac 02:aa:00:00:00:01 mtu 1450 up" in result.changes
    assert not any(c.startswith("fdb") for c in result.changes)  # the entry was right
    assert state(kernel, V4) == wanted(V4)


@pytest.mark.parametrize("change", [{"vni": 4097}, {"port": 8472},
                                    {"local": addr("198.18.0.99")}])
def test_a_device_whose_settings_differ_is_made_again(kernel: FakeNetlink,
                                                      change: dict[str, Any]) -> None:
    rec = reconciler(kernel)
    rec.apply((V4,))
    changed = dataclasses.replace(V4, **change)
    result = rec.apply((changed,))
    assert result.errors == []
    assert result.changes[:2] == ["deleted vxlan.tabby (settings differ)",
                                  f"created vxlan.tabby (VNI {changed.vni},"
                                  f" local {changed.local})"]
    assert state(kernel, changed) == wanted(changed)


def test_a_link_of_our_name_that_is_no_vxlan_is_replaced(kernel: FakeNetlink) -> None:
    kernel.add_link("vxlan.tabby", "dummy", up=True)
    result = reconciler(kernel).apply((V4,))
    assert result.changes[0] == "deleted vxlan.tabby (settings differ)"
    assert state(kernel, V4) == wanted(V4)


def test_address_fdb_and_neighbours_converge_to_exactly_the_wanted_set(
        kernel: FakeNetlink) -> None:
    rec = reconciler(kernel)
    rec.apply((V4,))
    kernel.add_address("vxlan.tabby", iface("198.19.9.9/32"))  # strays an operator added
    kernel.replace_neighbour("vxlan.tabby", addr("198.19.9.9"), MAC3)
    kernel.replace_fdb("vxlan.tabby", MAC3, addr("198.18.0.99"))
    moved = dataclasses.replace(V4, fdb=frozenset({Fdb(MAC2, addr("198.18.0.22")),
                                                   Fdb(MAC3, addr("198.18.0.13"))}),
                                neighbours=frozenset({Neighbour(addr("198.19.0.64"), MAC3)}))
    result = rec.apply((moved,), full=True)
    assert result.errors == [] and "removed 198.19.9.9/32 from vxlan.tabby" in result.changes
    assert state(kernel, moved) == wanted(moved)
    assert any(a.ip.is_link_local for a in kernel.addresses("vxlan.tabby"))  # kept


def test_ours_no_longer_wanted_are_deleted_and_others_left_alone(kernel: FakeNetlink) -> None:
    kernel.add_vxlan("vxlan0", vni=1, local=addr("198.18.0.11"), port=4789, mac=MAC2, mtu=1450)
    rec = reconciler(kernel)
    rec.apply((V4, V6))
    kernel.replace_route(ipaddress.ip_network("198.19.1.0/26"), protocol=ROUTE_PROTOCOL,
                         gateway=addr("198.19.1.0"), dev="vxlan.tabby", onlink=True)
    assert rec.apply((V6,)).changes == ["deleted vxlan.tabby"]
    assert rec.apply(()).changes == ["deleted vxlan-v6.tabby"]
    assert sorted(x.name for x in kernel.links()) == ["eth0", "eth1", "lo", "vxlan0"]
    assert kernel.vxlan_info("vxlan0") == VxlanInfo(1, addr("198.18.0.11"), 4789, False)
    assert kernel.routes(4, ROUTE_PROTOCOL) == []  # the kernel dropped the tunnel's route
    assert iface("198.18.0.11/24") in kernel.addresses("eth0")


def test_a_refused_device_is_reported_and_retried(kernel: FakeNetlink) -> None:
    kernel.add_vxlan("vx-other", vni=4096, local=addr("198.18.0.50"), port=4789, mac=MAC2,
                     mtu=1450)  # holds our VNI and port: the kernel refuses a second
    rec = reconciler(kernel)
    first = rec.apply((V4,))
    assert first.errors == ["link_add vxlan vxlan.tabby (VNI 4096, local 198.18.0.11):"
                            " File exists"]
    kernel.delete_link("vx-other")
    second = rec.apply((V4,))  # same desired state, but the last pass failed
    assert second.errors == [] and second.changes


def test_after_an_error_the_next_pass_reads_everything_back(kernel: FakeNetlink) -> None:
    kernel.fail("fdb_replace", errno.EPERM)
    rec = reconciler(kernel)
    assert "Operation not permitted" in rec.apply((V4,)).errors[0]  # the device stops there
    second = rec.apply((V4,))  # same desired state, read back: the rest is done
    assert second.errors == [] and second.changes == [
        "fdb: 02:aa:00:00:00:02 dst 198.18.0.12 on vxlan.tabby",
        "neigh: 198.19.0.64 lladdr 02:aa:00:00:00:02 on vxlan.tabby"]
    assert state(kernel, V4) == wanted(V4)


# -- pods ---------------------------------------------------------------------------

POD_NS = "/var/run/netns/pod-a"


def pod_wiring() -> PodWiring:
    return PodWiring(host_veth=host_veth_name("c0ffee", "eth0"), netns=POD_NS, ifname="eth0",
                     addresses=(iface("198.19.0.5/32"), iface("fd7a:bb1e:1::5/128")))


def wirer(kernel: FakeNetlink) -> PodWirer:
    return PodWirer(kernel.counts, netlink=kernel.open, netns_exists=kernel.netns_exists)


def test_a_pod_is_wired_with_a_veth_pair_routes_and_switches(kernel: FakeNetlink) -> None:
    pod = kernel.add_netns(POD_NS)
    w = pod_wiring()
    wired = wirer(kernel).wire(w)
    host = kernel.link(w.host_veth)
    inside = pod.link("eth0")
    assert host is not None and inside is not None
    assert (host.mac, host.up, host.peer_index) == (HOST_MAC, True, inside.index)
    assert (wired.pod_mac, wired.pod_index) == (inside.mac, inside.index)
    for key, value in ((f"net/ipv4/conf/{w.host_veth}/proxy_arp", "1"),
                       (f"net/ipv4/neigh/{w.host_veth}/proxy_delay", "0")):
        assert kernel.sysctl_get(key) == value
    assert {str(r.dst) for r in kernel.routes(4, ROUTE_PROTOCOL)
            + kernel.routes(6, ROUTE_PROTOCOL)} == {"198.19.0.5/32", "fd7a:bb1e:1::5/128"}
    assert {(str(r.dst), str(r.gateway)) for r in pod.routes(4) + pod.routes(6)
            if r.protocol == ROUTE_PROTOCOL} == {
        ("169.254.1.1/32", "None"), ("0.0.0.0/0", "169.254.1.1"), ("::/0", str(GATEWAY_V6))}
    assert wirer(kernel).inspect(w) == []


def test_wiring_again_changes_nothing_and_unwiring_removes_both_ends(
        kernel: FakeNetlink) -> None:
    pod = kernel.add_netns(POD_NS)
    w = pod_wiring()
    wirer(kernel).wire(w)
    made = kernel.counts.snapshot()[0]["link_add"]
    wirer(kernel).wire(w)
    assert kernel.counts.snapshot()[0]["link_add"] == made  # the intact pair is reused
    kernel.add_link("tabby0", "dummy")  # ours only by prefix: not a pod veth
    assert wirer(kernel).host_veths() == [w.host_veth]
    assert wirer(kernel).unwire(w.host_veth) is True
    assert pod.link("eth0") is None and kernel.routes(4, ROUTE_PROTOCOL) == []
    assert wirer(kernel).unwire(w.host_veth) is False


def test_what_is_off_is_reported_and_a_stranger_refused(kernel: FakeNetlink) -> None:
    pod = kernel.add_netns(POD_NS)
    w = pod_wiring()
    wirer(kernel).wire(w)
    kernel.delete_route(next(r for r in kernel.routes(4, ROUTE_PROTOCOL)))
    kernel.set_link(w.host_veth, up=False)
    assert wirer(kernel).inspect(w) == [f"host interface {w.host_veth} is down",
                                        f"host route 198.19.0.5/32 dev {w.host_veth}"
                                        " is missing",
                                        f"host route fd7a:bb1e:1::5/128 dev {w.host_veth}"
                                        " is missing"]
    wirer(kernel).unwire(w.host_veth)
    pod.add_link("eth0", "dummy")
    with pytest.raises(DataplaneError, match="did not create"):
        wirer(kernel).wire(w)
    with pytest.raises(DataplaneError, match="does not exist"):
        wirer(kernel).wire(dataclasses.replace(w, netns="/var/run/netns/gone"))
