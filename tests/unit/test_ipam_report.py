"""tabby.ipam.report: show (usage) and check (inconsistencies), and their renderers."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tabby.ipam import IPAM, Reservation
from tabby.ipam.report import (
    Problem,
    check,
    problems_to_dict,
    render_problems,
    render_report,
    report_to_dict,
    show,
)
from tabby.model import (
    BlockAffinity,
    IPAMHandle,
    ObjectMeta,
    affinity_name,
    endpoint_name,
    parse_manifest,
)
from tabby.model.ipam import BlockAffinitySpec
from tabby.store.client import Client
from tabby.store.memory import MemoryStore

net = ipaddress.ip_network


def apply(client: Client, kind: str, name: str, spec: dict[str, object] | None = None,
          namespace: str = "", labels: dict[str, str] | None = None) -> None:
    meta: dict[str, object] = {"name": name, "labels": labels or {}}
    if namespace:
        meta["namespace"] = namespace
    doc: dict[str, object] = {"apiVersion": "tabby.dev/v1", "kind": kind, "metadata": meta}
    if spec is not None:
        doc["spec"] = spec
    client.apply(parse_manifest(doc))


def endpoint(client: Client, node: str, pod: str, *cidrs: str) -> None:
    apply(client, "WorkloadEndpoint", endpoint_name(node, pod),
          {"node": node, "pod": pod, "ipNetworks": list(cidrs)}, namespace="default")


@pytest.fixture
def client() -> Client:
    c = Client(MemoryStore())
    apply(c, "IPPool", "v4", {"cidr": "198.19.0.0/24", "blockSize": 26})
    apply(c, "IPPool", "off", {"cidr": "198.19.1.0/24", "blockSize": 26, "disabled": True})
    apply(c, "Node", "n1")
    return c


def test_show_counts_pools_blocks_and_affinities(client: Client) -> None:
    ipam = IPAM(client, reservations={4: Reservation(2, 1)})
    ipam.assign("a", "n1", num_v4=3, num_v6=0)
    ipam.assign("b", "n2", num_v6=0)
    report = show(client)
    v4, off = report.pools
    assert (v4.name, v4.size, v4.used, v4.reserved, v4.free, v4.blocks) == (
        "v4", 256, 4, 6, 246, 2)
    assert (off.name, off.used, off.blocks, off.disabled) == ("off", 0, 0, True)
    assert [(str(b.cidr), b.pool, b.node, b.used, b.reserved, b.free) for b in report.blocks] == [
        ("198.19.0.0/26", "v4", "n1", 3, 3, 58), ("198.19.0.64/26", "v4", "n2", 1, 3, 60)]
    assert [(a.node, str(a.cidr), a.state) for a in report.affinities] == [
        ("n1", "198.19.0.0/26", "confirmed"), ("n2", "198.19.0.64/26", "confirmed")]


def test_report_renders_as_tables_and_json(client: Client) -> None:
    IPAM(client).assign("a", "n1", num_v6=0)
    report = show(client)
    text = render_report(report)
    lines = text.splitlines()
    assert lines[0] == "POOLS" and lines[1].split() == [
        "NAME", "CIDR", "SIZE", "USED", "RESERVED", "FREE", "BLOCKS", "DISABLED"]
    assert lines[2].split() == ["v4", "198.19.0.0/24", "256", "1", "0", "255", "1", "no"]
    assert "198.19.0.0/26  v4    n1" in text
    doc = report_to_dict(report)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["blocks"] == [{"cidr": "198.19.0.0/26", "pool": "v4", "node": "n1", "used": 1,
                              "reserved": 0, "free": 63}]
    assert doc["affinities"] == [{"node": "n1", "cidr": "198.19.0.0/26", "state": "confirmed"}]


def test_check_is_quiet_when_everything_adds_up(client: Client) -> None:
    ipam = IPAM(client, reservations={4: Reservation(2, 1)})
    a = ipam.assign("k8s.c1.eth0", "n1", num_v6=0, attrs={"namespace": "default", "pod": "p1"})
    endpoint(client, "n1", "p1", f"{a.addresses[0]}/32")
    ipam.assign("vxlan-tunnel-addr-n1", "n1", num_v6=0,
                attrs={"type": "vxlanTunnelAddress", "node": "n1"})
    assert check(client) == []
    assert render_problems([]) == "IPAM is consistent: no problems found."
    assert problems_to_dict([]) == {"ok": True, "problems": []}


def kinds(problems: list[Problem]) -> list[tuple[str, str]]:
    return sorted((p.kind, p.subject) for p in problems)


def test_check_finds_leaks_and_explains_them(client: Client) -> None:
    IPAM(client).assign("k8s.c9.eth0", "n1", num_v6=0,
                        attrs={"namespace": "shop", "pod": "cart-1", "node": "n1"})
    [problem] = check(client)
    assert (problem.kind, problem.subject) == ("leaked-address", "198.19.0.0")
    assert "handle k8s.c9.eth0" in problem.detail
    assert "namespace=shop, node=n1, pod=cart-1" in problem.detail
    assert "tabby ipam release --ip 198.19.0.0" in problem.detail


def test_check_finds_endpoints_without_allocation(client: Client) -> None:
    endpoint(client, "n1", "p2", "198.19.0.50/32")
    assert kinds(check(client)) == [("missing-allocation", "198.19.0.50")]


def test_check_finds_blocks_of_missing_nodes(client: Client) -> None:
    a = IPAM(client).assign("h", "ghost", num_v6=0)
    endpoint(client, "ghost", "p", f"{a.addresses[0]}/32")
    [problem] = check(client)
    assert (problem.kind, problem.subject) == ("missing-node", "198.19.0.0/26")
    assert "'ghost'" in problem.detail


def test_check_finds_tunnel_addresses_of_missing_nodes(client: Client) -> None:
    IPAM(client).assign("ipip-tunnel-addr-old", "n1", num_v6=0,
                        attrs={"type": "ipipTunnelAddress", "node": "old"})
    assert kinds(check(client)) == [("leaked-address", "198.19.0.0")]


def test_check_finds_handle_count_mismatches(client: Client) -> None:
    ipam = IPAM(client)
    a = ipam.assign("h", "n1", num_v6=0)
    endpoint(client, "n1", "p", f"{a.addresses[0]}/32")
    ipam.records.count("h", net("198.19.0.0/26"), 1)  # as a crash between the two writes leaves
    [problem] = check(client)
    assert (problem.kind, problem.subject) == ("handle-mismatch", "h")
    assert "records 2 in 198.19.0.0/26 but the blocks hold 1 in 198.19.0.0/26" in problem.detail
    assert ipam.release_handle("h") == a.addresses  # and release repairs it
    assert client.list(IPAMHandle) == []


def test_check_finds_allocations_without_a_handle_record(client: Client) -> None:
    a = IPAM(client).assign("h", "n1", num_v6=0)
    endpoint(client, "n1", "p", f"{a.addresses[0]}/32")
    client.delete(IPAMHandle, "h")
    assert kinds(check(client)) == [("missing-handle", "h")]


def test_check_finds_stale_affinities(client: Client) -> None:
    cidr = net("198.19.0.192/26")
    client.create(BlockAffinity(ObjectMeta(affinity_name("n1", cidr)),
                                BlockAffinitySpec("n1", cidr, "pending")))
    problems = check(client)
    assert kinds(problems) == [("stale-affinity", "n1-198-19-0-192-26")]
    assert "no block exists" in problems[0].detail


def test_problems_render_as_text_and_json(client: Client) -> None:
    endpoint(client, "n1", "p2", "198.19.0.50/32")
    problems = check(client)
    text = render_problems(problems)
    assert text.startswith("1 problem(s):\n- [missing-allocation] WorkloadEndpoint default/")
    doc = problems_to_dict(problems)
    assert doc["ok"] is False and doc["problems"][0]["kind"] == "missing-allocation"
    assert json.loads(json.dumps(doc)) == doc
