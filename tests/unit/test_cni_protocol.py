"""Wire codec and framing, requests, errors and result rendering per CNI version."""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tabby.cni import wire
from tabby.cni.protocol import (
    DNS,
    CNIError,
    CNIRequest,
    Interface,
    IPConfig,
    PodResult,
    Route,
    recv_frame,
    send_frame,
)
from tabby.errors import TabbyError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_codec_agrees_with_json(value: Any) -> None:
    text = wire.dumps(value)
    assert json.loads(text) == value
    assert wire.loads(text) == value
    assert wire.loads(json.dumps(value, indent=2)) == value


def test_codec_edges() -> None:
    assert wire.loads(' \n{"a": [1, 2.5e3, -0.0, "\\u00e9\\n"]}\t') == {
        "a": [1, 2500.0, -0.0, "é\n"]}
    assert wire.dumps({"s": "é\"\\"}) == '{"s":"\\u00e9\\"\\\\"}'
    assert math.isnan(wire.loads("NaN"))
    for bad in ("", "{", '{"a": 1} x', "[1,]", "nul"):
        with pytest.raises(ValueError):
            wire.loads(bad)
    with pytest.raises(TypeError):
        wire.dumps({1: "non-string key"})
    with pytest.raises(TypeError):
        wire.dumps({"a": object()})


def test_frames_round_trip_over_a_socket() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        left.settimeout(10)
        right.settimeout(10)
        big = {"config": {"pad": "x" * 300_000}}  # more than the socket buffer holds
        sender = threading.Thread(target=send_frame, args=(left, big))
        sender.start()
        assert recv_frame(right) == big
        sender.join(timeout=10)
        left.sendall(b"\x00\x00\x00\x10{}")
        left.close()
        with pytest.raises(wire.FrameError, match="closed"):
            recv_frame(right)


def test_versions() -> None:
    assert wire.version_tuple("1.1.0") > wire.version_tuple("0.4.0")
    for bad in ("1.0", "1.0.0.0", "a.b.c", "1.0.-1"):
        with pytest.raises(ValueError):
            wire.version_tuple(bad)


# --- CNIError and CNIRequest ----------------------------------------------------------


def test_cni_error_is_a_tabby_error() -> None:
    err = CNIError(11, "try again later", "no socket")
    assert isinstance(err, TabbyError)
    assert str(err) == "try again later: no socket"
    assert err.to_dict("0.4.0") == {"cniVersion": "0.4.0", "code": 11,
                                    "msg": "try again later", "details": "no socket"}
    back = CNIError.from_dict(err.to_dict("1.0.0"))
    assert (back.code, back.msg, back.details) == (11, "try again later", "no socket")
    with pytest.raises(CNIError):
        CNIError.from_dict({"code": "11", "msg": "x"})


def request_frame(**overrides: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "command": "DEL", "containerID": "c1", "netns": "", "ifname": "eth0",
        "args": {"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p", "K8S_POD_UID": "u"},
        "path": "/opt/cni/bin", "config": {"cniVersion": "0.4.0", "name": "k8s-pod-network"}}
    frame.update(overrides)
    return frame


def test_request_round_trip_and_accessors() -> None:
    req = CNIRequest.from_wire(request_frame())
    assert CNIRequest.from_wire(req.to_wire()) == req
    assert (req.cni_version, req.network_name, req.handle_id) == (
        "0.4.0", "k8s-pod-network", "k8s-pod-network.c1.eth0")
    assert (req.pod_namespace, req.pod_name, req.pod_uid) == ("ns", "p", "u")
    assert req.prev_result is None and req.prev_pod_result() is None
    assert req.runtime_config == {} and req.valid_attachments() == []


@pytest.mark.parametrize(("override", "code"), [
    ({"command": "VERSION"}, 4), ({"containerID": 5}, 6), ({"args": {"a": 1}}, 6),
    ({"config": "x"}, 6), ({"config": {"cniVersion": "0.2.0", "name": "n"}}, 1)])
def test_malformed_requests(override: dict[str, Any], code: int) -> None:
    with pytest.raises(CNIError) as info:
        CNIRequest.from_wire(request_frame(**override))
    assert info.value.code == code


def test_gc_attachments_under_either_key() -> None:
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        config = {"cniVersion": "1.1.0", "name": "n",
                  key: [{"containerID": "a", "ifname": "eth0"}]}
        req = CNIRequest("GC", config=config)
        assert req.valid_attachments() == [("a", "eth0")]
    with pytest.raises(CNIError) as info:
        CNIRequest("GC", config={"cni.dev/valid-attachments": {"a": 1}}).valid_attachments()
    assert info.value.code == 7


def test_bad_prev_result_is_a_decoding_error() -> None:
    req = CNIRequest("CHECK", config={"cniVersion": "1.0.0", "name": "n",
                                      "prevResult": {"cniVersion": "1.0.0",
                                                     "ips": [{"address": "nope"}]}})
    with pytest.raises(CNIError) as info:
        req.prev_pod_result()
    assert info.value.code == 6


# --- PodResult ------------------------------------------------------------------------

RESULT = PodResult(
    interfaces=(Interface("tab0123456789ab", "ee:ee:ee:ee:ee:ee"),
                Interface("eth0", "0a:58:00:00:00:01", "/var/run/netns/p", mtu=1450)),
    ips=(IPConfig(ipaddress.ip_interface("198.19.0.5/32"),
                  ipaddress.ip_address("169.254.1.1"), 1),
         IPConfig(ipaddress.ip_interface("fd7a:bb1e:1::5/128"), None, 1)),
    routes=(Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("169.254.1.1")),
            Route(ipaddress.ip_network("::/0"))),
    dns=DNS(nameservers=("198.18.128.10",), search=("svc.cluster.local",)))


def test_render_0_4_0_exactly() -> None:
    assert RESULT.render("0.4.0") == {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "tab0123456789ab", "mac": "ee:ee:ee:ee:ee:ee"},
                       {"name": "eth0", "mac": "0a:58:00:00:00:01",
                        "sandbox": "/var/run/netns/p"}],
        "ips": [{"version": "4", "interface": 1, "address": "198.19.0.5/32",
                 "gateway": "169.254.1.1"},
                {"version": "6", "interface": 1, "address": "fd7a:bb1e:1::5/128"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["198.18.128.10"], "search": ["svc.cluster.local"]}}


def test_render_differences_between_versions() -> None:
    r031, r100, r110 = (RESULT.render(v) for v in ("0.3.1", "1.0.0", "1.1.0"))
    assert all("version" in ip for ip in r031["ips"])
    assert not any("version" in ip for ip in r100["ips"] + r110["ips"])
    assert "mtu" not in r100["interfaces"][1] and r110["interfaces"][1]["mtu"] == 1450
    assert PodResult().render("1.0.0") == {"cniVersion": "1.0.0"}
    with pytest.raises(ValueError):
        RESULT.render("0.2.0")


@pytest.mark.parametrize("version", wire.SUPPORTED_VERSIONS)
def test_parse_what_we_render(version: str) -> None:
    parsed = PodResult.from_dict(RESULT.render(version))
    expected = RESULT if version == "1.1.0" else PodResult(
        (RESULT.interfaces[0], Interface("eth0", "0a:58:00:00:00:01", "/var/run/netns/p")),
        RESULT.ips, RESULT.routes, RESULT.dns)
    assert parsed == expected
    assert parsed.container_addresses("eth0") == RESULT.addresses()
    assert parsed.container_addresses("eth1") == ()


@pytest.mark.parametrize("bad", [
    {"cniVersion": "0.2.0"},
    {"cniVersion": "1.0.0", "ips": [{"address": "198.19.0.5/32", "interface": 3}]},
    {"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "198.19.0.5/32"}]},
    {"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]},
    {"cniVersion": "1.0.0", "routes": "none"},
    {"cniVersion": "1.0.0", "dns": {"nameservers": "1.1.1.1"}}])
def test_parse_rejects_malformed_results(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PodResult.from_dict(bad)
