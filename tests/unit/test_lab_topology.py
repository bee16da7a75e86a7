"""The lab's topology is pure data: names, addresses and pools from plan()."""

from __future__ import annotations

import ipaddress

import pytest

from tabby.errors import ConfigError, LabError
from tabby.lab.cni import cni_conflist
from tabby.lab.datastore import node_manifest, pool_manifest
from tabby.lab.topology import IFNAMSIZ, plan, rack_of, rack_subnets
from tabby.model import IPPool, Node

LAB_V4 = ipaddress.ip_network("198.18.0.0/15")
LAB_V6 = ipaddress.ip_network("fd7a:bb1e::/32")
FORBIDDEN = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("fd00::/64"))


def in_lab(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return addr in (LAB_V4 if addr.version == 4 else LAB_V6)


def test_plan_dual_stack_three_nodes() -> None:
    t = plan("tabby", nodes=3, stack="dual")
    assert t.tor_netns == "tabby-tor"
    assert [n.name for n in t.nodes] == ["node-1", "node-2", "node-3"]
    assert [n.netns for n in t.nodes] == ["tabby-node-1", "tabby-node-2", "tabby-node-3"]
    node1 = t.node("node-1")
    assert node1.ipv4 == ipaddress.ip_interface("198.18.0.11/24")
    assert node1.ipv6 == ipaddress.ip_interface("fd7a:bb1e::11/64")
    assert t.node("node-3").ipv4 == ipaddress.ip_interface("198.18.0.13/24")
    rack = t.racks[0]
    assert rack.gateways() == (ipaddress.ip_interface("198.18.0.1/24"),
                               ipaddress.ip_interface("fd7a:bb1e::1/64"))
    assert [(str(p.cidr), p.block_size) for p in t.pools] == [
        ("198.19.0.0/16", 26), ("fd7a:bb1e:1::/48", 122)]
    assert t.families == (4, 6)


@pytest.mark.parametrize(("stack", "families"), [("ipv4", (4,)), ("ipv6", (6,))])
def test_single_stack_has_one_family_everywhere(stack: str, families: tuple[int, ...]) -> None:
    t = plan("x", nodes=2, stack=stack)
    assert t.families == families
    assert {p.cidr.version for p in t.pools} == set(families)
    for node in t.nodes:
        assert {a.version for a in node.addresses()} == set(families)
    assert {g.version for g in t.racks[0].gateways()} == set(families)


def test_every_address_is_in_the_lab_ranges_and_none_in_the_machines() -> None:
    t = plan("big", nodes=240, stack="dual")
    addresses = [a for n in t.nodes for a in n.addresses()] + list(t.racks[0].gateways())
    assert len({a.ip for a in addresses}) == len(addresses)  # unique
    for a in addresses:
        assert in_lab(a.ip), a
        assert not any(a.network.overlaps(f) for f in FORBIDDEN if f.version == a.version)
    for pool in t.pools:
        assert pool.cidr.subnet_of(LAB_V4 if pool.cidr.version == 4 else LAB_V6)  # type: ignore[arg-type]
    # the nodes sit in their rack's subnet, pools never overlap the fabric
    for node in t.nodes:
        for a in node.addresses():
            assert a.network in (t.racks[0].subnet_v4, t.racks[0].subnet_v6)
            assert not any(a.network.overlaps(p.cidr) for p in t.pools
                           if p.cidr.version == a.version)


def test_interface_names_fit_the_kernel_limit() -> None:
    t = plan("a-long-lab-name-of-32-characters", nodes=240, stack="dual")
    assert len(t.name) == 32
    for name in t.interface_names():
        assert 0 < len(name) <= IFNAMSIZ, name


def test_two_labs_share_no_namespace() -> None:
    a, b = plan("tl1", nodes=3), plan("tl2", nodes=3)
    assert not set(a.netns()) & set(b.netns())
    assert all(ns.startswith("tl1-") for ns in a.netns())


def test_plan_is_a_value() -> None:
    assert plan("v", nodes=2) == plan("v", nodes=2)
    assert plan("v", nodes=2) != plan("v", nodes=3)
    t = plan("v", nodes=4, stack="ipv6", datastore="etcd")
    assert plan(**t.options()) == t
    assert t.to_dict()["nodes"][3] == {
        "name": "node-4", "rack": 1, "netns": "v-node-4", "interface": "eth0",
        "torInterface": "node-4", "addresses": ["fd7a:bb1e::14/64"]}


@pytest.mark.parametrize("kwargs", [
    {"nodes": 0}, {"nodes": 241}, {"stack": "ipv5"}, {"datastore": "redis"},
    {"encap": "gre"}, {"bgp": "ospf"}, {"racks": 0}, {"racks": 3, "nodes": 2},
])
def test_bad_options_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        plan("x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "Upper", "under_score", "-lead", "x" * 33, "a/b"])
def test_bad_lab_names(name: str) -> None:
    with pytest.raises(ConfigError, match="lab name"):
        plan(name)


def test_racks_without_bgp_or_vxlan_are_refused_clearly() -> None:
    with pytest.raises(LabError, match="--racks 2: routes between racks need BGP"):
        plan("x", nodes=4, racks=2)
    assert len(plan("x", nodes=4, racks=2, bgp="tor").racks) == 2
    assert len(plan("x", nodes=4, racks=2, encap="vxlan").racks) == 2


@pytest.mark.parametrize("bgp", ["mesh", "rr", "tor"])
def test_bgp_labs_have_an_outside_client_in_its_own_subnet(bgp: str) -> None:
    t = plan("x", nodes=4, racks=2, stack="dual", bgp=bgp)
    assert t.ext is not None and t.ext.netns == "x-ext" and t.netns()[-1] == "x-ext"
    assert [str(a) for a in t.ext.addresses] == ["198.18.100.10/24", "fd7a:bb1e:0:64::10/64"]
    assert [str(g) for g in t.ext.gateways] == ["198.18.100.1/24", "fd7a:bb1e:0:64::1/64"]
    racks = [net for r in t.racks for net in (r.subnet_v4, r.subnet_v6) if net is not None]
    assert not any(a.network.overlaps(net) for a in t.ext.addresses for net in racks
                   if a.version == net.version)
    assert [str(n.ipv4) for n in t.nodes] == ["198.18.0.11/24", "198.18.0.12/24",
                                              "198.18.1.13/24", "198.18.1.14/24"]
    assert plan("x", nodes=2).ext is None
    with pytest.raises(ConfigError, match=r"1\.\.100 racks"):
        plan("x", nodes=120, racks=101, bgp="tor")


@pytest.mark.parametrize(("encap", "mode"), [
    ("none", "Never"), ("vxlan", "Always"), ("vxlan-crosssubnet", "CrossSubnet")])
def test_encap_sets_the_pools_vxlan_mode_and_nat_outgoing(encap: str, mode: str) -> None:
    for pool in plan("x", stack="dual", encap=encap).pools:
        spec = IPPool.from_manifest(pool_manifest(pool)).spec
        assert (spec.vxlan_mode, spec.nat_outgoing) == (mode, True)


def test_racks_are_laid_out_for_later() -> None:
    assert rack_subnets(1) == (ipaddress.ip_network("198.18.0.0/24"),
                               ipaddress.ip_network("fd7a:bb1e::/64"))
    assert rack_subnets(2) == (ipaddress.ip_network("198.18.1.0/24"),
                               ipaddress.ip_network("fd7a:bb1e:0:1::/64"))
    assert [rack_of(i, 5, 2) for i in range(1, 6)] == [1, 1, 1, 2, 2]
    assert [rack_of(i, 4, 4) for i in range(1, 5)] == [1, 2, 3, 4]


def test_seed_manifests_are_valid_resources() -> None:
    t = plan("x", nodes=2, stack="dual")
    node = Node.from_manifest(node_manifest(t.node("node-2")))
    assert str(node.spec.bgp.ipv4_address) == "198.18.0.12/24"
    assert str(node.spec.bgp.ipv6_address) == "fd7a:bb1e::12/64"
    assert node.meta.labels == {"kubernetes.io/hostname": "node-2"}
    pools = [IPPool.from_manifest(pool_manifest(p)) for p in t.pools]
    assert [(str(p.spec.cidr), p.spec.block_size) for p in pools] == [
        ("198.19.0.0/16", 26), ("fd7a:bb1e:1::/48", 122)]


def test_conflist_shape() -> None:
    from pathlib import Path
    conf = cni_conflist(Path("/run/tabby/labs/x/node-1/cni.sock"), 1500, portmap_version="1.0.0")
    assert conf["cniVersion"] == "1.0.0" and conf["name"] == "k8s-pod-network"
    assert conf["plugins"] == [
        {"type": "tabby-cni", "socket": "/run/tabby/labs/x/node-1/cni.sock", "mtu": 1500},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]
    alone = cni_conflist(Path("/s"), 1500, portmap_version=None)
    assert alone["cniVersion"] == "1.1.0"
    assert [p["type"] for p in alone["plugins"]] == ["tabby-cni"]
