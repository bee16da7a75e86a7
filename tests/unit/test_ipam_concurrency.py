"""Races: threads claiming one block, and processes allocating against one SQLite file."""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tabby.ipam import IPAM
from tabby.ipam import blocks as blk
from tabby.ipam.drill import ensure_pool, run_drill
from tabby.model import BlockAffinity, IPAMBlock, IPAMHandle, parse_manifest
from tabby.store.client import Client
from tabby.store.memory import MemoryStore

T = TypeVar("T")
ONE_BLOCK = ipaddress.ip_network("198.19.40.0/26")


def together(count: int, work: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``work(i)`` in ``count`` threads released at one instant."""
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
        t.join(timeout=60)
    return results


def one_block_pool() -> tuple[Client, IPAM]:
    client = Client(MemoryStore())
    client.create(parse_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "one"},
        "spec": {"cidr": str(ONE_BLOCK), "blockSize": 26}}))
    return client, IPAM(client)


def test_eight_nodes_race_for_one_block_and_one_wins() -> None:
    client, ipam = one_block_pool()
    wins = together(8, lambda i: ipam.records.claim(
        f"n{i}", ONE_BLOCK, strict_affinity=False, reservation=None))
    assert sorted(wins, key=str) == [False] * 7 + [True]
    winner = f"n{wins.index(True)}"
    [block] = client.list(IPAMBlock)
    assert block.node == winner
    [aff] = client.list(BlockAffinity)  # the losers removed their pending claims
    assert (aff.spec.node, aff.spec.state) == (winner, "confirmed")


def test_racing_assigns_share_one_block_without_duplicates() -> None:
    client, ipam = one_block_pool()
    got = together(8, lambda i: ipam.assign(f"h{i}", f"n{i}", num_v4=8, num_v6=0))
    addresses = [a for g in got if not isinstance(g, BaseException) for a in g.addresses]
    assert not [g for g in got if isinstance(g, BaseException)]
    assert len(addresses) == 64 == len(set(addresses))  # the whole block, each once
    [block] = client.list(IPAMBlock)
    assert blk.used_count(block.spec) == 64 and not block.spec.unallocated
    assert len(client.list(BlockAffinity)) == 1
    assert sum(n for h in client.list(IPAMHandle) for _, n in h.spec.blocks) == 64


def test_racing_assigns_under_strict_affinity_only_the_owner_gets_addresses() -> None:
    client, ipam = one_block_pool()
    client.apply(parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPAMConfiguration",
                                 "metadata": {"name": "default"},
                                 "spec": {"strictAffinity": True}}))
    got = together(8, lambda i: ipam.assign(f"h{i}", f"n{i}", num_v6=0))
    assert Counter(type(g).__name__ for g in got) == {"Assignment": 1, "PoolExhausted": 7}
    assert len(client.list(IPAMHandle)) == 1


def test_threads_of_a_few_nodes_never_hand_out_an_address_twice() -> None:
    client = Client(MemoryStore())
    client.create(parse_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "p"},
        "spec": {"cidr": "198.19.48.0/22", "blockSize": 28}}))
    ipam = IPAM(client)

    def work(i: int) -> list[str]:
        node = f"n{i % 3}"
        out = []
        for k in range(40):
            out += [str(a) for a in ipam.assign(f"t{i}.{k}", node, num_v6=0).addresses]
            if k % 5 == 4:
                ipam.release_handle(f"t{i}.{k - 2}")
        return out

    results = together(8, work)
    assert not [r for r in results if isinstance(r, BaseException)]
    held = [a for i in range(8) for k in range(40) if k % 5 != 2
            for a in ipam.addresses_of(f"t{i}.{k}")]
    assert len(held) == len(set(held)) == 8 * 32
    assert sorted(map(str, held)) == sorted(
        str(blk.address(b.spec, o)) for b in client.list(IPAMBlock)
        for o, _ in blk.allocated(b.spec))


def test_eight_processes_against_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/ipam.db"
    ensure_pool(url, "198.19.64.0/21", 26)  # 2048 addresses for 2000 allocations
    result = run_drill(url, processes=8, allocations=250, nodes=4)
    assert result.problems() == []
    assert len(result.held_at_barrier) == 2000
    assert result.blocks_after_cleanup == 0
