"""IPAM on the Kubernetes datastore: a real kube-apiserver (v1.37) with tabby's CRDs.

Blocks are claimed by create-if-absent and changed by PUT at the resourceVersion read
(the API server's optimistic concurrency): the same compare-and-swap IPAM does on
SQLite and etcd. Here: the concurrency drill (processes sharing nodes race for blocks),
one block raced for by eight clients, two nodes borrowing from each other's blocks,
release by handle from two clients at once, and the names IPAM derives from hostile ids
accepted by the API server (it refuses the names tabby used to derive).

Throughput lines (``ipam-drill ...``) go to stdout: ``pytest -s`` shows them.
"""

from __future__ import annotations

import ipaddress
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tabby.errors import ConfigError, NotFound, PoolExhausted, ValidationError
from tabby.ipam import IPAM
from tabby.ipam import blocks as blk
from tabby.ipam.drill import DrillResult, ensure_pool, run_drill
from tabby.ipam.report import Problem, check
from tabby.kube import binaries, crds
from tabby.kube.controlplane import ControlPlane
from tabby.model import (
    BlockAffinity,
    IPAMBlock,
    IPAMConfiguration,
    IPAMHandle,
    IPPool,
    Namespace,
    Node,
    ObjectMeta,
    WorkloadEndpoint,
    affinity_name,
    endpoint_name,
    handle_name,
    parse_manifest,
)
from tabby.model.ipam import IPAMHandleSpec, legacy_handle_name
from tabby.model.workloadendpoint import WorkloadEndpointSpec
from tabby.store import open_store
from tabby.store.client import Client
from tests.kube import kubectl, running_control_plane

try:
    binaries.bin_dir()
except ConfigError as e:
    pytest.skip(f"Kubernetes programs not built: {e}", allow_module_level=True)
if shutil.which("etcd") is None:
    pytest.skip("needs the etcd binary (apt-get install etcd-server)", allow_module_level=True)

T = TypeVar("T")
MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "crds.yaml"
CID = "0123456789abcdef" * 4
LONG_NODE = ".".join(["n" * 63, "o" * 63, "d" * 63, "e" * 61])  # 253 characters
LONG_POD = "web-" + "a" * 240 + "-7"
IPAM_KINDS: tuple[type[IPAMBlock | BlockAffinity | IPAMHandle | IPPool | IPAMConfiguration
                       | Node], ...] = (
    IPAMHandle, IPAMBlock, BlockAffinity, IPPool, IPAMConfiguration, Node)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("ipam-k8s")) as cp:
        kubectl(cp, "apply", "--server-side", "-f", str(MANIFEST))
        kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
                *(f"crd/{d['metadata']['name']}" for d in crds.crds()))
        yield cp


@pytest.fixture
def url(cp: ControlPlane) -> Iterator[str]:
    url = f"kubernetes://{cp.admin_kubeconfig}"
    yield url
    with open_store(url) as store:  # leave the next test an empty IPAM
        client = Client(store)
        for cls in IPAM_KINDS:
            for obj in client.list(cls):
                client.delete(cls, obj.meta.name)


def client_of(url: str) -> Client:
    return Client(open_store(url))


def together(count: int, work: Callable[[int], T]) -> list[T | BaseException]:
    """``work(i)`` in ``count`` threads released at one instant (each opens its own store)."""
    gate = threading.Barrier(count)
    results: list[T | BaseException] = [RuntimeError("did not run")] * count

    def run(i: int) -> None:
        gate.wait()
        try:
            results[i] = work(i)
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def nodes(client: Client, *names: str) -> None:
    for name in names:
        client.apply(parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                                     "metadata": {"name": name}}))


def only_leaks(problems: list[Problem]) -> list[Problem]:
    """What is wrong besides allocations no WorkloadEndpoint carries (the drill writes none)."""
    return [p for p in problems if p.kind != "leaked-address"]


def drill(url: str, processes: int, allocations: int, pool: str) -> DrillResult:
    """The drill on ``url`` with 4 nodes, ``ipam check`` at the barrier (nothing wrong but
    the allocations no endpoint carries: the drill writes none) and after (nothing)."""
    with open_store(url) as store:
        nodes(Client(store), *(f"drill-{n}" for n in range(4)))
    ensure_pool(url, pool, 26)
    seen: dict[str, list[Problem]] = {}

    def at_barrier(client: Client) -> None:
        seen["problems"] = check(client)
        blocks = client.list(IPAMBlock)
        affinities = {(a.spec.node, a.spec.cidr): a.spec.state for a in client.list(BlockAffinity)}
        # every block was claimed by one node (the create-if-absent won by one writer) and
        # that node's affinity is confirmed; none is claimed twice
        assert all(b.node is not None for b in blocks)
        assert {(b.node, b.spec.cidr) for b in blocks} == set(affinities)
        assert set(affinities.values()) == {"confirmed"}

    result = run_drill(url, processes=processes, allocations=allocations, nodes=4,
                       at_barrier=at_barrier, phase_timeout=300)
    assert result.problems() == []
    assert len(result.held_at_barrier) == processes * allocations
    assert not only_leaks(seen["problems"])
    assert len(seen["problems"]) == processes * allocations
    assert result.blocks_after_cleanup == 0
    with open_store(url) as store:
        assert check(Client(store)) == []
    return result


def compare(url: str, tmp_path: Path, processes: int, allocations: int, pool: str) -> None:
    """The drill on Kubernetes, then on SQLite; both rates printed side by side."""
    for name, where in (("kubernetes", url), ("sqlite", f"sqlite://{tmp_path}/ipam.db")):
        result = drill(where, processes, allocations, pool)
        assign_rate, release_rate = result.rates()
        print(f"\nipam-drill {name:10s} {processes}x{allocations}: {result.seconds:5.1f} s,"
              f" assign {assign_rate:4.0f}/s, release {release_rate:4.0f}/s", end="")


def test_drill_one_process(url: str, tmp_path: Path) -> None:
    compare(url, tmp_path, 1, 100, "198.19.64.0/24")


def test_drill_eight_processes(url: str, tmp_path: Path) -> None:
    """8 processes x 50 allocations, two processes per node: 400 addresses of 512."""
    compare(url, tmp_path, 8, 50, "198.19.64.0/23")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_eight_processes_full(url: str, tmp_path: Path) -> None:
    """8 x 250: 2000 addresses of 2048, as on SQLite and etcd. 85 s on an idle 2-core
    machine, 2-3 minutes when it is busy; the API server's CPU is the limit."""
    compare(url, tmp_path, 8, 250, "198.19.64.0/21")


def test_eight_clients_race_for_one_block_and_one_wins(url: str) -> None:
    cidr = ipaddress.ip_network("198.19.40.0/26")
    ensure_pool(url, str(cidr), 26, name="one")

    def claim(i: int) -> bool:
        with open_store(url) as store:
            return IPAM(Client(store)).records.claim(f"n{i}", cidr, strict_affinity=False,
                                                     reservation=None)

    wins = together(8, claim)
    assert sorted(wins, key=str) == [False] * 7 + [True]
    winner = f"n{wins.index(True)}"
    with open_store(url) as store:
        client = Client(store)
        [block] = client.list(IPAMBlock)
        assert block.node == winner
        [aff] = client.list(BlockAffinity)  # the losers removed their pending claims
        assert (aff.spec.node, aff.spec.state) == (winner, "confirmed")


def test_two_nodes_borrow_from_each_other_without_strict_affinity(url: str) -> None:
    """Two /26 blocks; node a wants 80 addresses and node b 48, both at once. However the
    blocks fall (one each, or both to the faster node), someone must borrow, and every
    address is handed out once. With WorkloadEndpoints carrying them, ipam check is clean;
    the 129th address is refused."""
    ensure_pool(url, "198.19.96.0/25", 26, name="pair")
    want = {"node-a": 80, "node-b": 48}
    with open_store(url) as store:
        client = Client(store)
        nodes(client, *want)
        client.apply(parse_manifest({"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": "borrow"}}))

    def allocate(i: int) -> list[tuple[str, str]]:
        node = sorted(want)[i]
        with open_store(url) as store:
            ipam = IPAM(Client(store))
            return [(f"{node}.{k}", str(a)) for k in range(want[node])
                    for a in ipam.assign(f"{node}.{k}", node, num_v4=1, num_v6=0,
                                         attrs={"node": node}).addresses]

    results = together(2, allocate)
    assert not [r for r in results if isinstance(r, BaseException)], results
    held = [pair for r in results if not isinstance(r, BaseException) for pair in r]
    assert len(held) == 128 == len({a for _, a in held})
    with open_store(url) as store:
        client = Client(store)
        blocks = client.list(IPAMBlock)
        assert len(blocks) == 2 and all(not b.spec.unallocated for b in blocks)
        assert {b.node for b in blocks} <= set(want)
        affine = {b.spec.cidr: b.node for b in blocks}
        borrowed = Counter(h.split(".")[0] for h, a in held
                           if affine[_block_of(blocks, a)] != h.split(".")[0])
        assert sum(borrowed.values()) >= 16, borrowed
        for handle, address in held:
            node = handle.split(".")[0]
            client.create(WorkloadEndpoint(
                ObjectMeta(endpoint_name(node, handle.replace(".", "-")), "borrow"),
                WorkloadEndpointSpec(node=node, pod=handle.replace(".", "-"),
                                     ip_networks=(ipaddress.ip_network(address),))))
        assert check(client) == []
        with pytest.raises(PoolExhausted):
            IPAM(client).assign("node-a.extra", "node-a", num_v4=1, num_v6=0)
        for wep in client.list(WorkloadEndpoint, "borrow"):
            client.delete(WorkloadEndpoint, wep.meta.name, "borrow")


def _block_of(blocks: list[IPAMBlock], address: str) -> ipaddress.IPv4Network:
    ip = ipaddress.ip_address(address)
    cidr = next(b.spec.cidr for b in blocks if ip in b.spec.cidr)
    assert isinstance(cidr, ipaddress.IPv4Network)
    return cidr


def test_release_is_idempotent_even_from_two_clients_at_once(url: str) -> None:
    ensure_pool(url, "198.19.100.0/24", 26, name="rel")
    with open_store(url) as store:
        ipam = IPAM(Client(store))
        held = {f"h{k}": ipam.assign(f"h{k}", "n1", num_v4=1, num_v6=0).addresses[0]
                for k in range(40)}

    def release(i: int) -> list[str]:
        with open_store(url) as store:
            ipam = IPAM(Client(store))
            return [str(a) for h in held for a in ipam.release_handle(h)]

    results = together(2, release)
    released = [a for r in results if not isinstance(r, BaseException) for a in r]
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted(released) == sorted(str(a) for a in held.values())  # each exactly once
    with open_store(url) as store:
        client = Client(store)
        ipam = IPAM(client)
        assert [ipam.release_handle(h) for h in held] == [()] * len(held)  # and again
        assert client.list(IPAMHandle) == []
        assert all(blk.is_empty(b.spec) for b in client.list(IPAMBlock))
        assert ipam.release_empty_blocks("n1") and client.list(IPAMBlock) == []
        assert client.list(BlockAffinity) == []


def test_derived_names_are_accepted_where_the_old_ones_were_refused(url: str) -> None:
    """Hostile ids (upper case, '_', unicode, 253-character nodes, 246-character pods):
    the names IPAM and the agent derive are stored; handles round-trip through assign
    and release; the names tabby derived before are refused by the API server."""
    ensure_pool(url, "198.19.104.0/24", 26, name="names")
    ensure_pool(url, "fd7a:bb1e:104::/120", 122, name="names6")
    with open_store(url) as store:
        client = Client(store)
        ipam = IPAM(client)
        for hid in ("Tabby_Net.ABC.Eth0", f"k8s_pod_network.{CID}.eth\u0130",
                    f"tabby.{LONG_POD}.eth0", "net.c.\u044d\u0444\u0438\u04400", "-x-"):
            got = ipam.assign(hid, LONG_NODE, num_v4=1, num_v6=1)
            stored = client.get(IPAMHandle, handle_name(hid))
            assert stored.spec.handle_id == hid
            assert ipam.addresses_of(hid) == got.addresses
            assert ipam.release_handle(hid) == got.addresses
        assert {a.meta.name for a in client.list(BlockAffinity)} == {
            affinity_name(LONG_NODE, c) for c in ipam.affine_blocks(LONG_NODE)}
        assert len(ipam.affine_blocks(LONG_NODE)) == 2  # found again by name prefix
        with pytest.raises(ValidationError, match=r"metadata\.name"):
            client.create(IPAMHandle(ObjectMeta(legacy_handle_name("Tabby_Net.ABC.Eth0")),
                                     IPAMHandleSpec("Tabby_Net.ABC.Eth0", (("x", 1),))))
        with pytest.raises(NotFound):  # what the legacy read asks: refused names are absent
            client.get(IPAMHandle, legacy_handle_name("Tabby_Net.ABC.Eth0"))
        client.apply(Namespace(ObjectMeta("names")))
        for node, pod, iface in ((LONG_NODE, LONG_POD, "Eth0"), ("node-1", LONG_POD, "eth0"),
                                 ("node-1", "web-0", "net_1")):
            name = endpoint_name(node, pod, iface)
            client.create(WorkloadEndpoint(ObjectMeta(name, "names"), WorkloadEndpointSpec(
                node=node, pod=pod, endpoint=iface)))
            assert client.get(WorkloadEndpoint, name, "names").spec.endpoint == iface
            client.delete(WorkloadEndpoint, name, "names")
        assert ipam.release_empty_blocks(LONG_NODE)
        assert client.list(BlockAffinity) == []
