"""BGPFilter and BFD: Calico's fields and errors with paths, which sessions get them, and
the BIRD text of each criterion and operation (the whole file is golden-tested)."""

from __future__ import annotations

from typing import Any

import pytest

from tabby.bgp.config import render
from tabby.bgp.filters import function_name
from tabby.calc.bird import MESH, desired_bird
from tabby.errors import ValidationError
from tabby.model import BGPConfiguration, BGPFilter, BGPPeer, parse_manifest, resolve_kind
from tabby.model.bgpfields import BFD
from tests.unit.test_calc_bird import NODES, obj, snap


def doc(kind: str, spec: dict[str, Any], name: str = "f", api: str = "projectcalico.org/v3"
        ) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, "spec": spec}


def errors_of(d: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_manifest(d)
    return err.value.lines()


FULL = {
    "exportV4": [{"action": "Accept", "cidr": "198.19.0.0/16", "matchOperator": "In",
                  "prefixLength": {"min": 26, "max": 32}, "source": "RemotePeers",
                  "interface": "eth*", "peerType": "iBGP",
                  "communities": {"values": ["65000:100"]}, "asPathPrefix": [65000, 65001],
                  "priority": 512, "operations": [
                      {"addCommunity": {"value": "65000:1:2"}},
                      {"prependASPath": {"prefix": [64512]}},
                      {"setPriority": {"value": 100}}]}],
    "importV4": [{"action": "Reject"}],
    "exportV6": [{"action": "Reject", "cidr": "fd7a:bb1e:1::/48", "matchOperator": "NotIn"}],
    "importV6": [{"action": "Accept", "cidr": "::/0", "matchOperator": "NotEqual"}],
}


def test_a_calico_bgpfilter_applies_and_round_trips() -> None:
    f = parse_manifest(doc("BGPFilter", FULL))
    assert isinstance(f, BGPFilter)
    assert resolve_kind("bgpfilters") is BGPFilter
    assert f.to_manifest()["spec"] == FULL
    again = parse_manifest(f.to_manifest())
    assert again == f
    assert [r.action for r in f.spec.rules("import", 4)] == ["Reject"]


@pytest.mark.parametrize(("spec", "path", "words"), [
    ({"exportV4": [{"action": "Accept", "cidr": "fd00::/8", "matchOperator": "In"}]},
     "spec.exportV4[0].cidr", "not an IPv4 CIDR"),
    ({"importV6": [{"action": "Accept", "cidr": "fd00::/8"}]},
     "spec.importV6[0].matchOperator", "both be set"),
    ({"importV4": [{"action": "Accept", "matchOperator": "In"}]},
     "spec.importV4[0].cidr", "both be set"),
    ({"importV4": [{"cidr": "10.0.0.0/8", "matchOperator": "In"}]},
     "spec.importV4[0].action", "is required"),
    ({"importV4": [{"action": "Drop"}]}, "spec.importV4[0].action", "not one of"),
    ({"exportV4": [{"action": "Accept", "prefixLength": {"min": 8}}]},
     "spec.exportV4[0].prefixLength", "needs cidr"),
    ({"exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "In",
                    "prefixLength": {"max": 33}}]},
     "spec.exportV4[0].prefixLength.max", "outside 0..32"),
    ({"exportV6": [{"action": "Accept", "cidr": "fd00::/8", "matchOperator": "In",
                    "prefixLength": {"min": 64, "max": 48}}]},
     "spec.exportV6[0].prefixLength", "greater than max"),
    ({"exportV4": [{"action": "Accept", "interface": 'eth"0'}]},
     "spec.exportV4[0].interface", "up to 15"),
    ({"exportV4": [{"action": "Reject", "operations": [{"setPriority": {"value": 5}}]}]},
     "spec.exportV4[0].operations", "only be used with action Accept"),
    ({"exportV4": [{"action": "Accept", "operations": [
        {"setPriority": {"value": 5}, "addCommunity": {"value": "1:2"}}]}]},
     "spec.exportV4[0].operations[0]", "exactly one"),
    ({"exportV4": [{"action": "Accept", "communities": {"values": ["1:2", "3:4"]}}]},
     "spec.exportV4[0].communities.values", "exactly one"),
    ({"exportV4": [{"action": "Accept", "asPathPrefix": ["x"]}]},
     "spec.exportV4[0].asPathPrefix[0]", "not an AS number"),
    ({"exportV4": [{"action": "Accept", "peerType": "IBGP"}]},
     "spec.exportV4[0].peerType", "not one of"),
    ({"exportV4": [{"action": "Accept", "sources": "RemotePeers"}]},
     "spec.exportV4[0].sources", "did you mean source"),
])
def test_bad_rules_are_refused_with_the_field_path(spec: dict[str, Any], path: str,
                                                    words: str) -> None:
    lines = errors_of(doc("BGPFilter", spec))
    assert any(f"{path}: " in line and words in line for line in lines), lines


def test_bgppeer_filters_and_bfd_fields() -> None:
    peer = parse_manifest(doc("BGPPeer", {"peerIP": "198.18.0.1", "asNumber": 65000,
                                          "filters": ["a", "b"],
                                          "bfd": {"minRxInterval": "0.25s"}}))
    assert isinstance(peer, BGPPeer)
    assert peer.spec.filters == ("a", "b")
    assert peer.spec.bfd == BFD(min_rx_ms=250)
    assert parse_manifest(peer.to_manifest()) == peer
    lines = errors_of(doc("BGPPeer", {"peerIP": "198.18.0.1", "asNumber": 65000,
                                      "filters": ["Not_A_Name"],
                                      "bfd": {"multiplier": 0, "minTxInterval": "2 s"}}))
    assert any(line.startswith("BGPPeer/f: spec.filters[0]: ") for line in lines), lines
    assert any(line.startswith("BGPPeer/f: spec.bfd.multiplier: ") for line in lines), lines
    assert any(line.startswith("BGPPeer/f: spec.bfd.minTxInterval: ") for line in lines), lines


def test_mesh_bfd_is_cluster_wide() -> None:
    conf = parse_manifest(doc("BGPConfiguration", {"nodeToNodeMeshBFD": {"multiplier": 4}},
                              "default"))
    assert isinstance(conf, BGPConfiguration)
    assert conf.spec.node_mesh_bfd == BFD(multiplier=4)
    lines = errors_of(doc("BGPConfiguration", {"nodeToNodeMeshBFD": {}}, "node.node-1"))
    assert any("spec.nodeToNodeMeshBFD: is cluster-wide" in line for line in lines)


def test_filters_apply_to_explicit_peers_only_and_missing_ones_are_noted() -> None:
    c = desired_bird(snap(
        obj("BGPFilter", "a", {"exportV4": [{"action": "Reject"}]}),
        obj("BGPFilter", "unused", {"exportV4": [{"action": "Reject"}]}),
        obj("BGPPeer", "tor", {"peerIP": "198.18.0.1", "asNumber": 65000,
                               "filters": ["gone", "a"]})), "node-1")
    by_type = {p.type: p for p in c.peers}
    assert by_type[MESH].filters == ()
    assert by_type["global"].filters == ("a",)
    assert [f.meta.name for f in c.filters] == ["a"]
    assert "BGPPeer/tor: BGPFilter gone does not exist; skipped for 198.18.0.1" in c.notes


def test_filters_follow_a_peer_selector_both_ways() -> None:
    c = desired_bird(snap(
        obj("BGPFilter", "a", {"importV6": [{"action": "Reject"}]}),
        obj("BGPConfiguration", "default", {"nodeToNodeMeshEnabled": False}),
        obj("BGPPeer", "n1-to-all", {"node": "node-1", "peerSelector": "all()",
                                     "filters": ["a"]}), nodes=NODES), "node-2")
    assert {(str(p.address), p.filters) for p in c.peers} == {
        ("198.18.0.11", ("a",)), ("fd7a:bb1e::11", ("a",))}


def test_bfd_on_the_mesh_and_per_peer() -> None:
    c = desired_bird(snap(
        obj("BGPConfiguration", "default", {"nodeToNodeMeshBFD": {"minTxInterval": "50ms"}}),
        obj("BGPPeer", "tor", {"peerIP": "198.18.0.1", "asNumber": 65000,
                               "bfd": {"enabled": False}}),
        obj("BGPPeer", "v6", {"peerIP": "fd7a:bb1e::1", "asNumber": 65000, "bfd": {}})),
        "node-1")
    bfd = {str(p.address): p.bfd for p in c.peers}
    assert bfd == {"198.18.0.1": None, "198.18.0.12": BFD(min_tx_ms=50),
                   "198.18.1.13": BFD(min_tx_ms=50), "fd7a:bb1e::1": BFD(),
                   "fd7a:bb1e::12": BFD(min_tx_ms=50)}
    text = render(c)
    assert text.count("protocol bfd tabby_bfd {") == 1
    assert "bfd { min rx interval 100 ms; min tx interval 50 ms; multiplier 3; };" in text
    plain = render(desired_bird(snap(), "node-1"))
    assert "bfd" not in plain


def rendered_rule(rule: dict[str, Any], direction: str = "export") -> str:
    c = desired_bird(snap(
        obj("BGPFilter", "f", {f"{direction}V4": [rule]}),
        obj("BGPPeer", "tor", {"peerIP": "198.18.0.1", "asNumber": 65000, "filters": ["f"]})),
        "node-1")
    text = render(c)
    head = f"function 'bgp_f_{direction}FilterV4'"
    return text.split(head, 1)[1].splitlines()[1].strip()


@pytest.mark.parametrize(("rule", "bird"), [
    ({"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "Equal"},
     "if ((net = 10.0.0.0/8)) then { accept; }"),
    ({"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "NotEqual"},
     "if ((net != 10.0.0.0/8)) then { accept; }"),
    ({"action": "Reject", "cidr": "10.0.0.0/8", "matchOperator": "In"},
     "if ((net ~ 10.0.0.0/8)) then { reject; }"),
    ({"action": "Reject", "cidr": "10.0.0.0/8", "matchOperator": "NotIn",
      "prefixLength": {"max": 24}}, "if ((net !~ [ 10.0.0.0/8{8,24} ])) then { reject; }"),
    ({"action": "Reject", "cidr": "10.0.0.0/8", "matchOperator": "In",
      "prefixLength": {"min": 4}}, "if ((net ~ [ 10.0.0.0/8{8,32} ])) then { reject; }"),
    ({"action": "Accept", "source": "RemotePeers"},
     "if (((defined(source))&&(source ~ [ RTS_BGP ]))) then { accept; }"),
    ({"action": "Accept", "communities": {"values": ["1:2:3"]}},
     "if (((1, 2, 3) ~ bgp_large_community)) then { accept; }"),
    ({"action": "Accept", "operations": [{"prependASPath": {"prefix": [1, 2]}}]},
     "bgp_path.prepend(2); bgp_path.prepend(1); accept;"),
    ({"action": "Accept", "peerType": "eBGP"}, "if (!is_same_as) then { accept; }"),
])
def test_each_criterion_renders_as_calico_renders_it(rule: dict[str, Any], bird: str) -> None:
    assert rendered_rule(rule) == bird


def test_peer_type_picks_ibgp_or_ebgp_by_the_peers_as() -> None:
    c = desired_bird(snap(
        obj("BGPFilter", "f", {"importV4": [{"action": "Reject", "peerType": "iBGP"}]}),
        obj("BGPPeer", "ibgp", {"peerIP": "198.18.0.1", "asNumber": 64512, "filters": ["f"]}),
        obj("BGPPeer", "ebgp", {"peerIP": "198.18.0.2", "asNumber": 65000, "filters": ["f"]})),
        "node-1")
    text = render(c)
    assert "function 'bgp_f_importFilterV4'(bool is_same_as) {" in text
    ibgp, ebgp = text.split("neighbor 198.18.0.1")[1], text.split("neighbor 198.18.0.2")[1]
    assert "'bgp_f_importFilterV4'(true);" in ibgp.split("protocol bgp")[0]
    assert "'bgp_f_importFilterV4'(false);" in ebgp.split("protocol bgp")[0]


def test_long_filter_names_fit_birds_symbols() -> None:
    name = "a" * 200
    short = function_name(name, "import", 6)
    assert len(short) - 2 <= 64 and short != function_name("a" * 199, "import", 6)
    assert function_name("x-y.z", "export", 4) == "'bgp_x-y.z_exportFilterV4'"
