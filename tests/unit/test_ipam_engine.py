"""The IPAM engine on the memory store: blocks, affinities, handles, pools, release."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from tabby.errors import AddressNotFound, NoUsablePool, PoolExhausted
from tabby.ipam import IPAM, RESERVED_HANDLE, Reservation
from tabby.ipam import blocks as blk
from tabby.model import (
    BlockAffinity,
    IPAMBlock,
    IPAMConfiguration,
    IPAMHandle,
    IPPool,
    IPReservation,
    Node,
    ObjectMeta,
    affinity_name,
    block_name,
    parse_manifest,
)
from tabby.model.ipam import BlockAffinitySpec
from tabby.store.base import ListResult
from tabby.store.client import Client
from tabby.store.memory import MemoryStore

ip = ipaddress.ip_address
net = ipaddress.ip_network


def add_pool(client: Client, name: str, cidr: str, block: int, **spec: Any) -> IPPool:
    doc = {"apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": name},
           "spec": {"cidr": cidr, "blockSize": block, **spec}}
    pool = parse_manifest(doc)
    assert isinstance(pool, IPPool)
    return client.create(pool)


def add_node(client: Client, name: str, **labels: str) -> None:
    client.create(parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                                  "metadata": {"name": name, "labels": labels}}))


def set_config(client: Client, **spec: Any) -> None:
    client.apply(parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPAMConfiguration",
                                 "metadata": {"name": "default"}, "spec": spec}))


def block_of(client: Client, cidr: str) -> IPAMBlock:
    return client.get(IPAMBlock, block_name(net(cidr)))


@pytest.fixture
def client() -> Client:
    return Client(MemoryStore())


@pytest.fixture
def v4(client: Client) -> IPAM:
    add_pool(client, "v4", "198.19.0.0/24", 26)
    return IPAM(client)


# -- claiming and allocating ----------------------------------------------------------


def test_first_assign_claims_the_lowest_block_by_affinity(client: Client, v4: IPAM) -> None:
    a = v4.assign("net.c1.eth0", "n1", num_v6=0, attrs={"pod": "p1"})
    assert a.addresses == (ip("198.19.0.0"),)
    assert a.blocks == (net("198.19.0.0/26"),)
    block = block_of(client, "198.19.0.0/26")
    assert block.node == "n1" and block.spec.affinity == "host:n1"
    aff = client.get(BlockAffinity, affinity_name("n1", net("198.19.0.0/26")))
    assert (aff.spec.node, aff.spec.state) == ("n1", "confirmed")
    assert v4.affine_blocks("n1") == (net("198.19.0.0/26"),)
    handle = client.get(IPAMHandle, "net.c1.eth0")
    assert handle.spec.blocks == (("198.19.0.0/26", 1),)
    assert dict(blk.owner(block.spec, 0).secondary) == {"pod": "p1"}  # type: ignore[union-attr]


def test_assign_is_idempotent_per_handle(client: Client, v4: IPAM) -> None:
    first = v4.assign("h", "n1", num_v4=2, num_v6=0)
    again = v4.assign("h", "n1", num_v4=2, num_v6=0)
    assert first == again and len(first.addresses) == 2
    assert blk.used_count(block_of(client, "198.19.0.0/26").spec) == 2
    assert client.get(IPAMHandle, "h").spec.blocks == (("198.19.0.0/26", 2),)
    assert v4.addresses_of("h") == first.addresses


def test_each_node_claims_its_own_block(v4: IPAM) -> None:
    a = v4.assign("a", "n1", num_v6=0)
    b = v4.assign("b", "n2", num_v6=0)
    c = v4.assign("c", "n1", num_v6=0)
    assert a.blocks == c.blocks == (net("198.19.0.0/26"),)
    assert b.blocks == (net("198.19.0.64/26"),)
    assert c.addresses == (ip("198.19.0.1"),)


def test_a_full_block_makes_the_node_claim_the_next(client: Client) -> None:
    add_pool(client, "small", "198.19.1.0/28", 30)
    ipam = IPAM(client)
    got = [ipam.assign(f"h{i}", "n1", num_v6=0).addresses[0] for i in range(6)]
    assert got == [ip(f"198.19.1.{i}") for i in range(6)]
    assert ipam.affine_blocks("n1") == (net("198.19.1.0/30"), net("198.19.1.4/30"))


def test_released_addresses_go_to_the_back(client: Client, v4: IPAM) -> None:
    for h in "abc":
        v4.assign(h, "n1", num_v6=0)
    assert v4.release_handle("b") == (ip("198.19.0.1"),)
    assert v4.assign("d", "n1", num_v6=0).addresses == (ip("198.19.0.3"),)
    assert block_of(client, "198.19.0.0/26").spec.unallocated[-1] == 1


def test_dual_stack_gives_v4_first(client: Client, v4: IPAM) -> None:
    add_pool(client, "v6", "fd7a:bb1e::/120", 122)
    a = v4.assign("h", "n1")
    assert a.addresses == (ip("198.19.0.0"), ip("fd7a:bb1e::"))
    assert a.blocks == (net("198.19.0.0/26"), net("fd7a:bb1e::/122"))
    assert a.of_version(6) == ((ip("fd7a:bb1e::"), net("fd7a:bb1e::/122")),)


# -- borrowing, strict affinity, block limits ---------------------------------------------


@pytest.fixture
def tight(client: Client) -> IPAM:
    """Two /30 blocks: n1 fills the first, n2 claims the second."""
    add_pool(client, "tight", "198.19.2.0/29", 30)
    ipam = IPAM(client)
    for i in range(4):
        ipam.assign(f"n1-{i}", "n1", num_v6=0)
    ipam.assign("n2-0", "n2", num_v6=0)
    return ipam


def test_a_node_borrows_when_it_cannot_claim(client: Client, tight: IPAM) -> None:
    a = tight.assign("n1-4", "n1", num_v6=0)
    assert a.addresses == (ip("198.19.2.5"),) and a.blocks == (net("198.19.2.4/30"),)
    assert block_of(client, "198.19.2.4/30").node == "n2"  # borrowed, not taken over
    assert tight.affine_blocks("n1") == (net("198.19.2.0/30"),)


def test_strict_affinity_forbids_borrowing(client: Client, tight: IPAM) -> None:
    set_config(client, strictAffinity=True)
    with pytest.raises(PoolExhausted, match="strictAffinity"):
        tight.assign("n1-4", "n1", num_v6=0)
    assert client.try_get(IPAMHandle, "n1-4") is None


def test_strict_affinity_allows_blocks_nobody_owns(client: Client, tight: IPAM) -> None:
    set_config(client, strictAffinity=True)
    assert tight.release_node("n2") == (net("198.19.2.4/30"),)
    assert block_of(client, "198.19.2.4/30").spec.affinity is None
    assert tight.assign("n1-4", "n1", num_v6=0).addresses == (ip("198.19.2.5"),)


def test_max_blocks_per_host_makes_the_node_borrow(client: Client) -> None:
    add_pool(client, "p", "198.19.3.0/28", 30)
    set_config(client, maxBlocksPerHost=1)
    ipam = IPAM(client)
    ipam.assign("other", "n2", num_v6=0)  # n2 holds 198.19.3.0/30
    got = [ipam.assign(f"h{i}", "n1", num_v6=0) for i in range(5)]
    assert ipam.affine_blocks("n1") == (net("198.19.3.4/30"),)
    assert got[4].blocks == (net("198.19.3.0/30"),)  # borrowed from n2
    set_config(client, maxBlocksPerHost=1, strictAffinity=True)
    with pytest.raises(PoolExhausted, match="maxBlocksPerHost is 1"):
        ipam.assign("h9", "n1", num_v6=0)


def test_auto_allocate_blocks_off_claims_nothing(client: Client, v4: IPAM) -> None:
    set_config(client, autoAllocateBlocks=False, strictAffinity=True)
    with pytest.raises(PoolExhausted, match="autoAllocateBlocks is off"):
        v4.assign("h", "n1", num_v6=0)
    assert client.list(IPAMBlock) == [] and client.list(BlockAffinity) == []


# -- which pools ----------------------------------------------------------------------------


def test_a_disabled_pool_gets_nothing_new_but_keeps_what_it_has(client: Client,
                                                                v4: IPAM) -> None:
    held = v4.assign("old", "n1", num_v6=0).addresses
    client.mutate(IPPool, "v4", "", lambda p: dataclasses.replace(
        p, spec=dataclasses.replace(p.spec, disabled=True)))
    with pytest.raises(NoUsablePool, match="IPPool/v4 is disabled"):
        v4.assign("new", "n1", num_v6=0)
    assert v4.addresses_of("old") == held
    assert v4.assign("old", "n1", num_v6=0).addresses == held  # idempotent still
    add_pool(client, "next", "198.19.9.0/24", 26)
    assert v4.assign("new", "n1", num_v6=0).blocks == (net("198.19.9.0/26"),)


def test_node_selector_matches_node_labels(client: Client) -> None:
    add_pool(client, "a", "198.19.10.0/24", 26, nodeSelector="zone == 'a'")
    add_pool(client, "b", "198.19.11.0/24", 26, nodeSelector="zone == 'b'")
    add_node(client, "n1", zone="b")
    ipam = IPAM(client)
    assert ipam.assign("h1", "n1", num_v6=0).blocks == (net("198.19.11.0/26"),)
    with pytest.raises(NoUsablePool, match="nodeSelector \"zone == 'a'\" excludes"):
        ipam.assign("h2", "ghost", num_v6=0)  # no Node object: labels are {}
    add_pool(client, "any", "198.19.12.0/24", 26)
    assert ipam.assign("h2", "ghost", num_v6=0).blocks == (net("198.19.12.0/26"),)


def test_a_pool_must_allow_workloads(client: Client) -> None:
    add_pool(client, "tunnels", "198.19.13.0/24", 26, allowedUses=["Tunnel"])
    with pytest.raises(NoUsablePool, match="does not allow Workload"):
        IPAM(client).assign("h", "n1", num_v6=0)


def test_requested_pools_by_name_or_cidr_in_the_order_given(client: Client) -> None:
    add_pool(client, "low", "198.19.20.0/24", 26)
    add_pool(client, "high", "198.19.21.0/24", 26)
    ipam = IPAM(client)
    assert ipam.assign("h0", "n1", num_v6=0).blocks == (net("198.19.20.0/26"),)
    assert ipam.assign("h1", "n1", num_v6=0, pools_v4=("high",)).blocks == (
        net("198.19.21.0/26"),)
    assert ipam.assign("h2", "n2", num_v6=0, pools_v4=("198.19.21.0/24", "low")).blocks == (
        net("198.19.21.64/26"),)
    with pytest.raises(NoUsablePool, match="no IPv4 IPPool named 'nope'"):
        ipam.assign("h3", "n1", num_v6=0, pools_v4=("nope",))


def test_no_pool_of_a_family_fails_before_anything_is_taken(client: Client, v4: IPAM) -> None:
    with pytest.raises(NoUsablePool, match="no IPv6 IPPool"):
        v4.assign("h", "n1", num_v4=1, num_v6=1)
    assert client.list(IPAMBlock) == [] and client.list(IPAMHandle) == []


def test_dual_stack_is_all_or_nothing(client: Client, v4: IPAM) -> None:
    add_pool(client, "v6", "fd7a:bb1e::/127", 127)  # two addresses
    v4.assign("fill", "n2", num_v4=0, num_v6=2)
    with pytest.raises(PoolExhausted, match="IPv6"):
        v4.assign("h", "n1")
    assert blk.used_count(block_of(client, "198.19.0.0/26").spec) == 0
    assert client.try_get(IPAMHandle, "h") is None
    assert v4.addresses_of("h") == ()


# -- release -------------------------------------------------------------------------------


def test_release_handle_is_idempotent(client: Client, v4: IPAM) -> None:
    a = v4.assign("h", "n1", num_v4=3, num_v6=0)
    assert v4.release_handle("h") == a.addresses
    assert v4.release_handle("h") == ()
    assert v4.release_handle("never") == ()
    assert client.try_get(IPAMHandle, "h") is None
    assert blk.is_empty(block_of(client, "198.19.0.0/26").spec)


def test_release_by_ip_fixes_the_handle(client: Client, v4: IPAM) -> None:
    a = v4.assign("h", "n1", num_v4=2, num_v6=0)
    assert v4.release_ips([a.addresses[0]]) == (a.addresses[0],)
    assert client.get(IPAMHandle, "h").spec.blocks == (("198.19.0.0/26", 1),)
    assert v4.addresses_of("h") == (a.addresses[1],)
    assert v4.release_ips([str(a.addresses[1])]) == (a.addresses[1],)
    assert client.try_get(IPAMHandle, "h") is None


def test_release_by_ip_of_an_unallocated_address_frees_nothing(v4: IPAM) -> None:
    a = v4.assign("h", "n1", num_v6=0)
    with pytest.raises(AddressNotFound, match=r"198\.19\.0\.9.*nothing was released"):
        v4.release_ips([a.addresses[0], ip("198.19.0.9")])
    with pytest.raises(AddressNotFound, match=r"203\.0\.113\.1"):
        v4.release_ips(["203.0.113.1"])
    assert v4.addresses_of("h") == a.addresses


def test_release_empty_blocks(client: Client, v4: IPAM) -> None:
    keep = v4.assign("keep", "n1", num_v6=0)
    v4.assign("go", "n1", num_v4=64, num_v6=0)  # the rest of block 1, all of block 2
    assert v4.affine_blocks("n1") == (net("198.19.0.0/26"), net("198.19.0.64/26"))
    v4.release_handle("go")
    assert v4.release_empty_blocks("n1") == (net("198.19.0.64/26"),)
    assert [b.spec.cidr for b in client.list(IPAMBlock)] == [net("198.19.0.0/26")]
    assert v4.affine_blocks("n1") == (net("198.19.0.0/26"),)
    v4.release_ips(keep.addresses)
    assert v4.release_empty_blocks("n1") == (net("198.19.0.0/26"),)
    assert client.list(IPAMBlock) == [] and client.list(BlockAffinity) == []


def test_release_node(client: Client, v4: IPAM) -> None:
    v4.assign("a", "gone", num_v4=65, num_v6=0)
    v4.release_ips([ip("198.19.0.64")])  # block 2 is empty again
    assert v4.release_node("gone") == (net("198.19.0.0/26"), net("198.19.0.64/26"))
    assert client.list(BlockAffinity) == []
    [left] = client.list(IPAMBlock)
    assert left.spec.affinity is None and blk.used_count(left.spec) == 64


def test_a_stale_pending_affinity_is_reused_or_swept(client: Client, v4: IPAM) -> None:
    cidr = net("198.19.0.0/26")
    client.create(BlockAffinity(ObjectMeta(affinity_name("n1", cidr)),
                                BlockAffinitySpec("n1", cidr, "pending")))  # a crash mid-claim
    assert v4.assign("h", "n1", num_v6=0).blocks == (cidr,)
    assert client.get(BlockAffinity, affinity_name("n1", cidr)).spec.state == "confirmed"
    other = net("198.19.0.64/26")
    client.create(BlockAffinity(ObjectMeta(affinity_name("n1", other)),
                                BlockAffinitySpec("n1", other, "pending")))
    assert v4.release_empty_blocks("n1") == ()
    assert client.try_get(BlockAffinity, affinity_name("n1", other)) is None


def test_a_claim_cut_short_after_the_block_create_is_confirmed(client: Client,
                                                              v4: IPAM) -> None:
    cidr = net("198.19.0.0/26")
    client.create(BlockAffinity(ObjectMeta(affinity_name("n1", cidr)),
                                BlockAffinitySpec("n1", cidr, "pending")))
    client.create(IPAMBlock(ObjectMeta(block_name(cidr)), blk.new_block(cidr, "n1")))
    assert v4.affine_blocks("n1") == ()
    assert v4.assign("h", "n1", num_v6=0).blocks == (cidr,)
    assert v4.affine_blocks("n1") == (cidr,)


def test_losing_the_block_create_drops_the_pending_affinity(client: Client, v4: IPAM) -> None:
    cidr = net("198.19.0.0/26")
    v4.assign("theirs", "n2", num_v6=0)  # n2 owns the block
    assert not v4.records.claim("n1", cidr, strict_affinity=False, reservation=None)
    assert client.try_get(BlockAffinity, affinity_name("n1", cidr)) is None
    assert block_of(client, str(cidr)).node == "n2"


# -- reservations ----------------------------------------------------------------------------


def test_reserved_ordinals_are_never_handed_out(client: Client) -> None:
    add_pool(client, "v4", "198.19.30.0/24", 29)
    ipam = IPAM(client, reservations={4: Reservation(2, 1, "gw")})
    got = [ipam.assign(f"h{i}", "n1", num_v6=0).addresses[0] for i in range(6)]
    assert got == [ip(a) for a in ("198.19.30.2", "198.19.30.3", "198.19.30.4",
                                   "198.19.30.5", "198.19.30.6", "198.19.30.10")]
    spec = block_of(client, "198.19.30.0/29").spec
    assert [o for o, a in blk.allocated(spec) if a.handle_id == RESERVED_HANDLE] == [0, 1, 7]
    with pytest.raises(AddressNotFound, match=r"198\.19\.30\.1 \(reserved in block"):
        ipam.release_ips(["198.19.30.1"])
    for i in range(6):
        ipam.release_handle(f"h{i}")
    assert blk.is_empty(spec) is False and blk.is_empty(block_of(client, "198.19.30.0/29").spec)
    assert len(ipam.release_empty_blocks("n1")) == 2


def test_tiny_blocks_reserve_nothing() -> None:
    assert Reservation(2, 1).ordinals(2) == ()
    assert Reservation(2, 1).ordinals(4) == (0, 1, 3)


# -- cost ------------------------------------------------------------------------------------


class CountingStore(MemoryStore):
    """The memory store, counting list calls per resource."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: list[str] = []

    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        self.lists.append(resource)
        return super().list(resource, namespace, prefix)


def test_steady_state_assign_does_not_scan_blocks() -> None:
    store = CountingStore()
    client = Client(store)
    add_pool(client, "v4", "198.19.0.0/16", 26)
    ipam = IPAM(client)
    ipam.assign("first", "n1", num_v6=0)  # claims: lists blocks once
    store.lists.clear()
    for i in range(20):
        ipam.assign(f"h{i}", "n1", num_v6=0)
    assert IPAMBlock.KIND.resource not in store.lists
    assert set(store.lists) == {IPPool.KIND.resource, BlockAffinity.KIND.resource,
                                IPReservation.KIND.resource}
    assert store.lists.count(IPReservation.KIND.resource) == 20  # one list per assign


def test_unrelated_config_is_ignored(client: Client, v4: IPAM) -> None:
    assert v4.config() == IPAMConfiguration.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPAMConfiguration",
        "metadata": {"name": "default"}}).spec
    add_node(client, "n1", zone="x")
    assert v4.assign("h", "n1", num_v6=0).addresses == (ip("198.19.0.0"),)
    assert client.get(Node, "n1").meta.labels == {"zone": "x"}
