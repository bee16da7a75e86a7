"""desired_bird: settings, origins, kernel pools and peers as values (the text is golden-tested)."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from tabby.calc.bird import (
    GLOBAL,
    MESH,
    NODE_SPECIFIC,
    RR_CLIENT,
    BirdConfig,
    desired_bird,
    settings,
)
from tabby.calc.routes import desired_routes
from tabby.model import IPAMBlock, Node, Resource, block_name, parse_manifest
from tabby.snapshot import Snapshot

net = ipaddress.ip_network
addr = ipaddress.ip_address


def node(name: str, v4: str | None = None, v6: str | None = None, *, labels: dict[str, str]
         | None = None, asn: int | None = None, rr: str = "") -> Node:
    bgp: dict[str, Any] = {}
    if v4:
        bgp["ipv4Address"] = v4
    if v6:
        bgp["ipv6Address"] = v6
    if asn is not None:
        bgp["asNumber"] = asn
    if rr:
        bgp["routeReflectorClusterID"] = rr
    return Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                               "metadata": {"name": name, "labels": labels or {}},
                               "spec": {"bgp": bgp}})


def block(cidr: str, owner: str, holders: dict[int, str] | None = None,
          deleted: bool = False) -> IPAMBlock:
    network = net(cidr)
    allocations: list[int | None] = [None] * network.num_addresses
    attributes = []
    for ordinal, holder in sorted((holders or {}).items()):
        allocations[ordinal] = len(attributes)
        attributes.append({"handle_id": f"h{ordinal}", "secondary": {"node": holder}})
    return IPAMBlock.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPAMBlock",
        "metadata": {"name": block_name(network)},
        "spec": {"cidr": cidr, "affinity": f"host:{owner}", "allocations": allocations,
                 "unallocated": [i for i, a in enumerate(allocations) if a is None],
                 "attributes": attributes, "deleted": deleted}})


def obj(kind: str, name: str, spec: dict[str, Any], api: str = "tabby.dev/v1") -> Resource:
    return parse_manifest({"apiVersion": api, "kind": kind, "metadata": {"name": name},
                           "spec": spec})


def pool(name: str, cidr: str, **spec: Any) -> Resource:
    return obj("IPPool", name, {"cidr": cidr, **spec})


NODES = [node("node-1", "198.18.0.11/24", "fd7a:bb1e::11/64"),
         node("node-2", "198.18.0.12/24", "fd7a:bb1e::12/64"),
         node("node-3", "198.18.1.13/24")]
POOLS = [pool("v4", "198.19.0.0/16"), pool("v6", "fd7a:bb1e:1::/48")]


def snap(*others: Resource, nodes: list[Node] | None = None, blocks: list[IPAMBlock]
         | None = None, pools: list[Resource] | None = None) -> Snapshot:
    return Snapshot.build(nodes=NODES if nodes is None else nodes, blocks=blocks or [],
                          others=[*(POOLS if pools is None else pools), *others])


def peers(c: BirdConfig) -> list[tuple[str, str, str]]:
    return [(p.name, p.type, str(p.address)) for p in c.peers]


def test_defaults_are_calicos() -> None:
    s = settings(snap(), "node-1")
    assert (s.as_number, s.mesh, s.listen_port, s.log_severity) == (64512, True, 179, "Info")


def test_node_configuration_overrides_the_default() -> None:
    s = settings(snap(obj("BGPConfiguration", "default", {"listenPort": 1790,
                                                          "logSeverityScreen": "Error",
                                                          "asNumber": 65001}),
                      obj("BGPConfiguration", "node.node-1", {"logSeverityScreen": "Debug"})),
                 "node-1")
    assert (s.as_number, s.listen_port, s.log_severity) == (65001, 1790, "Debug")


def test_mesh_peers_every_other_node_in_each_shared_family() -> None:
    c = desired_bird(snap(), "node-1")
    assert peers(c) == [("Mesh_198_18_0_12", MESH, "198.18.0.12"),
                        ("Mesh_198_18_1_13", MESH, "198.18.1.13"),
                        ("Mesh_fd7a_bb1e__12", MESH, "fd7a:bb1e::12")]
    direct = {str(p.address): p.direct for p in c.peers}
    assert direct == {"198.18.0.12": True, "198.18.1.13": False, "fd7a:bb1e::12": True}
    assert all(p.local_address == addr("198.18.0.11") for p in c.peers if p.version == 4)
    assert c.router_id == addr("198.18.0.11") and c.families == (4, 6)
    assert desired_bird(snap(obj("BGPConfiguration", "default", {
        "nodeToNodeMeshEnabled": False})), "node-1").peers == ()


def test_origins_blocks_borrowed_and_services() -> None:
    blocks = [block("198.19.0.0/26", "node-1"),
              block("198.19.0.64/26", "node-2", {0: "node-2", 3: "node-1"}),
              block("198.19.0.128/26", "node-1", deleted=True),
              block("198.20.0.0/26", "node-1"),  # in no pool: not exported
              block("fd7a:bb1e:1::/122", "node-1")]
    conf = obj("BGPConfiguration", "default", {
        "serviceClusterIPs": [{"cidr": "198.18.128.0/20"}],
        "communities": [{"name": "c", "value": "65000:7"}],
        "prefixAdvertisements": [{"cidr": "198.19.0.0/25", "communities": ["c"]}]})
    c = desired_bird(snap(conf, blocks=blocks), "node-1")
    assert [(str(o.net), o.why) for o in c.origins] == [
        ("198.18.128.0/20", "service cluster IPs"),
        ("198.19.0.0/26", "block affine to node-1"),
        ("198.19.0.67/32", "borrowed from 198.19.0.64/26 (node-2)"),
        ("fd7a:bb1e:1::/122", "block affine to node-1")]
    assert [[str(x) for x in o.communities] for o in c.origins] == [[], ["65000:7"],
                                                                    ["65000:7"], []]
    other = desired_bird(snap(conf, blocks=blocks), "node-2")
    assert [str(o.net) for o in other.origins] == ["198.18.128.0/20", "198.19.0.64/26"]


def test_disabled_export_and_vxlan_pools() -> None:
    pools = [pool("routed", "198.19.0.0/18"),
             pool("private", "198.19.64.0/18", disableBGPExport=True),
             pool("tunnel", "198.19.128.0/18", vxlanMode="Always")]
    blocks = [block("198.19.64.0/26", "node-1"), block("198.19.128.0/26", "node-1"),
              block("198.19.64.64/26", "node-2", {1: "node-1"})]
    c = desired_bird(snap(blocks=blocks, pools=pools), "node-1")
    assert [str(o.net) for o in c.origins] == ["198.19.128.0/26"]
    assert [str(p) for p in c.kernel_pools] == ["198.19.0.0/18", "198.19.64.0/18"]


def test_explicit_peers_beat_the_mesh_and_node_specific_beats_global() -> None:
    c = desired_bird(snap(
        obj("BGPPeer", "b-global", {"peerIP": "198.18.0.12", "asNumber": 64512,
                                    "password": {"value": "g"}}),
        obj("BGPPeer", "a-mine", {"node": "node-1", "peerIP": "198.18.0.12",
                                  "asNumber": 64512, "password": {"value": "n"}}),
        obj("BGPPeer", "tor", {"peerIP": "198.18.0.1", "asNumber": 65000})), "node-1")
    by_address = {str(p.address): p for p in c.peers}
    assert (by_address["198.18.0.12"].type, by_address["198.18.0.12"].password) == (
        NODE_SPECIFIC, "n")
    assert by_address["198.18.0.1"].type == GLOBAL
    assert by_address["198.18.0.1"].name == "Global_198_18_0_1"
    assert c.notes == ("BGPPeer/b-global: 198.18.0.12 is already a peer (from"
                       " BGPPeer/a-mine); left out",)


def test_route_reflectors_are_selected_both_ways() -> None:
    nodes = [node("node-1", "198.18.0.11/24", labels={"rr": "y"}, rr="244.0.0.1"),
             node("node-2", "198.18.0.12/24"), node("node-3", "198.18.0.13/24"),
             node("node-4", "198.18.0.14/24", labels={"rr": "y"}, rr="244.0.0.1")]
    s = snap(obj("BGPConfiguration", "default", {"nodeToNodeMeshEnabled": False}),
             obj("BGPPeer", "to-rr", {"nodeSelector": "all()", "peerSelector": "rr == 'y'"},
                 api="projectcalico.org/v3"), nodes=nodes)
    reflector = desired_bird(s, "node-1")
    assert [(str(p.address), p.type, p.rr_client) for p in reflector.peers] == [
        ("198.18.0.12", RR_CLIENT, True), ("198.18.0.13", RR_CLIENT, True),
        ("198.18.0.14", NODE_SPECIFIC, False)]  # the same cluster: not a client
    assert reflector.cluster_id == addr("244.0.0.1")
    client = desired_bird(s, "node-2")
    assert [(str(p.address), p.rr_client) for p in client.peers] == [
        ("198.18.0.11", False), ("198.18.0.14", False)]
    assert client.cluster_id is None


def test_node_as_numbers_and_listen_ports() -> None:
    nodes = [node("node-1", "198.18.0.11/24", asn=65101), node("node-2", "198.18.0.12/24")]
    c = desired_bird(snap(obj("BGPConfiguration", "node.node-2", {"listenPort": 1790}),
                          nodes=nodes), "node-1")
    assert c.as_number == 65101
    (peer,) = c.peers
    assert (peer.as_number, peer.port, peer.name) == (64512, 1790, "Mesh_198_18_0_12_port_1790")
    other = desired_bird(snap(obj("BGPConfiguration", "node.node-2", {"listenPort": 1790}),
                              nodes=nodes), "node-2")
    assert other.listen_port == 1790 and other.peers[0].as_number == 65101


def test_peer_options_and_left_out_peers() -> None:
    c = desired_bird(snap(
        obj("BGPPeer", "far", {"peerIP": "198.18.7.1:1790", "asNumber": 65007,
                               "sourceAddress": "None", "keepOriginalNextHop": True,
                               "maxRestartTime": "5m", "numAllowedLocalASNumbers": 2}),
        obj("BGPPeer", "me", {"peerIP": "198.18.0.11", "asNumber": 64512}),
        obj("BGPPeer", "v6", {"peerIP": "fd7a:bb1e::1", "asNumber": 65000}),
        nodes=[node("node-1", "198.18.0.11/24")]), "node-1")
    (peer,) = c.peers
    assert (peer.port, peer.local_address, peer.direct, peer.keep_next_hop,
            peer.restart_time, peer.allow_local_as) == (1790, None, False, True, 300, 2)
    assert c.notes == ("BGPPeer/me: 198.18.0.11 is node-1's own address; left out",
                       "BGPPeer/v6: node-1 has no IPv6 address; fd7a:bb1e::1 left out")


def test_passwords_from_secrets() -> None:
    secret = parse_manifest({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "bgp", "namespace": "tabby-system"}, "stringData": {"mesh": "m3sh"}})
    elsewhere = parse_manifest({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "other", "namespace": "default"}, "stringData": {"k": "v"}})
    c = desired_bird(snap(secret, elsewhere, obj("BGPConfiguration", "default", {
        "nodeMeshPassword": {"secretKeyRef": {"name": "bgp", "key": "mesh"}}}),
        obj("BGPPeer", "a", {"peerIP": "198.18.0.1", "asNumber": 1,
                             "password": {"secretKeyRef": {"name": "bgp", "key": "nope"}}}),
        obj("BGPPeer", "b", {"peerIP": "198.18.0.2", "asNumber": 1,
                             "password": {"secretKeyRef": {"name": "other", "key": "k"}}})),
        "node-1")
    by_address = {str(p.address): p for p in c.peers}
    assert by_address["198.18.0.12"].password == "m3sh"
    assert by_address["198.18.0.1"].disabled == \
        "its password's Secret tabby-system/bgp has no key 'nope'"
    assert by_address["198.18.0.2"].disabled == \
        "its password's Secret tabby-system/other does not exist"


def test_missing_node_means_no_bgp() -> None:
    c = desired_bird(snap(blocks=[block("198.19.0.0/26", "node-9")]), "node-9")
    assert (c.peers, c.origins, c.families) == ((), (), ())
    assert c.notes == ("no Node object named node-9: no BGP sessions, nothing exported",)


def test_ipv6_only_router_id_is_stable_and_distinct() -> None:
    nodes = [node("node-1", v6="fd7a:bb1e::11/64"), node("node-2", v6="fd7a:bb1e::12/64")]
    a, b = (desired_bird(snap(nodes=nodes), n).router_id for n in ("node-1", "node-2"))
    assert a != b and a == desired_bird(snap(nodes=nodes), "node-1").router_id
    assert desired_bird(snap(nodes=nodes), "node-1").families == (6,)


def test_output_depends_only_on_the_inputs() -> None:
    objs: list[Resource] = [obj("BGPPeer", f"p{i}", {"peerIP": f"198.18.0.{100 + i}",
                                                      "asNumber": 65000 + i})
                            for i in range(6)]
    blocks = [block(f"198.19.{i}.0/26", f"node-{1 + i % 3}") for i in range(9)]
    want = desired_bird(snap(*objs, blocks=blocks), "node-1")
    rng = random.Random(4)
    for _ in range(5):
        rng.shuffle(objs)
        rng.shuffle(blocks)
        assert desired_bird(snap(*objs, blocks=blocks), "node-1") == want


def test_bgp_mode_leaves_remote_routes_to_bird() -> None:
    s = snap(blocks=[block("198.19.0.0/26", "node-1"), block("198.19.0.64/26", "node-2",
                                                             {5: "node-3"})])
    static = {str(r) for r in desired_routes(s, "node-1")}
    learned = {str(r) for r in desired_routes(s, "node-1", bgp=True)}
    assert static == {"blackhole 198.19.0.0/26", "198.19.0.64/26 via 198.18.0.12",
                      "198.19.0.69/32 via 198.18.1.13"}
    assert learned == {"blackhole 198.19.0.0/26"}  # the agent keeps the local blackhole
