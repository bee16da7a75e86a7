"""VXLAN's pure half: devices, FDB and neighbours, routes, CrossSubnet, pod MTU; IPIP pools."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tabby.calc.ipip import ipip_pools, ipip_pools_of, refusal
from tabby.calc.routes import Route, desired_routes
from tabby.calc.vxlan import (
    Fdb,
    Neighbour,
    desired_devices,
    encapsulates,
    pod_mtu,
    same_subnet,
    tunnel_handle,
    tunnel_mac,
    tunnel_pool,
    tunnel_routes,
    vxlan_nft_part,
    vxlan_pool_cidrs,
)
from tabby.model import IPPool, Node
from tabby.nft.model import Ruleset
from tabby.snapshot import Snapshot
from tests.unit.test_calc_routes import block

net = ipaddress.ip_network
addr = ipaddress.ip_address
iface = ipaddress.ip_interface


def pool(name: str, cidr: str, vxlan: str = "Never", **spec: Any) -> IPPool:
    return IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                 "metadata": {"name": name},
                                 "spec": {"cidr": cidr, "vxlanMode": vxlan, **spec}})


def node(name: str, v4: str | None, v6: str | None = None, vtep4: str | None = None,
         vtep6: str | None = None, labels: dict[str, str] | None = None) -> Node:
    spec: dict[str, Any] = {"bgp": {k: v for k, v in (("ipv4Address", v4), ("ipv6Address", v6))
                                    if v}}
    if vtep4:
        spec |= {"ipv4VXLANTunnelAddr": vtep4, "vxlanTunnelMACAddr": tunnel_mac(name, 4)}
    if vtep6:
        spec |= {"ipv6VXLANTunnelAddr": vtep6, "vxlanTunnelMACAddrV6": tunnel_mac(name, 6)}
    return Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                               "metadata": {"name": name, "labels": labels or {}},
                               "spec": spec})


V4 = pool("p4", "198.19.0.0/16", "Always")
V6 = pool("p6", "fd7a:bb1e:1::/48", "Always", blockSize=122)
N1 = node("node-1", "198.18.0.11/24", "fd7a:bb1e::11/64", "198.19.0.0", "fd7a:bb1e:1::")
N2 = node("node-2", "198.18.0.12/24", "fd7a:bb1e::12/64", "198.19.0.64", "fd7a:bb1e:1::40")
N3 = node("node-3", "198.18.1.13/24", "fd7a:bb1e:0:1::13/64", "198.19.0.128")  # rack 2, v4 VTEP
BLOCKS = (block("198.19.0.0/26", "node-1"), block("198.19.0.64/26", "node-2"),
          block("198.19.0.128/26", "node-3"), block("fd7a:bb1e:1::/122", "node-1"),
          block("fd7a:bb1e:1::40/122", "node-2"))


def snap(*pools: IPPool, nodes: tuple[Node, ...] = (N1, N2, N3)) -> Snapshot:
    return Snapshot.build(nodes=nodes, blocks=BLOCKS, others=pools)


def test_tunnel_names_and_macs_are_calicos_shape_and_stable() -> None:
    assert tunnel_handle("node-1", 4) == "vxlan-tunnel-addr-node-1"
    assert tunnel_handle("node-1", 6) == "vxlan-v6-tunnel-addr-node-1"
    mac = tunnel_mac("node-1", 4)
    assert mac == tunnel_mac("node-1", 4) != tunnel_mac("node-1", 6) != tunnel_mac("node-2", 4)
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered unicast
    assert len(mac) == 17


def test_no_vxlan_pool_means_no_device_and_no_tunnel_routes() -> None:
    s = snap(pool("p4", "198.19.0.0/16"))
    assert desired_devices(s, "node-1", 1500) == ()
    assert tunnel_routes(s, "node-1").claimed == frozenset()
    assert Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12")) \
        in desired_routes(s, "node-1")


def test_always_gives_devices_fdb_neighbours_per_family() -> None:
    v4, v6 = desired_devices(snap(V4, V6), "node-1", 1500)
    assert (v4.name, v4.vni, v4.port, v4.mtu, v4.local, v4.address) == (
        "vxlan.tabby", 4096, 4789, 1450, addr("198.18.0.11"), iface("198.19.0.0/32"))
    assert v4.mac == tunnel_mac("node-1", 4)
    assert v4.fdb == {Fdb(tunnel_mac("node-2", 4), addr("198.18.0.12")),
                      Fdb(tunnel_mac("node-3", 4), addr("198.18.1.13"))}
    assert v4.neighbours == {Neighbour(addr("198.19.0.64"), tunnel_mac("node-2", 4)),
                             Neighbour(addr("198.19.0.128"), tunnel_mac("node-3", 4))}
    assert (v6.name, v6.vni, v6.mtu, v6.local) == ("vxlan-v6.tabby", 6096, 1430,
                                                   addr("fd7a:bb1e::11"))
    assert v6.fdb == {Fdb(tunnel_mac("node-2", 6), addr("fd7a:bb1e::12"))}  # node-3: no v6 VTEP


def test_always_routes_every_remote_block_via_the_remote_vtep_onlink() -> None:
    routes = desired_routes(snap(V4, V6), "node-1")
    assert Route(net("198.19.0.64/26"), "unicast", addr("198.19.0.64"), "vxlan.tabby",
                 onlink=True) in routes
    assert Route(net("198.19.0.128/26"), "unicast", addr("198.19.0.128"), "vxlan.tabby",
                 onlink=True) in routes
    assert Route(net("fd7a:bb1e:1::40/122"), "unicast", addr("fd7a:bb1e:1::40"),
                 "vxlan-v6.tabby", onlink=True) in routes
    assert Route(net("198.19.0.0/26"), "blackhole") in routes  # own block stays
    assert not any(r.gateway == addr("198.18.0.12") for r in routes)  # no plain route left


def test_a_node_not_yet_publishing_its_vtep_gets_no_route_nor_device() -> None:
    bare = node("node-2", "198.18.0.12/24")
    s = snap(V4, nodes=(N1, bare, N3))
    assert net("198.19.0.64/26") in tunnel_routes(s, "node-1").claimed
    assert not any(r.dst == net("198.19.0.64/26") for r in desired_routes(s, "node-1"))
    assert desired_devices(s, "node-2", 1500) == ()
    # and a node without its own device routes nothing through one
    assert not any(r.dev for r in desired_routes(s, "node-2"))


def test_cross_subnet_encapsulates_only_towards_another_subnet() -> None:
    s = snap(pool("p4", "198.19.0.0/16", "CrossSubnet"))
    routes = desired_routes(s, "node-1")
    assert Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12")) in routes  # same rack
    assert Route(net("198.19.0.128/26"), "unicast", addr("198.19.0.128"), "vxlan.tabby",
                 onlink=True) in routes  # rack 2
    from_3 = desired_routes(s, "node-3")
    assert Route(net("198.19.0.0/26"), "unicast", addr("198.19.0.0"), "vxlan.tabby",
                 onlink=True) in from_3
    assert {d.name for d in desired_devices(s, "node-1", 1500)} == {"vxlan.tabby"}


@pytest.mark.parametrize(("mode", "other", "expected"), [
    ("Always", N2, True), ("Always", N3, True), ("Never", N3, False),
    ("CrossSubnet", N2, False), ("CrossSubnet", N3, True), ("CrossSubnet", None, True)])
def test_encapsulation_decision(mode: str, other: Node | None, expected: bool) -> None:
    assert encapsulates(mode, N1, other, 4) is expected


def test_same_subnet_is_per_family_and_needs_both_addresses() -> None:
    assert same_subnet(N1, N2, 4) and same_subnet(N1, N2, 6)
    assert not same_subnet(N1, N3, 4) and not same_subnet(N1, N3, 6)
    assert not same_subnet(N1, node("x", None), 4)


def test_borrowed_addresses_in_a_vxlan_pool_go_through_the_tunnel() -> None:
    borrowed = block("198.19.0.192/26", "node-1", holders={3: "node-2"})
    s = Snapshot.build(nodes=(N1, N2, N3), blocks=(*BLOCKS, borrowed), others=(V4,))
    assert Route(net("198.19.0.195/32"), "unicast", addr("198.19.0.64"), "vxlan.tabby",
                 onlink=True) in desired_routes(s, "node-1")


def test_only_pools_in_vxlan_mode_are_claimed_when_pools_are_mixed() -> None:
    s = snap(V4, pool("p6", "fd7a:bb1e:1::/48", blockSize=122))
    routes = desired_routes(s, "node-1")
    assert Route(net("fd7a:bb1e:1::40/122"), "unicast", addr("fd7a:bb1e::12")) in routes
    assert vxlan_pool_cidrs(s) == (net("198.19.0.0/16"),)


def test_tunnel_pool_follows_node_selector_and_disabled_and_uses() -> None:
    picky = pool("p4", "198.19.0.0/16", "Always", nodeSelector="rack == 'a'")
    assert tunnel_pool(snap(picky), "node-1", 4) is None
    labelled = node("node-1", "198.18.0.11/24", labels={"rack": "a"})
    assert tunnel_pool(snap(picky, nodes=(labelled,)), "node-1", 4) == picky
    assert tunnel_pool(snap(pool("p4", "198.19.0.0/16", "Always", disabled=True)),
                       "node-1", 4) is None
    assert tunnel_pool(snap(pool("p4", "198.19.0.0/16", "Always",
                                 allowedUses=["Workload"])), "node-1", 4) is None
    assert tunnel_pool(snap(V4), "node-1", 6) is None


def test_pod_mtu_subtracts_the_largest_overhead_of_its_pools() -> None:
    plain4 = pool("q4", "198.19.0.0/16")
    assert pod_mtu([V4, V6], [addr("198.19.0.5")], 1500) == 1450
    assert pod_mtu([V4, V6], [addr("198.19.0.5"), addr("fd7a:bb1e:1::5")], 1500) == 1430
    assert pod_mtu([plain4, V6], [addr("198.19.0.5")], 1500) == 1500
    assert pod_mtu([V4], [addr("10.0.0.1")], 9000) == 9000  # no pool: as configured


def test_ipip_pools_are_found_and_refused_with_the_fix() -> None:
    ipip = pool("old", "198.19.0.0/16", ipipMode="Always")
    s = snap(ipip)
    assert ipip_pools(s, "node-1") == (ipip,)
    assert ipip_pools(snap(pool("old", "198.19.0.0/16", ipipMode="Always", disabled=True)),
                      "node-1") == ()
    assert ipip_pools_of([ipip], [addr("198.19.3.3")]) == (ipip,)
    assert ipip_pools_of([ipip], [addr("fd7a::1")]) == ()
    text = refusal(ipip)
    assert "IPPool/old" in text and "no IPIP support" in text and "vxlanMode: Always" in text


def test_node_tunnel_fields_round_trip() -> None:
    again = Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                                "metadata": {"name": "node-1"}, **N1.body()})
    assert again.spec.vxlan == N1.spec.vxlan
    assert N1.body()["spec"]["ipv4VXLANTunnelAddr"] == "198.19.0.0"
    assert N1.body()["spec"]["vxlanTunnelMACAddrV6"] == tunnel_mac("node-1", 6)
    cleared = N1.spec.vxlan.with_family(4, None, "")
    assert cleared.ipv4_address is None and cleared.mac == "" and cleared.ipv6_address


def test_tunnel_packets_between_peers_skip_conntrack() -> None:
    part = vxlan_nft_part(desired_devices(snap(V4, V6), "node-1", 1500))
    assert part.sets["vxlan-peers-v4"].elements == {"198.18.0.12", "198.18.1.13"}
    assert part.sets["vxlan-peers-v6"].elements == {"fd7a:bb1e::12"}
    rules = {(h.base, h.rule.body) for h in part.hooks}
    assert ("raw-prerouting", "ip saddr @vxlan-peers-v4 udp dport 4789 notrack") in rules
    assert ("raw-output", "ip6 daddr @vxlan-peers-v6 udp dport 4789 notrack") in rules
    assert len(rules) == 4
    assert vxlan_nft_part(desired_devices(snap(pool("p4", "198.19.0.0/16")), "node-1",
                                          1500)) == Ruleset()
