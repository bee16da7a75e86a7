"""Two overlapping IPPools created at the same moment: exactly one survives (issue 14).

Two `apply` runs creating overlapping pools under different names both
succeeded in 5 of 20 trials: each checked for overlaps before the other had
written. Here two clients, each with its own connection to one SQLite file,
race through a widened window (the check before the write is slowed down, so
both always pass it); the re-check after the write must leave one pool and one
success, and refuse the other with the field path and the pool it overlaps.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tabby.errors import ValidationError
from tabby.model import IPPool
from tabby.store import client as client_module
from tabby.store.client import Client
from tabby.store.sqlite import SQLiteStore


def pool(name: str, cidr: str) -> IPPool:
    return IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                 "metadata": {"name": name}, "spec": {"cidr": cidr}})


@pytest.fixture
def slow_check(monkeypatch: pytest.MonkeyPatch) -> None:
    admit = client_module._ADMISSION[IPPool.KIND.resource]

    def slow(client: Client, obj: object) -> None:
        admit(client, obj)  # type: ignore[arg-type]
        time.sleep(0.05)  # both racers pass the check before either writes
    monkeypatch.setitem(client_module._ADMISSION, IPPool.KIND.resource, slow)


def race(path: Path, pools: list[IPPool]) -> tuple[list[str], list[str]]:
    """Create ``pools`` at once, one client each; (created names, refusal texts)."""
    stores = [SQLiteStore(str(path)) for _ in pools]
    created: list[str] = []
    refused: list[str] = []
    start = threading.Barrier(len(pools))

    def create(store: SQLiteStore, p: IPPool) -> None:
        start.wait()
        try:
            Client(store).create(p)
            created.append(p.meta.name)
        except ValidationError as exc:
            refused.append(str(exc))
    threads = [threading.Thread(target=create, args=(s, p)) for s, p in zip(stores, pools,
                                                                            strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for s in stores:
        s.close()
    return created, refused


@pytest.mark.usefixtures("slow_check")
def test_racing_overlapping_pools_leave_exactly_one(tmp_path: Path) -> None:
    for trial in range(5):
        path = tmp_path / f"race-{trial}.db"
        created, refused = race(path, [pool(f"a{trial}", "198.19.0.0/16"),
                                       pool(f"b{trial}", "198.19.128.0/17")])
        with SQLiteStore(str(path)) as store:
            left = [p.meta.name for p in Client(store).list(IPPool)]
        assert len(created) == 1 and left == created, (trial, created, left, refused)
        [why] = refused
        assert "spec.cidr" in why and "overlaps IPPool/" in why


@pytest.mark.usefixtures("slow_check")
def test_pools_that_do_not_overlap_both_stay(tmp_path: Path) -> None:
    created, refused = race(tmp_path / "apart.db", [pool("a", "198.19.0.0/17"),
                                                    pool("b", "198.19.128.0/17")])
    assert sorted(created) == ["a", "b"] and refused == []
