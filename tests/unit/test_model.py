"""The resource model: validation names the object and field; defaults follow Calico."""

from __future__ import annotations

from typing import Any

import pytest

from tabby.errors import ValidationError
from tabby.model import (
    IPPool,
    Namespace,
    Node,
    Pod,
    WorkloadEndpoint,
    check_pools,
    endpoint_name,
    parse_manifest,
    resolve_kind,
)


def pool(spec: dict[str, Any], name: str = "pool-a", api: str = "tabby.dev/v1") -> dict[str, Any]:
    return {"apiVersion": api, "kind": "IPPool", "metadata": {"name": name}, "spec": spec}


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_manifest(doc)
    return err.value.lines()


def test_ippool_defaults_follow_calico() -> None:
    p = parse_manifest(pool({"cidr": "198.19.0.0/16"}))
    assert isinstance(p, IPPool)
    assert p.spec.block_size == 26
    assert (p.spec.vxlan_mode, p.spec.ipip_mode) == ("Never", "Never")
    assert p.spec.node_selector == "all()"
    assert p.spec.allowed_uses == ("Workload", "Tunnel")
    assert not p.spec.nat_outgoing and not p.spec.disabled and not p.spec.disable_bgp_export
    v6 = parse_manifest(pool({"cidr": "fd7a:bb1e:1::/48"}))
    assert isinstance(v6, IPPool) and v6.spec.block_size == 122


def test_calico_api_version_is_an_alias() -> None:
    p = parse_manifest(pool({"cidr": "198.19.0.0/16"}, api="projectcalico.org/v3"))
    assert p.to_manifest()["apiVersion"] == "tabby.dev/v1"


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ({"cidr": "198.19.0.0/16", "blockSize": 33},
         "IPPool/pool-a: spec.blockSize: 33 is outside 20..32"),
        ({"cidr": "198.19.0.0/16", "blockSize": 19},
         "IPPool/pool-a: spec.blockSize: 19 is outside 20..32"),
        ({"cidr": "fd7a:bb1e:1::/48", "blockSize": 115},
         "IPPool/pool-a: spec.blockSize: 115 is outside 116..128"),
        ({"cidr": "198.19.0.0/24", "blockSize": 22},
         "IPPool/pool-a: spec.blockSize: 22 is larger than the pool 198.19.0.0/24 itself"),
        ({"cidr": "198.19.0.1/16"},
         "IPPool/pool-a: spec.cidr: '198.19.0.1/16' has host bits set;"
         " did you mean 198.19.0.0/16?"),
        ({"cidr": "169.254.0.0/24"},
         "IPPool/pool-a: spec.cidr: 169.254.0.0/24 overlaps the link-local range"
         " 169.254.0.0/16"),
        ({"cidr": "fe80::/64"},
         "IPPool/pool-a: spec.cidr: fe80::/64 overlaps the link-local range fe80::/10"),
        ({"cidr": "not-a-cidr"}, "IPPool/pool-a: spec.cidr: 'not-a-cidr' is not a CIDR"),
        ({}, "IPPool/pool-a: spec.cidr: is required"),
        ({"cidr": "198.19.0.0/16", "vxlanMode": "Sometimes"},
         "IPPool/pool-a: spec.vxlanMode: 'Sometimes' is not one of Never, Always, CrossSubnet"),
        ({"cidr": "198.19.0.0/16", "vxlanMode": "Always", "ipipMode": "Always"},
         "IPPool/pool-a: spec.ipipMode: cannot be combined with vxlanMode on one pool"),
        ({"cidr": "198.19.0.0/16", "blocksize": 26},
         "IPPool/pool-a: spec.blocksize: unknown field (did you mean blockSize?)"),
        ({"cidr": "198.19.0.0/16", "allowedUses": ["LoadBalancer", "Workload"]},
         "IPPool/pool-a: spec.allowedUses: LoadBalancer cannot be combined with other uses"),
        ({"cidr": "198.19.0.0/16", "nodeSelector": "a =="},
         "IPPool/pool-a: spec.nodeSelector: selector 'a ==': expected str, got end of input"
         " at position 4"),
        ({"cidr": "198.19.0.0/16", "natOutgoing": "yes"},
         "IPPool/pool-a: spec.natOutgoing: must be true or false, not a string"),
    ],
)
def test_ippool_errors_name_the_field(spec: dict[str, Any], line: str) -> None:
    assert line in errors_of(pool(spec))


def test_every_problem_is_reported_at_once() -> None:
    lines = errors_of(pool({"cidr": "198.19.0.0/16", "blockSize": 40, "vxlanMode": "x",
                            "bogus": 1}))
    assert len(lines) == 3


def test_ipv6_pool_refuses_ipip() -> None:
    assert any("IP-in-IP carries IPv4 only" in line
               for line in errors_of(pool({"cidr": "fd7a:bb1e:1::/48", "ipipMode": "Always"})))


def test_pool_overlap_and_immutable_fields() -> None:
    a = IPPool.from_manifest(pool({"cidr": "198.19.0.0/16"}))
    b = IPPool.from_manifest(pool({"cidr": "198.19.4.0/24"}, name="pool-b"))
    c = IPPool.from_manifest(pool({"cidr": "198.20.0.0/16"}, name="pool-c"))
    with pytest.raises(ValidationError, match=r"IPPool/pool-b: spec.cidr: 198.19.4.0/24 overlaps"
                                              r" IPPool/pool-a \(198.19.0.0/16\)"):
        check_pools(b, [a, c])
    check_pools(c, [a])
    bigger = IPPool.from_manifest(pool({"cidr": "198.19.0.0/16", "blockSize": 28}))
    with pytest.raises(ValidationError, match=r"spec\.blockSize: is immutable"):
        bigger.validate_update(a)


def test_unknown_kind_and_wrong_api_version() -> None:
    assert errors_of({"apiVersion": "v1", "kind": "Gadget", "metadata": {"name": "g"}}) == [
        "Gadget/g: kind: unknown kind 'Gadget'"]
    lines = errors_of({"apiVersion": "v1", "kind": "IPPool", "metadata": {"name": "p"}})
    assert lines == ["IPPool/p: apiVersion: v1 does not serve IPPool (use tabby.dev/v1)"]


def test_names_are_validated() -> None:
    lines = errors_of(pool({"cidr": "198.19.0.0/16"}, name="Pool_A"))
    assert any("metadata.name" in line for line in lines)


def test_pod_ports_labels_and_status() -> None:
    doc = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
        "spec": {"nodeName": "node-1", "restartPolicy": "Always", "containers": [
            {"name": "c", "image": "busybox", "ports": [
                {"containerPort": 80, "name": "serve-80-tcp"},
                {"containerPort": 81, "protocol": "UDP", "name": "serve-81-udp"}]}]},
        "status": {"podIPs": [{"ip": "198.19.0.5"}, {"ip": "fd7a:bb1e:1::5"}]},
    }
    p = parse_manifest(doc)
    assert isinstance(p, Pod)
    assert [(q.container_port, q.protocol, q.name) for q in p.ports()] == [
        (80, "TCP", "serve-80-tcp"), (81, "UDP", "serve-81-udp")]
    out = p.to_manifest()
    assert out["spec"]["restartPolicy"] == "Always"  # fields tabby doesn't use survive
    assert out["status"]["podIP"] == "198.19.0.5"
    assert out["status"]["podIPs"] == [{"ip": "198.19.0.5"}, {"ip": "fd7a:bb1e:1::5"}]
    assert parse_manifest(out) == p


def test_pod_errors() -> None:
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
           "spec": {"containers": [{"name": "c", "ports": [
               {"containerPort": 70000}, {"containerPort": 80, "protocol": "ICMP"},
               {"containerPort": 81, "name": "Bad_Name"}]}]}}
    lines = errors_of(doc)
    assert "Pod/default/a: spec.containers[0].ports[0].containerPort: 70000 is outside 1..65535" \
        in lines
    assert any("spec.containers[0].ports[1].protocol" in line for line in lines)
    assert any("spec.containers[0].ports[2].name" in line for line in lines)


def test_namespace_gets_its_name_label() -> None:
    ns = parse_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    assert isinstance(ns, Namespace)
    assert ns.meta.labels["kubernetes.io/metadata.name"] == "x"


def test_node_and_workload_endpoint_round_trip() -> None:
    node = parse_manifest({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                           "metadata": {"name": "node-1"},
                           "spec": {"bgp": {"ipv4Address": "198.18.0.11/24",
                                            "ipv6Address": "fd7a:bb1e::11/64"}}})
    assert isinstance(node, Node)
    assert str(node.address(4)) == "198.18.0.11" and str(node.address(6)) == "fd7a:bb1e::11"
    assert parse_manifest(node.to_manifest()) == node
    bad = errors_of({"apiVersion": "tabby.dev/v1", "kind": "Node", "metadata": {"name": "n"},
                     "spec": {"bgp": {"ipv4Address": "fd7a::1/64"}}})
    assert bad == ["Node/n: spec.bgp.ipv4Address: 'fd7a::1/64' is not an IPv4 address"]
    name = endpoint_name("node-1", "web-0")
    assert name == "node--1-k8s-web--0-eth0"
    wep = parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "WorkloadEndpoint",
                          "metadata": {"name": name, "namespace": "x"},
                          "spec": {"node": "node-1", "pod": "web-0",
                                   "ipNetworks": ["198.19.0.5/32"]}})
    assert isinstance(wep, WorkloadEndpoint)
    assert parse_manifest(wep.to_manifest()) == wep


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ippool", "IPPool"), ("ippools", "IPPool"), ("IPPool", "IPPool"), ("pod", "Pod"),
     ("pods", "Pod"), ("po", "Pod"), ("ns", "Namespace"), ("nodes", "Node"),
     ("ippool.projectcalico.org", "IPPool"), ("wep", "WorkloadEndpoint")],
)
def test_resolve_kind(name: str, kind: str) -> None:
    assert resolve_kind(name).KIND.kind == kind


def test_resolve_unknown_kind() -> None:
    with pytest.raises(ValidationError, match="unknown kind 'gadget'"):
        resolve_kind("gadget")


def test_a_trailing_newline_is_not_part_of_a_valid_name() -> None:
    """``re.match`` with ``$`` accepts "a\\n": names, namespaces and labels must match whole."""
    from tabby.errors import ValidationError
    from tabby.model import IPPool, Namespace
    with pytest.raises(ValidationError, match="name"):
        IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                              "metadata": {"name": "a\n"}, "spec": {"cidr": "198.19.0.0/16"}})
    with pytest.raises(ValidationError, match="label"):
        Namespace.from_manifest({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": "a", "labels": {"k": "v\n"}}})
