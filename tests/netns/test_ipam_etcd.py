"""IPAM on a real 3-member etcd cluster: 8 processes x 250 allocations, then release.

Every process opens its own EtcdStore; two processes share each node, so they
race for the same blocks, and the pool is sized so that nodes end up borrowing.
The members keep their data on tmpfs: the drill measures IPAM's compare-and-
swap, not the disk's fsync.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabby.ipam.drill import ensure_pool, run_drill
from tabby.testing.etcd import EtcdCluster

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="needs the etcd binary (apt-get install etcd-server)")


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with EtcdCluster(3, base_dir=base) as c:
        yield c


def test_eight_processes_against_etcd(cluster: EtcdCluster) -> None:
    ensure_pool(cluster.url, "198.19.64.0/21", 26)  # 2048 addresses for 2000 allocations
    result = run_drill(cluster.url, processes=8, allocations=250, nodes=4)
    assert result.problems() == []
    assert len(result.held_at_barrier) == 2000
    assert result.blocks_after_cleanup == 0
