"""BGPConfiguration, BGPPeer and Secret: Calico's v3 fields, defaults, errors with field paths."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tabby.errors import ValidationError
from tabby.model import BGPConfiguration, BGPPeer, Secret, parse_manifest, resolve_kind
from tabby.model.bgppeer import format_peer_ip, parse_peer_ip


def doc(kind: str, spec: dict[str, Any], name: str = "x", api: str = "tabby.dev/v1"
        ) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, "spec": spec}


def errors_of(d: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_manifest(d)
    return err.value.lines()


def test_calico_manifests_apply_with_either_api_version() -> None:
    for api in ("projectcalico.org/v3", "tabby.dev/v1"):
        conf = parse_manifest(doc("BGPConfiguration", {"asNumber": 65001}, "default", api))
        peer = parse_manifest(doc("BGPPeer", {"peerIP": "198.18.0.1", "asNumber": 65000},
                                  api=api))
        assert isinstance(conf, BGPConfiguration) and isinstance(peer, BGPPeer)
        assert conf.to_manifest()["apiVersion"] == "tabby.dev/v1"
    assert resolve_kind("bgppeers") is BGPPeer
    assert resolve_kind("bgpconfiguration.projectcalico.org") is BGPConfiguration


def test_bgpconfiguration_leaves_unset_fields_unset() -> None:
    conf = parse_manifest(doc("BGPConfiguration", {}, "default"))
    assert isinstance(conf, BGPConfiguration)
    s = conf.spec
    assert (s.as_number, s.node_to_node_mesh, s.listen_port, s.log_severity) == (
        None, None, None, None)
    assert conf.to_manifest()["spec"] == {} and conf.node is None


def test_bgpconfiguration_round_trips() -> None:
    spec = {"asNumber": 65001, "nodeToNodeMeshEnabled": False, "listenPort": 1790,
            "logSeverityScreen": "Debug",
            "serviceClusterIPs": [{"cidr": "198.18.128.0/20"}],
            "serviceExternalIPs": [{"cidr": "fd7a:bb1e:2::/112"}],
            "serviceLoadBalancerIPs": [{"cidr": "198.18.145.0/24"}],
            "communities": [{"name": "a", "value": "65000:100"},
                            {"name": "big", "value": "65000:1:2"}],
            "prefixAdvertisements": [{"cidr": "198.19.0.0/16", "communities": ["a", "1:2"]}],
            "nodeMeshPassword": {"secretKeyRef": {"name": "s", "key": "k"}},
            "nodeMeshMaxRestartTime": "2m"}
    conf = parse_manifest(doc("BGPConfiguration", spec, "default"))
    assert isinstance(conf, BGPConfiguration)
    assert conf.spec.node_mesh_max_restart_time == 120
    assert [str(c) for c in conf.spec.prefix_advertisements[0].communities] == ["65000:100",
                                                                                "1:2"]
    again = conf.to_manifest()["spec"]
    assert again == {**spec, "nodeMeshMaxRestartTime": "120s"}


@pytest.mark.parametrize(("name", "spec", "line"), [
    ("bogus", {}, "BGPConfiguration/bogus: metadata.name: 'bogus': a BGPConfiguration is named"
                  " 'default' (cluster-wide) or 'node.<node name>'"),
    ("node.node-1", {"asNumber": 65001},
     "BGPConfiguration/node.node-1: spec.asNumber: is cluster-wide: set it on"
     " BGPConfiguration/default"),
    ("node.node-1", {"serviceClusterIPs": [{"cidr": "198.18.128.0/20"}]},
     "BGPConfiguration/node.node-1: spec.serviceClusterIPs: is cluster-wide: set it on"
     " BGPConfiguration/default"),
    ("default", {"asNumber": 0}, "BGPConfiguration/default: spec.asNumber: 0 is outside"
                                 " 1..4294967295"),
    ("default", {"listenPort": 70000}, "BGPConfiguration/default: spec.listenPort: 70000 is"
                                       " outside 1..65535"),
    ("default", {"logSeverityScreen": "Loud"}, "BGPConfiguration/default:"
     " spec.logSeverityScreen: 'Loud' is not one of Debug, Info, Warning, Error, Fatal"),
    ("default", {"serviceClusterIPs": [{"cidr": "198.18.128.1/20"}]},
     "BGPConfiguration/default: spec.serviceClusterIPs[0].cidr: '198.18.128.1/20' is not a CIDR"
     " (without host bits)"),
    ("default", {"communities": [{"name": "a", "value": "70000:1"}]},
     "BGPConfiguration/default: spec.communities[0].value: '70000:1': each part must be within"
     " 0..65535"),
    ("default", {"prefixAdvertisements": [{"cidr": "198.19.0.0/16", "communities": ["nope"]}]},
     "BGPConfiguration/default: spec.prefixAdvertisements[0].communities[0]: 'nope' is neither"
     " a defined community name nor a value (aa:nn or aa:nn:mm)"),
    ("default", {"nodeMeshMaxRestartTime": "2 minutes"},
     "BGPConfiguration/default: spec.nodeMeshMaxRestartTime: '2 minutes' is not a duration"
     " (e.g. 120s, 2m, 1h30m)"),
    ("default", {"nodeMeshMaxRestartTime": "2h"},
     "BGPConfiguration/default: spec.nodeMeshMaxRestartTime: '2h' is outside 1s..4095s"),
    ("default", {"nodeToNodeMeshEnabed": False},
     "BGPConfiguration/default: spec.nodeToNodeMeshEnabed: unknown field (did you mean"
     " nodeToNodeMeshEnabled?)"),
])
def test_bgpconfiguration_errors_name_the_field(name: str, spec: dict[str, Any],
                                                line: str) -> None:
    assert line in errors_of(doc("BGPConfiguration", spec, name))


def test_per_node_configuration_knows_its_node() -> None:
    conf = parse_manifest(doc("BGPConfiguration", {"listenPort": 1790}, "node.node-2"))
    assert isinstance(conf, BGPConfiguration) and conf.node == "node-2"


@pytest.mark.parametrize(("text", "parsed"), [
    ("198.18.0.1", ("198.18.0.1", None)), ("198.18.0.1:1790", ("198.18.0.1", 1790)),
    ("fd7a:bb1e::1", ("fd7a:bb1e::1", None)), ("[fd7a:bb1e::1]:1790", ("fd7a:bb1e::1", 1790)),
    ("[fd7a:bb1e::1]", ("fd7a:bb1e::1", None)),
])
def test_peer_ip_forms(text: str, parsed: tuple[str, int | None]) -> None:
    result = parse_peer_ip(text)
    assert not isinstance(result, str)
    assert (str(result[0]), result[1]) == parsed
    ip = ipaddress.ip_address(parsed[0])
    assert parse_peer_ip(format_peer_ip(ip, parsed[1])) == result


@pytest.mark.parametrize(("text", "problem"), [
    ("198.18.0.1:", "the port after ':' is missing"),
    ("198.18.0.1:0", "port '0' is outside 1..65535"),
    ("[fd7a::1]:99999", "port '99999' is outside 1..65535"),
    ("[fd7a::1", "needs the closing bracket"),
    ("[198.18.0.1]:179", "brackets are for IPv6 addresses"),
    ("router.example", "is not an IP address"),
])
def test_bad_peer_ips(text: str, problem: str) -> None:
    result = parse_peer_ip(text)
    assert isinstance(result, str) and problem in result


def test_bgppeer_fields() -> None:
    peer = parse_manifest(doc("BGPPeer", {
        "node": "node-1", "peerIP": "[fd7a:bb1e::1]:1790", "asNumber": 65000,
        "password": {"value": "s3cret"}, "keepOriginalNextHop": True, "sourceAddress": "None",
        "maxRestartTime": "90s", "numAllowedLocalASNumbers": 1}))
    assert isinstance(peer, BGPPeer)
    s = peer.spec
    assert (str(s.peer_ip), s.peer_port, s.as_number, s.max_restart_time) == (
        "fd7a:bb1e::1", 1790, 65000, 90)
    assert s.password is not None and s.password.inline and s.password.value == "s3cret"
    assert not peer.is_global and peer.applies_to("node-1", {})
    assert not peer.applies_to("node-2", {})
    assert parse_manifest(peer.to_manifest()) == peer


def test_bgppeer_selectors() -> None:
    peer = parse_manifest(doc("BGPPeer", {"nodeSelector": "rack == 'a'",
                                          "peerSelector": "has(route-reflector)"}))
    assert isinstance(peer, BGPPeer) and not peer.is_global
    assert peer.applies_to("n", {"rack": "a"}) and not peer.applies_to("n", {"rack": "b"})
    assert peer.spec.source_address == "UseNodeIP"
    everyone = parse_manifest(doc("BGPPeer", {"peerIP": "198.18.0.1", "asNumber": 1}))
    assert isinstance(everyone, BGPPeer) and everyone.is_global


@pytest.mark.parametrize(("spec", "line"), [
    ({}, "BGPPeer/x: spec: needs peerIP (an outside router) or peerSelector (other nodes)"),
    ({"peerIP": "198.18.0.1"}, "BGPPeer/x: spec.asNumber: is required with peerIP"),
    ({"peerIP": "198.18.0.1", "peerSelector": "all()", "asNumber": 1},
     "BGPPeer/x: spec.peerSelector: set either peerIP or peerSelector, not both"),
    ({"peerSelector": "all()", "asNumber": 1}, "BGPPeer/x: spec.asNumber: is taken from the"
     " selected nodes with peerSelector; leave it out"),
    ({"node": "n", "nodeSelector": "all()", "peerSelector": "all()"},
     "BGPPeer/x: spec.nodeSelector: set either node or nodeSelector, not both"),
    ({"peerSelector": "a =="}, "BGPPeer/x: spec.peerSelector: selector 'a ==': expected str,"
     " got end of input at position 4"),
    ({"peerIP": "198.18.0.1:x", "asNumber": 1},
     "BGPPeer/x: spec.peerIP: '198.18.0.1:x': port 'x' is outside 1..65535"),
    ({"peerSelector": "all()", "sourceAddress": "Auto"},
     "BGPPeer/x: spec.sourceAddress: 'Auto' is not one of UseNodeIP, None"),
    ({"peerSelector": "all()", "numAllowedLocalASNumbers": 11},
     "BGPPeer/x: spec.numAllowedLocalASNumbers: 11 is outside 0..10"),
    ({"peerSelector": "all()", "password": {}},
     "BGPPeer/x: spec.password: needs secretKeyRef: {name, key} or value (inline)"),
    ({"peerSelector": "all()", "password": {"value": "a\"b"}},
     'BGPPeer/x: spec.password.value: may hold printable ASCII only, without " and \\'),
    ({"peerSelector": "all()", "password": {"value": "x", "secretKeyRef": {"name": "s",
                                                                           "key": "k"}}},
     "BGPPeer/x: spec.password: set either value (inline) or secretKeyRef, not both"),
    ({"peerSelector": "all()", "password": {"secretKeyRef": {"name": "s"}}},
     "BGPPeer/x: spec.password.secretKeyRef.key: is required"),
    ({"peerSelector": "all()", "peerPort": 1790},
     "BGPPeer/x: spec.peerPort: unknown field (did you mean peerIP?)"),
])
def test_bgppeer_errors_name_the_field(spec: dict[str, Any], line: str) -> None:
    assert line in errors_of(doc("BGPPeer", spec))


def test_secret_data_and_string_data() -> None:
    secret = parse_manifest({"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "bgp", "namespace": "tabby-system"},
                             "data": {"a": "czNjcmV0"}, "stringData": {"b": "plain"}})
    assert isinstance(secret, Secret)
    assert (secret.text("a"), secret.text("b"), secret.text("c")) == ("s3cret", "plain", None)
    assert secret.to_manifest()["data"] == {"a": "czNjcmV0", "b": "cGxhaW4="}
    assert "Secret/tabby-system/bad: data.a: is not base64 (use stringData for plain text)" in \
        errors_of({"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "bad", "namespace": "tabby-system"}, "data": {"a": "not base64!"}})
