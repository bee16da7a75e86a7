"""desired_routes: pure, from model objects built the way the store holds them."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from tabby.calc.routes import (
    Route,
    desired_routes,
    remote_block_routes,
    route_sort_key,
)
from tabby.model import IPAMBlock, Node, WorkloadEndpoint
from tabby.snapshot import Snapshot

net = ipaddress.ip_network
addr = ipaddress.ip_address


def node(name: str, v4: str | None = None, v6: str | None = None) -> Node:
    bgp: dict[str, Any] = {}
    if v4:
        bgp["ipv4Address"] = v4
    if v6:
        bgp["ipv6Address"] = v6
    return Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                               "metadata": {"name": name}, "spec": {"bgp": bgp}})


def block(cidr: str, owner: str | None, holders: dict[int, str] | None = None,
          deleted: bool = False) -> IPAMBlock:
    """A block of ``cidr`` affine to ``owner``; ``holders`` maps ordinal -> node in attrs."""
    network = net(cidr)
    size = network.num_addresses
    allocations: list[int | None] = [None] * size
    attributes = []
    for ordinal, holder in sorted((holders or {}).items()):
        allocations[ordinal] = len(attributes)
        attributes.append({"handle_id": f"k8s-pod-network.c{ordinal}.eth0",
                           "secondary": {"node": holder, "namespace": "default",
                                         "pod": f"p{ordinal}"}})
    return IPAMBlock.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPAMBlock",
        "metadata": {"name": cidr.replace(".", "-").replace(":", "-").replace("/", "-")},
        "spec": {"cidr": cidr, "affinity": f"host:{owner}" if owner else None,
                 "allocations": allocations,
                 "unallocated": [i for i in range(size) if allocations[i] is None],
                 "attributes": attributes, "deleted": deleted}})


def wep(node_name: str, pod: str, iface: str, *nets: str, namespace: str = "default"
        ) -> WorkloadEndpoint:
    return WorkloadEndpoint.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{node_name}-k8s-{pod}-eth0", "namespace": namespace},
        "spec": {"node": node_name, "pod": pod, "interfaceName": iface,
                 "ipNetworks": list(nets)}})


NODES = (node("node-1", "198.18.0.11/24", "fd7a:bb1e::11/64"),
         node("node-2", "198.18.0.12/24", "fd7a:bb1e::12/64"),
         node("node-3", "198.18.0.13/24", "fd7a:bb1e::13/64"))


def snap(**kw: Any) -> Snapshot:
    kw.setdefault("nodes", NODES)
    return Snapshot.build(**kw)


def test_empty_snapshot_gives_no_routes() -> None:
    assert desired_routes(Snapshot(), "node-1") == frozenset()
    assert desired_routes(snap(), "node-1") == frozenset()


def test_local_endpoint_routes_via_host_veth_both_families() -> None:
    s = snap(endpoints=[wep("node-1", "a", "tab000000000001", "198.19.0.1/32",
                            "fd7a:bb1e:1::1/128")])
    assert desired_routes(s, "node-1") == {
        Route(net("198.19.0.1/32"), "unicast", None, "tab000000000001"),
        Route(net("fd7a:bb1e:1::1/128"), "unicast", None, "tab000000000001"),
    }


def test_remote_endpoints_give_no_device_routes() -> None:
    s = snap(endpoints=[wep("node-2", "a", "tab000000000001", "198.19.0.65/32")])
    assert desired_routes(s, "node-1") == frozenset()


def test_endpoint_without_interface_is_skipped() -> None:
    s = snap(endpoints=[wep("node-1", "a", "", "198.19.0.1/32")])
    assert desired_routes(s, "node-1") == frozenset()


def test_blackhole_per_affine_block_and_remote_blocks_via_owner() -> None:
    s = snap(blocks=[block("198.19.0.0/26", "node-1"), block("198.19.0.64/26", "node-2"),
                     block("fd7a:bb1e:1::/122", "node-1"),
                     block("fd7a:bb1e:1::40/122", "node-3")])
    assert desired_routes(s, "node-1") == {
        Route(net("198.19.0.0/26"), "blackhole"),
        Route(net("fd7a:bb1e:1::/122"), "blackhole"),
        Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12")),
        Route(net("fd7a:bb1e:1::40/122"), "unicast", addr("fd7a:bb1e::13")),
    }
    assert desired_routes(s, "node-2") == {
        Route(net("198.19.0.64/26"), "blackhole"),
        Route(net("198.19.0.0/26"), "unicast", addr("198.18.0.11")),
        Route(net("fd7a:bb1e:1::/122"), "unicast", addr("fd7a:bb1e::11")),
        Route(net("fd7a:bb1e:1::40/122"), "unicast", addr("fd7a:bb1e::13")),
    }


def test_remote_node_without_address_of_family_gets_no_route() -> None:
    nodes = (node("node-1", "198.18.0.11/24", "fd7a:bb1e::11/64"),
             node("node-2", "198.18.0.12/24"))  # no IPv6 address
    s = snap(nodes=nodes, blocks=[block("198.19.0.64/26", "node-2"),
                                  block("fd7a:bb1e:1::40/122", "node-2")])
    assert desired_routes(s, "node-1") == {
        Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12"))}


def test_block_of_unknown_node_gets_no_route() -> None:
    s = snap(blocks=[block("198.19.0.128/26", "node-9")])
    assert desired_routes(s, "node-1") == frozenset()


def test_block_without_affinity_or_deleted_gives_nothing() -> None:
    s = snap(blocks=[block("198.19.0.0/26", None), block("198.19.0.64/26", "node-1",
                                                          deleted=True)])
    assert desired_routes(s, "node-1") == frozenset()


def test_remote_node_sharing_our_address_is_ignored() -> None:
    nodes = (node("node-1", "198.18.0.11/24"), node("node-2", "198.18.0.11/24"))
    s = snap(nodes=nodes, blocks=[block("198.19.0.64/26", "node-2")])
    assert desired_routes(s, "node-1") == frozenset()


def test_borrowed_address_routed_via_holder_on_owner_and_others() -> None:
    # node-3 borrowed ordinal 5 of node-1's block for one of its pods.
    blk = block("198.19.0.0/26", "node-1", {1: "node-1", 5: "node-3"})
    s = snap(blocks=[blk], endpoints=[
        wep("node-1", "a", "tab000000000001", "198.19.0.1/32"),
        wep("node-3", "b", "tab000000000005", "198.19.0.5/32")])
    borrowed = Route(net("198.19.0.5/32"), "unicast", addr("198.18.0.13"))
    on_owner = desired_routes(s, "node-1")
    assert borrowed in on_owner  # more specific than the owner's own blackhole
    assert Route(net("198.19.0.0/26"), "blackhole") in on_owner
    assert Route(net("198.19.0.1/32"), "unicast", None, "tab000000000001") in on_owner
    on_other = desired_routes(s, "node-2")
    assert on_other == {Route(net("198.19.0.0/26"), "unicast", addr("198.18.0.11")), borrowed}
    on_holder = desired_routes(s, "node-3")
    assert on_holder == {Route(net("198.19.0.0/26"), "unicast", addr("198.18.0.11")),
                         Route(net("198.19.0.5/32"), "unicast", None, "tab000000000005")}


def test_borrowed_ipv6_address_uses_128() -> None:
    blk = block("fd7a:bb1e:1::/122", "node-1", {3: "node-2"})
    s = snap(blocks=[blk])
    assert Route(net("fd7a:bb1e:1::3/128"), "unicast", addr("fd7a:bb1e::12")) in \
        desired_routes(s, "node-1")


def test_borrowed_from_unaffine_block_routed_everywhere_but_holder() -> None:
    blk = block("198.19.0.0/26", None, {7: "node-2"})
    s = snap(blocks=[blk])
    route = Route(net("198.19.0.7/32"), "unicast", addr("198.18.0.12"))
    assert desired_routes(s, "node-1") == {route}
    assert desired_routes(s, "node-3") == {route}
    assert desired_routes(s, "node-2") == frozenset()


def test_borrowed_by_node_without_address_gets_no_route() -> None:
    nodes = (*NODES, node("node-4"))
    s = snap(nodes=nodes, blocks=[block("198.19.0.0/26", "node-1", {9: "node-4"})])
    assert desired_routes(s, "node-1") == {Route(net("198.19.0.0/26"), "blackhole")}


def test_allocation_without_node_attribute_is_not_borrowed() -> None:
    manifest = block("198.19.0.0/26", "node-1", {2: "node-2"}).to_manifest()
    manifest["spec"]["attributes"][0]["secondary"] = {}
    s = snap(blocks=[IPAMBlock.from_manifest(manifest)])
    assert desired_routes(s, "node-1") == {Route(net("198.19.0.0/26"), "blackhole")}


def test_local_endpoint_wins_over_conflicting_allocation_data() -> None:
    # Stale attrs claim node-2 holds .5, but node-1 runs the endpoint with it.
    s = snap(blocks=[block("198.19.0.0/26", "node-1", {5: "node-2"})],
             endpoints=[wep("node-1", "a", "tab000000000005", "198.19.0.5/32")])
    routes = desired_routes(s, "node-1")
    assert Route(net("198.19.0.5/32"), "unicast", None, "tab000000000005") in routes
    assert sum(1 for r in routes if r.dst == net("198.19.0.5/32")) == 1


def test_each_destination_appears_once_with_duplicate_endpoints() -> None:
    s = snap(endpoints=[wep("node-1", "a", "tab00000000000b", "198.19.0.9/32"),
                        wep("node-1", "b", "tab00000000000a", "198.19.0.9/32")])
    routes = desired_routes(s, "node-1")
    assert routes == {Route(net("198.19.0.9/32"), "unicast", None, "tab00000000000a")}


def test_remote_block_routes_is_separately_callable() -> None:
    s = snap(blocks=[block("198.19.0.64/26", "node-2")])
    assert remote_block_routes(s, "node-1") == [
        Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12"))]


def test_order_of_inputs_does_not_matter() -> None:
    blocks = [block("198.19.0.0/26", "node-1", {3: "node-2"}), block("198.19.0.64/26", "node-2"),
              block("fd7a:bb1e:1::/122", "node-3", {1: "node-1"})]
    endpoints = [wep("node-1", f"p{i}", f"tab00000000000{i}", f"198.19.1.{i}/32")
                 for i in range(5)]
    expected = desired_routes(snap(blocks=blocks, endpoints=endpoints), "node-1")
    rng = random.Random(7)
    for _ in range(10):
        rng.shuffle(blocks)
        rng.shuffle(endpoints)
        nodes = list(NODES)
        rng.shuffle(nodes)
        assert desired_routes(snap(nodes=nodes, blocks=blocks, endpoints=endpoints),
                              "node-1") == expected


def test_replaying_updates_matches_from_scratch() -> None:
    """No hysteresis: what matters is the final snapshot, not the path to it."""
    steps = [
        snap(blocks=[block("198.19.0.0/26", "node-1")]),
        snap(blocks=[block("198.19.0.0/26", "node-1"), block("198.19.0.64/26", "node-2")]),
        snap(blocks=[block("198.19.0.64/26", "node-2")],
             endpoints=[wep("node-1", "a", "tab000000000001", "198.19.0.70/32")]),
    ]
    results = [desired_routes(s, "node-1") for s in steps]
    assert results[-1] == desired_routes(steps[-1], "node-1")
    assert Route(net("198.19.0.0/26"), "blackhole") not in results[-1]


@pytest.mark.parametrize("route, text", [
    (Route(net("198.19.0.0/26"), "blackhole"), "blackhole 198.19.0.0/26"),
    (Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12")),
     "198.19.0.64/26 via 198.18.0.12"),
    (Route(net("fd7a:bb1e:1::1/128"), "unicast", None, "tab1"), "fd7a:bb1e:1::1/128 dev tab1"),
])
def test_route_text(route: Route, text: str) -> None:
    assert str(route) == text


def test_sort_key_orders_mixed_families() -> None:
    routes = [Route(net("fd7a:bb1e:2::/64"), "blackhole"),
              Route(net("198.19.0.0/26"), "blackhole"), Route(net("198.18.0.0/24"), "blackhole")]
    assert [str(r.dst) for r in sorted(routes, key=route_sort_key)] == [
        "198.18.0.0/24", "198.19.0.0/26", "fd7a:bb1e:2::/64"]
