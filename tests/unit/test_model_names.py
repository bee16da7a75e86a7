"""Names derived for stored objects: always valid Kubernetes names, never shared by two ids.

The Kubernetes rule is written out here on its own (apimachinery's IsDNS1123Subdomain:
at most 253 characters of the regex below), not imported from the code under test.
"""

from __future__ import annotations

import ipaddress
import re
from itertools import combinations

from hypothesis import given
from hypothesis import strategies as st

from tabby.ipam import IPAM
from tabby.model import (
    BlockAffinity,
    ObjectMeta,
    affinity_name,
    block_name,
    endpoint_name,
    handle_name,
    parse_manifest,
)
from tabby.model.ipam import (
    BlockAffinitySpec,
    IPAMHandle,
    IPAMHandleSpec,
    affinity_prefix,
    handle_prefix,
    legacy_handle_name,
)
from tabby.model.names import name_prefix, object_name
from tabby.store.client import Client
from tabby.store.memory import MemoryStore

K8S_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
CID = "0123456789abcdef" * 4  # a containerd container id
LONG_POD = "web-" + "a" * 240 + "-7"  # 246 characters: a valid pod name
LONG_NODE = ".".join(["n" * 63, "o" * 63, "d" * 63, "e" * 61])  # 253 characters
V4 = ipaddress.ip_network("198.19.0.64/26")
V6 = ipaddress.ip_network("fd7a:bb1e::40/122")


def k8s_valid(name: str) -> bool:
    return len(name) <= 253 and K8S_SUBDOMAIN.fullmatch(name) is not None


HOSTILE_IDS = [
    "", "-", ".", "..", "_", "a", "A", "Eth0", "eth0", "a_b", "a-b", "a.b", "a..b", "a.-b",
    "-lead", "trail-", "trail.", "k8s_pod_network.ABC.eth0", "k8s-pod-network.abc.eth0",
    f"k8s-pod-network.{CID}.eth0", f"Tabby.{CID}.Eth0", "net.c.ïface", "net.c.eth\u0130",
    "net.c.\u212a", "net.c.k", "net.c.\ud800", "net.c.\u044d\u0444\u0438\u04400",
    "net c/eth0", "net:c:eth0",
    "x" * 253, "x" * 254, "X" * 253, "a." * 126 + "b", "h-0123456789abcdef",
    "h-0123456789ABCDEF", "0123456789abcdef", "handle", "handle-0", "tabby." + LONG_POD,
    "tabby." + LONG_POD + "x", "tabby." + LONG_POD + "y", "tabby." + LONG_POD + "Y",
]


def test_valid_ids_keep_their_names() -> None:
    """What existing stores hold: names that were valid do not change."""
    assert block_name(V4) == "198-19-0-64-26"
    assert block_name(V6) == "fd7a-bb1e--40-122"
    assert block_name(ipaddress.ip_network("fd7a:bb1e::/122")) == "fd7a-bb1e---122"
    assert affinity_name("node-1", V4) == "node-1-198-19-0-64-26"
    assert affinity_name("node-1", V6) == "node-1-fd7a-bb1e--40-122"
    assert affinity_name("ip-10-0-0-1.ec2.internal", V4) == \
        "ip-10-0-0-1.ec2.internal-198-19-0-64-26"
    for handle in ("h1", "t0.3", f"k8s-pod-network.{CID}.eth0", "vxlan-tunnel-addr-node-1",
                   f"tabby.{CID}.net1"):
        assert handle_name(handle) == handle == legacy_handle_name(handle)
    assert endpoint_name("node-1", "web-0") == "node--1-k8s-web--0-eth0"
    assert endpoint_name("node-1", "web-0", "net1") == "node--1-k8s-web--0-net1"


def test_hostile_handle_ids_get_valid_distinct_names() -> None:
    names = {h: handle_name(h) for h in HOSTILE_IDS}
    assert [(h, n) for h, n in names.items() if not k8s_valid(n)] == []
    assert len(set(names.values())) == len(HOSTILE_IDS)
    assert names["Eth0"] != names["eth0"] == "eth0"
    assert names["a_b"].startswith("a-b-") and names["a_b"] != names["a-b"] == "a-b"
    assert names["k8s_pod_network.ABC.eth0"].startswith("k8s-pod-network-abc-eth0-")
    assert names["x" * 253] == "x" * 253 and names["x" * 254] != "x" * 253
    assert names[""].startswith("handle-") and names["-"].startswith("handle-")
    # a valid id shaped like a hashed name is hashed too: the two forms never meet
    assert names["h-0123456789abcdef"] != "h-0123456789abcdef"


def test_long_pod_names_keep_a_readable_prefix_and_differ() -> None:
    a, b = (handle_name(f"tabby.{LONG_POD}.eth{c}") for c in "01")  # 257 characters
    assert a != b and len(a) == len(b) == 253
    assert a.startswith("tabby-web-aaaa") and b.startswith("tabby-web-aaaa")


def test_endpoint_names_for_hostile_parts() -> None:
    cases = [
        ("node-1", "web-0", "eth0"), ("node-1", "web-0", "Eth0"), ("node-1", "web-0", "eth_0"),
        ("node-1", LONG_POD, "eth0"), ("node-1", LONG_POD, "eth1"),
        (LONG_NODE, "web-0", "eth0"), (LONG_NODE, LONG_POD, "eth0"),
        (LONG_NODE, LONG_POD, "Eth0"), ("node-1", "web-0", "ïf"), ("node-1", "web-0", "-i"),
        ("node-1", "web-0-", "i"), ("node-1", "web-0", "i-"), ("node-1", "web-0", ""),
        ("node-1", "", "eth0"), ("node", "k8s-web-0", "eth0"), ("node-k8s", "web-0", "eth0"),
        ("node-1", "web.0", "eth0"), ("node-1", "web-0", "0123456789abcdef"),
    ]
    names = {c: endpoint_name(*c) for c in cases}
    assert [(c, n) for c, n in names.items() if not k8s_valid(n)] == []
    assert len(set(names.values())) == len(cases)
    # 245-character pod names on a 253-character node: over 253 doubled, cut and hashed
    assert len(names[(LONG_NODE, LONG_POD, "eth0")]) == 253
    assert names[("node-1", LONG_POD, "eth0")].startswith("node--1-k8s-web--aaa")
    assert names[("node-1", "web-0", "Eth0")].startswith("node--1-k8s-web--0-eth0-")
    # parts edged with '-' read two ways under Calico's scheme ("p---i"): hashed
    assert names[("node-1", "web-0", "-i")] != "node--1-k8s-web--0---i"


def test_affinity_names_for_long_and_odd_nodes() -> None:
    nodes = ["node-1", "Node-1", "node_1", LONG_NODE, LONG_NODE[:-1] + "f", "n" * 253, "ïnode"]
    cidrs = [V4, V6, ipaddress.ip_network("::/122"), ipaddress.ip_network("::1:0/122")]
    names = {(n, c): affinity_name(n, c) for n in nodes for c in cidrs}
    assert [k for k, v in names.items() if not k8s_valid(v)] == []
    assert len(set(names.values())) == len(names)
    assert names[(LONG_NODE, V4)].startswith("nnnn") and len(names[(LONG_NODE, V4)]) == 253
    blocks = [block_name(c) for c in cidrs]
    assert all(k8s_valid(b) for b in blocks) and len(set(blocks)) == len(blocks)


def test_names_of_ids_with_a_prefix_start_with_its_name_prefix() -> None:
    """What IPAM lists by (a network's handles, a node's affinities) finds them all."""
    prefixes = ["tabby.", "k8s-pod-network.", "Tabby_Net.", "ab-", "ab--", "-x", "x" * 250,
                "tabby." + LONG_POD, "", "a.b"]
    for prefix in prefixes:
        for rest in ["", "-", ".", "c.eth0", "C_D.Eth0", CID, "y" * 300, "ï", "-."]:
            hid = prefix + rest
            for name in (handle_name(hid), legacy_handle_name(hid)):
                assert name.startswith(handle_prefix(prefix)), (prefix, rest, name)
    for node in ["node-1", LONG_NODE, "Node_1", "a.b"]:
        for cidr in (V4, V6):
            assert affinity_name(node, cidr).startswith(affinity_prefix(node))


@given(st.text(max_size=300), st.text(max_size=300))
def test_any_two_texts_get_valid_names_and_differ(a: str, b: str) -> None:
    na, nb = object_name(a), object_name(b)
    assert k8s_valid(na) and k8s_valid(nb)
    assert (na == nb) == (a == b)
    assert object_name(a + b).startswith(name_prefix(a))


@given(st.lists(st.sampled_from(["a", "A", "-", ".", "_", "0", "ï", "k8s"]), max_size=8),
       st.lists(st.sampled_from(["a", "A", "-", ".", "_", "0", "ï", "k8s"]), max_size=8))
def test_endpoint_names_are_one_to_one(pod: list[str], iface: list[str]) -> None:
    """Small alphabets make near-collisions (case, '-' runs at part edges) likely."""
    parts = [("n", "".join(pod), "".join(iface)), ("n", "".join(pod) + "-", "".join(iface)),
             ("n", "".join(pod), "-" + "".join(iface)), ("n-k8s", "".join(pod), "".join(iface))]
    names = [endpoint_name(*p) for p in parts]
    assert all(k8s_valid(n) for n in names)
    for (p, n), (q, m) in combinations(zip(parts, names, strict=True), 2):
        assert (n == m) == (p == q), (p, q, n)


def test_handles_under_legacy_names_are_found_and_released() -> None:
    """A handle an older tabby stored under its legacy name (SQLite, etcd) is still read,
    counted, listed by prefix and released."""
    client = Client(MemoryStore())
    client.create(parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                  "metadata": {"name": "p"},
                                  "spec": {"cidr": "198.19.0.0/24", "blockSize": 26}}))
    ipam = IPAM(client)
    hid = "Tabby_Net.abc.eth0"
    got = ipam.assign(hid, "n1", num_v6=0)
    [stored] = client.list(IPAMHandle)
    assert stored.meta.name == handle_name(hid) != legacy_handle_name(hid)
    client.delete(IPAMHandle, stored.meta.name)  # as an older tabby had written it:
    client.create(IPAMHandle(ObjectMeta(legacy_handle_name(hid)),
                             IPAMHandleSpec(hid, stored.spec.blocks)))
    assert ipam.assign(hid, "n1", num_v6=0) == got  # idempotent: the legacy record counts
    assert ipam.handles("Tabby_Net.") == (hid,)
    assert ipam.release_handle(hid) == got.addresses
    assert client.list(IPAMHandle) == [] and ipam.release_handle(hid) == ()


def test_an_affinity_name_that_reads_two_ways_is_never_taken_over() -> None:
    """``a-1`` + ``fd7a::/122`` and ``a`` + ``1:fd7a::/122`` share Calico's name (kept for
    existing stores); the second claimant leaves the block instead of taking the record."""
    first, second = ipaddress.ip_network("1:fd7a::/122"), ipaddress.ip_network("fd7a::/122")
    assert affinity_name("a", first) == affinity_name("a-1", second)
    client = Client(MemoryStore())
    ipam = IPAM(client)
    assert ipam.records.claim("a", first, strict_affinity=False, reservation=None)
    assert not ipam.records.claim("a-1", second, strict_affinity=False, reservation=None)
    [aff] = client.list(BlockAffinity)
    assert aff.spec == BlockAffinitySpec("a", first, "confirmed")
    ipam.records.delete_affinity("a-1", second)  # not a-1's: left alone
    assert client.list(BlockAffinity) == [aff]
