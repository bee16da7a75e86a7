"""IPReservation: the model, the engine skipping reserved addresses, show and check."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tabby.errors import PoolExhausted, ValidationError
from tabby.ipam import IPAM, Reservation
from tabby.ipam import blocks as blk
from tabby.ipam.report import check, show
from tabby.ipam.reserved import Reserved
from tabby.model import IPAMBlock, IPPool, IPReservation, block_name, parse_manifest
from tabby.store.base import ListResult
from tabby.store.client import Client
from tabby.store.memory import MemoryStore

ip = ipaddress.ip_address
net = ipaddress.ip_network


def reservation(name: str, *cidrs: Any, api: str = "projectcalico.org/v3") -> IPReservation:
    obj = parse_manifest({"apiVersion": api, "kind": "IPReservation",
                          "metadata": {"name": name}, "spec": {"reservedCIDRs": list(cidrs)}})
    assert isinstance(obj, IPReservation)
    return obj


def add_pool(client: Client, name: str, cidr: str, block: int) -> None:
    pool = parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                           "metadata": {"name": name},
                           "spec": {"cidr": cidr, "blockSize": block}})
    assert isinstance(pool, IPPool)
    client.create(pool)


@pytest.fixture
def client() -> Client:
    c = Client(MemoryStore())
    add_pool(c, "v4", "198.19.0.0/24", 26)
    add_pool(c, "v6", "fd7a:bb1e::/120", 122)
    return c


# -- the model -------------------------------------------------------------------------


def test_model_reads_cidrs_and_single_addresses_of_both_families() -> None:
    r = reservation("r", "198.19.0.3", "198.19.1.7/24", "fd7a:bb1e::/123", "fd7a:bb1e::9")
    assert r.reserved_cidrs == (net("198.19.0.3/32"), net("198.19.1.0/24"),
                                net("fd7a:bb1e::/123"), net("fd7a:bb1e::9/128"))
    assert r.KIND.namespaced is False
    assert r.to_manifest()["spec"] == {"reservedCIDRs": [
        "198.19.0.3/32", "198.19.1.0/24", "fd7a:bb1e::/123", "fd7a:bb1e::9/128"]}
    assert reservation("r", "10.0.0.0/8", api="tabby.dev/v1") == reservation("r", "10.0.0.0/8")


@pytest.mark.parametrize(("spec", "path", "words"), [
    ({"reservedCIDRs": ["198.19.0.0/33"]}, "spec.reservedCIDRs[0]", "not a CIDR"),
    ({"reservedCIDRs": ["10.0.0.0/8", "nope"]}, "spec.reservedCIDRs[1]", "'nope'"),
    ({"reservedCIDRs": [""]}, "spec.reservedCIDRs[0]", "not a CIDR"),
    ({"reservedCIDRs": [7]}, "spec.reservedCIDRs[0]", "not a string"),
    ({"reservedCIDRs": "10.0.0.0/8"}, "spec.reservedCIDRs", "must be a list"),
    ({"reservedCidrs": ["10.0.0.0/8"]}, "spec.reservedCidrs", "did you mean reservedCIDRs"),
])
def test_model_errors_name_the_field(spec: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_manifest({"apiVersion": "projectcalico.org/v3", "kind": "IPReservation",
                        "metadata": {"name": "r"}, "spec": spec})
    text = str(info.value)
    assert "IPReservation/r" in text and path in text and words in text


def test_model_refuses_a_namespace() -> None:
    with pytest.raises(ValidationError, match="namespace"):
        parse_manifest({"apiVersion": "projectcalico.org/v3", "kind": "IPReservation",
                        "metadata": {"name": "r", "namespace": "x"},
                        "spec": {"reservedCIDRs": []}})


# -- the pure ranges ---------------------------------------------------------------------


def test_reserved_merges_ranges_and_answers_by_block() -> None:
    r = Reserved.of_cidrs([net("198.19.0.4/30"), net("198.19.0.8/30"), net("198.19.0.64/26"),
                           net("fd7a:bb1e::/64")])
    assert r.v4 == ((int(ip("198.19.0.4")), int(ip("198.19.0.11"))),
                    (int(ip("198.19.0.64")), int(ip("198.19.0.127"))))
    assert r.contains(ip("198.19.0.11")) and not r.contains(ip("198.19.0.12"))
    assert r.covers(net("198.19.0.64/26")) and not r.covers(net("198.19.0.0/26"))
    assert r.overlapping(net("198.19.0.0/26")) == ((4, 11),)
    skip = r.skip(net("198.19.0.0/26"))
    assert skip is not None and [o for o in range(16) if skip(o)] == list(range(4, 12))
    assert r.skip(net("198.19.0.128/26")) is None
    assert list(r.blocks(net("198.19.0.0/24"), 26)) == [
        net("198.19.0.0/26"), net("198.19.0.128/26"), net("198.19.0.192/26")]
    # a reserved /64 inside a /48 pool of /122 blocks is jumped over, not walked (2^58 blocks)
    v6 = r.blocks(net("fd7a:bb1e::/48"), 122)
    assert next(v6) == net("fd7a:bb1e:0:1::/122")


# -- the engine --------------------------------------------------------------------------


def test_assign_skips_reserved_addresses_inside_a_block(client: Client) -> None:
    client.create(reservation("low", "198.19.0.0/30", "198.19.0.5", "fd7a:bb1e::/126"))
    ipam = IPAM(client)
    got = [ipam.assign(f"h{i}", "n1", num_v4=1, num_v6=1).addresses for i in range(3)]
    assert [a[0] for a in got] == [ip("198.19.0.4"), ip("198.19.0.6"), ip("198.19.0.7")]
    assert [a[1] for a in got] == [ip("fd7a:bb1e::4"), ip("fd7a:bb1e::5"), ip("fd7a:bb1e::6")]
    block = client.get(IPAMBlock, block_name(net("198.19.0.0/26")))
    for o in (0, 1, 2, 3, 5):  # still free, still in the hand-out order, never handed out
        assert block.spec.allocations[o] is None and o in block.spec.unallocated
    assert [p for p in check(client) if p.kind == "reserved-address"] == []


def test_a_wholly_reserved_block_is_never_claimed_or_borrowed(client: Client) -> None:
    client.create(reservation("first-blocks", "198.19.0.0/25", "fd7a:bb1e::/122"))
    ipam = IPAM(client)
    a = ipam.assign("h1", "n1", num_v4=1, num_v6=1)
    assert a.addresses == (ip("198.19.0.128"), ip("fd7a:bb1e::40"))
    assert a.blocks == (net("198.19.0.128/26"), net("fd7a:bb1e::40/122"))
    assert client.try_get(IPAMBlock, block_name(net("198.19.0.0/26"))) is None
    assert client.try_get(IPAMBlock, block_name(net("198.19.0.64/26"))) is None


def test_reservation_after_a_block_was_claimed_moves_new_pods_on(client: Client) -> None:
    ipam = IPAM(client)
    first = ipam.assign("h1", "n1", num_v4=1, num_v6=0)
    assert first.addresses == (ip("198.19.0.0"),)
    client.create(reservation("rest", "198.19.0.0/26"))  # the node's affine block, whole
    second = ipam.assign("h2", "n1", num_v4=1, num_v6=0)
    assert second.addresses == (ip("198.19.0.64"),)
    assert ipam.affine_blocks("n1") == (net("198.19.0.0/26"), net("198.19.0.64/26"))
    # the holder keeps its address; check names it and the reservation
    problems = [p for p in check(client) if p.kind == "reserved-address"]
    assert [p.subject for p in problems] == ["198.19.0.0"]
    assert "IPReservation rest" in problems[0].detail and "h1" in problems[0].detail
    assert ipam.addresses_of("h1") == (ip("198.19.0.0"),)


def test_borrowing_skips_reserved_room(client: Client) -> None:
    ipam = IPAM(client)
    ipam.assign("other", "n2", num_v4=1, num_v6=0)  # n2 holds 198.19.0.0/26
    client.create(reservation("r", "198.19.0.64/26", "198.19.0.128/25", "198.19.0.0/27"))
    got = ipam.assign("h1", "n1", num_v4=1, num_v6=0)  # nothing to claim: borrow
    assert got.addresses == (ip("198.19.0.32"),)


def test_everything_reserved_is_exhaustion_with_a_hint(client: Client) -> None:
    client.create(reservation("all", "198.19.0.0/24"))
    with pytest.raises(PoolExhausted, match="IPReservations hold back"):
        IPAM(client).assign("h1", "n1", num_v4=1, num_v6=0)
    assert client.list(IPAMBlock) == []


def test_host_reserved_ordinals_and_reservations_together(client: Client) -> None:
    """tabby-ipam's blocks keep network, gateway and broadcast; a reservation adds to it."""
    client.create(reservation("r", "198.19.0.2/31"))
    ipam = IPAM(client, reservations={4: Reservation(2, 1, "bridge")})
    got = ipam.assign("h1", "n1", num_v4=1, num_v6=0)
    assert got.addresses == (ip("198.19.0.4"),)
    block = client.get(IPAMBlock, block_name(net("198.19.0.0/26")))
    assert blk.owner(block.spec, 1) is not None  # the gateway, held back


class CountingStore(MemoryStore):
    """The memory store, counting list calls per resource."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: list[str] = []

    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        self.lists.append(resource)
        return super().list(resource, namespace, prefix)


def test_reservations_are_read_once_per_assign_and_not_when_nothing_is_needed() -> None:
    store = CountingStore()
    client = Client(store)
    add_pool(client, "v4", "198.19.0.0/24", 26)
    add_pool(client, "v6", "fd7a:bb1e::/120", 122)
    client.create(reservation("r", "198.19.0.0/30"))
    ipam = IPAM(client)
    assert ipam.assign("h1", "n1", num_v4=4, num_v6=4).addresses[0] == ip("198.19.0.4")
    assert store.lists.count(IPReservation.KIND.resource) == 1
    ipam.assign("h1", "n1", num_v4=4, num_v6=4)  # idempotent: nothing new to take
    assert store.lists.count(IPReservation.KIND.resource) == 1
    ipam.assign("h2", "n1", num_v4=1, num_v6=0, reserved=Reserved())  # the caller's view
    assert store.lists.count(IPReservation.KIND.resource) == 1


# -- show and check --------------------------------------------------------------------


def test_show_counts_reserved_space_and_check_reports_every_holder(client: Client) -> None:
    ipam = IPAM(client)
    for i in range(3):
        ipam.assign(f"h{i}", "n1", num_v4=1, num_v6=1, attrs={"namespace": "ns", "pod": f"p{i}"})
    client.create(reservation("late", "198.19.0.1", "198.19.0.8/29", "fd7a:bb1e::2",
                              "198.19.0.128/25"))
    report = show(client)
    v4 = next(b for b in report.blocks if b.cidr == net("198.19.0.0/26"))
    assert (v4.used, v4.reserved, v4.free) == (3, 8, 53)
    pool = next(p for p in report.pools if p.name == "v4")
    assert (pool.used, pool.reserved, pool.free) == (3, 8 + 128, 256 - 3 - 136)
    problems = {p.subject: p.detail for p in check(client) if p.kind == "reserved-address"}
    assert set(problems) == {"198.19.0.1", "fd7a:bb1e::2"}
    assert "pod ns/p1" in problems["198.19.0.1"]
    assert "tabby ipam release --ip 198.19.0.1" in problems["198.19.0.1"]


def test_standalone_tabby_ipam_honours_reservations(tmp_path: Any) -> None:
    """tabby-ipam (the CNI IPAM plugin the reference bridge uses) goes through the engine:
    network, gateway and broadcast held back, and the reserved addresses skipped."""
    import json

    from tabby.ipam.plugin import run
    from tabby.store import open_store

    url = f"sqlite://{tmp_path}/store.db"
    c = Client(open_store(url))
    add_pool(c, "v4", "198.19.0.0/24", 26)
    add_pool(c, "v6", "fd7a:bb1e::/120", 122)
    c.create(reservation("r", "198.19.0.0/26", "198.19.0.66/31", "fd7a:bb1e::2/127"))
    c.store.close()
    conf = {"cniVersion": "1.0.0", "name": "net1", "type": "bridge",
            "ipam": {"type": "tabby-ipam", "datastore": url, "node": "n1",
                     "assign_ipv6": True}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/c1",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    code, out = run(env, json.dumps(conf).encode())
    assert code == 0, out
    ips = [i["address"] for i in json.loads(out)["ips"]]
    assert ips == ["198.19.0.68/26", "fd7a:bb1e::4/122"]
