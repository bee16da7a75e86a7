"""The agent's pass without root: NodeCalculator -> DesiredState -> NodeApplier on fakes.

The applier drives one reconciler per kernel object (VXLAN links, the nft
table, routes, sysctls) against FakeNetlink and FakeNft: the VXLAN device
exists before the routes through it, a part that fails (nft refusing a
script) does not stop the others and is retried by the next full pass, a
part the calculator could not compute is left alone, and IPIP pools on a
kernel without IPIP become a health note.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from tabby.agent.apply import NodeApplier
from tabby.calc.node import NodeCalculator, NodeSettings
from tabby.dataplane.netlink import CallCounts
from tabby.dataplane.nft import NftReconciler
from tabby.dataplane.routes import RouteReconciler
from tabby.dataplane.sysctls import SysctlReconciler
from tabby.dataplane.vxlan import VxlanReconciler
from tabby.marks import ROUTE_PROTOCOL, VXLAN_DEVICES
from tabby.snapshot import Snapshot
from tabby.testing.fakes import FakeNetlink, FakeNft
from tests.unit.test_calc_routes import block
from tests.unit.test_calc_vxlan import node, pool

iface = ipaddress.ip_interface
N1 = node("node-1", "198.18.0.11/24", vtep4="198.19.0.0")
N2 = node("node-2", "198.18.0.12/24", vtep4="198.19.0.64")
BLOCKS = (block("198.19.0.0/26", "node-1"), block("198.19.0.64/26", "node-2"))


@pytest.fixture
def kernel() -> FakeNetlink:
    k = FakeNetlink()
    k.add_link("eth0", "veth", peer="eth1")
    for dev in ("lo", "eth0", "eth1"):
        k.set_link(dev, up=True)
    k.add_address("eth0", iface("198.18.0.11/24"))
    for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        k.sysctl_set(key, "0")
    return k


def applier(kernel: FakeNetlink, nft: FakeNft, ipip: bool = True) -> NodeApplier:
    counts = CallCounts()
    return NodeApplier(counts, links=VxlanReconciler(counts, netlink=kernel.open),
                       nft=NftReconciler(nft), routes=RouteReconciler(counts, netlink=kernel.open),
                       sysctls=SysctlReconciler(counts, netlink=kernel.open),
                       ipip=lambda: ipip)


def snap(vxlan: str = "Always", **spec: object) -> Snapshot:
    return Snapshot.build(nodes=(N1, N2), blocks=BLOCKS,
                          others=(pool("p4", "198.19.0.0/16", vxlan, **spec),))


def chains(nft: FakeNft) -> set[str]:
    return set(nft.tables[("inet", "tabby")].chains)


def ours(kernel: FakeNetlink) -> set[str]:
    return {str(r.dst) for r in kernel.routes(4, ROUTE_PROTOCOL)}


def test_a_pass_builds_links_table_routes_and_sysctls(kernel: FakeNetlink) -> None:
    nft = FakeNft()
    desired = NodeCalculator(NodeSettings("node-1")).calculate(snap(natOutgoing=True))
    applied = applier(kernel, nft).apply(desired, full=True)
    assert applied.problems == []
    assert kernel.link(VXLAN_DEVICES[4]) is not None
    assert ours(kernel) == {"198.19.0.0/26", "198.19.0.64/26"}  # blackhole; via the device
    assert "natout-post" in chains(nft)
    assert kernel.sysctl_get("net/ipv4/ip_forward") == "1"


def test_a_refused_table_does_not_stop_the_routes(kernel: FakeNetlink) -> None:
    nft = FakeNft()
    apply = applier(kernel, nft)
    desired = NodeCalculator(NodeSettings("node-1")).calculate(snap())
    nft.refuse_next("Operation not permitted")
    applied = apply.apply(desired, full=True)
    assert [p for p in applied.problems if p.startswith("nftables:")]
    assert ours(kernel) == {"198.19.0.0/26", "198.19.0.64/26"}
    assert apply.apply(desired, full=True).problems == []  # the retry goes through
    assert "pol-fwd" in chains(nft)


def test_a_part_that_could_not_be_computed_is_left_alone(kernel: FakeNetlink) -> None:
    nft = FakeNft()
    apply = applier(kernel, nft)
    desired = NodeCalculator(NodeSettings("node-1")).calculate(snap(natOutgoing=True))
    apply.apply(desired, full=True)
    broken = dataclasses.replace(desired, nft=None, problems=("nftables: a bug",))
    applied = apply.apply(broken, full=True)
    assert applied.problems == ["nftables: a bug"]
    assert "natout-post" in chains(nft)  # the table as it was


def test_ipip_pools_on_a_kernel_without_ipip_are_a_health_note(kernel: FakeNetlink) -> None:
    desired = NodeCalculator(NodeSettings("node-1")).calculate(snap("Never", ipipMode="Always"))
    apply = applier(kernel, FakeNft(), ipip=False)
    apply.apply(desired, full=True)
    assert [n for n in apply.health_notes() if "IPIP" in n or "ipip" in n]
    assert applier(kernel, FakeNft(), ipip=True).health_notes() == ()
