"""Requests for one attachment are served one at a time (issue 14: two ADDs at once).

The agent's real PodHandler over a memory store, with the pod wired into
FakeNetlink. A runtime that sends two ADDs for one container at once used to
get two different addresses (13 of 20 trials against a lab): both requests
read "no handle yet" and both assigned. The IPAM handle read is slowed down
here, so that without the per-attachment lock the second request always reads
it before the first assigns.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tabby.agent.cache import StoreCache
from tabby.agent.handler import AgentPodHandler, AttachmentLocks
from tabby.cni.protocol import CNIRequest
from tabby.dataplane.pods import PodWirer
from tabby.ipam import IPAM
from tabby.model import IPPool
from tabby.store.client import Client
from tabby.store.memory import MemoryStore
from tabby.testing.fakes import FakeNetlink
from tests.unit.test_agent_cache import node

NETNS = "/var/run/netns/pod-a"


@pytest.fixture
def handler() -> AgentPodHandler:
    client = Client(MemoryStore())
    client.create(node("node-1", "198.18.0.11/24"))
    client.create(IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                        "metadata": {"name": "p4"},
                                        "spec": {"cidr": "198.19.0.0/24", "blockSize": 29}}))
    cache = StoreCache(client.store, "node-1")
    cache.load()
    kernel = FakeNetlink()
    kernel.add_netns(NETNS)
    wirer = PodWirer(kernel.counts, netlink=kernel.open, netns_exists=kernel.netns_exists)
    h = AgentPodHandler(node="node-1", client=client, cache=cache, wirer=wirer,
                        lock=threading.Lock(), ready=lambda: True)
    records = h.ipam.records
    read = records.handle

    def slow_read(*args: Any, **kwargs: Any) -> Any:
        got = read(*args, **kwargs)
        time.sleep(0.05)  # the window two concurrent ADDs fell into
        return got
    records.handle = slow_read  # type: ignore[method-assign]
    return h


def add(container: str) -> CNIRequest:
    return CNIRequest("ADD", container, NETNS, "eth0",
                      {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "a"}, "",
                      {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tabby-cni",
                       "ipam": {"assign_ipv4": "true", "assign_ipv6": "false"}})


def test_two_adds_for_one_container_get_the_same_addresses(handler: AgentPodHandler) -> None:
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(handler.add, [add("c1"), add("c1")]))
    first, second = ([str(ip.address) for ip in r.ips] for r in results)
    assert first == second and len(first) == 1
    held = IPAM(handler.client).addresses_of("k8s-pod-network.c1.eth0")
    assert [str(a) for a in held] == [first[0].split("/")[0]]
    assert len(handler.attachments) == 0  # the lock went with the last request


def test_different_containers_do_not_wait_for_each_other() -> None:
    locks = AttachmentLocks()
    order: list[str] = []
    with locks.held("c1", "eth0"):
        other = threading.Thread(target=lambda: _hold(locks, "c2", order))
        other.start()
        other.join(timeout=2)
        order.append("c1")
    assert order == ["c2", "c1"]


def _hold(locks: AttachmentLocks, container: str, order: list[str]) -> None:
    with locks.held(container, "eth0"):
        order.append(container)
