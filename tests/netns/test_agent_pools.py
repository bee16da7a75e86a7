"""A pool replaced a moment before a pod is added: the pod's address comes from
the new pool, never the deleted one (the agent once took the pools for CNI ADD
from its watch cache, which can lag the store by a pass; a benchmark caught
pods getting addresses of a pool deleted milliseconds earlier)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

import pytest

from tabby.lab.pods import LabPods
from tabby.lab.state import LabState, load, require
from tabby.model import IPPool
from tests.netns.test_lab_cluster import assert_torn_down, ensure_gone, pod, tabby

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "tpl"
NEW = "198.19.200.0/24"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    ensure_gone(LAB)
    try:
        tabby("lab", "up", "--name", LAB, "--nodes", "1", lab=LAB)
        yield require(LAB)
    finally:
        state = load(LAB)
        if state is not None:
            tabby("lab", "down", "--name", LAB, lab=LAB)
            assert_torn_down(state)


def test_a_pool_replaced_just_before_add_is_not_used(lab: LabState) -> None:
    with LabPods.open(LAB) as driver:
        client = driver.client
        old = [p for p in client.list(IPPool) if p.version == 4]
        assert old, "the lab has an IPv4 pool"
        new = IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                    "metadata": {"name": "replacement"},
                                    "spec": {"cidr": NEW, "blockSize": 26}})
        for p in old:
            client.delete(IPPool, p.meta.name)
        client.create(new)
        assert driver.apply_pod(pod("right-after", node="node-1")) == "created"
        record = require(LAB).pod("default", "right-after")
        assert record is not None and record.ip(4) is not None
        assert record.ip(4) in ipaddress.ip_network(NEW), record.ips
