"""A block an ADD claims is in the agent's cache when the ADD's own pass runs.

The pass a CNI ADD waits for then hands the new block to BIRD (and routes its
blackhole), instead of a later pass when the watch brings the block (~70 ms
later: the poll and the burst folding), so other nodes route the pod sooner.
The agent's real PodHandler over a memory store, the pod wired into FakeNetlink;
the cache is never fed watch events here, so only the handler can have put it.
"""

from __future__ import annotations

import threading

from tabby.agent.cache import StoreCache
from tabby.agent.handler import AgentPodHandler
from tabby.cni.protocol import CNIRequest
from tabby.dataplane.pods import PodWirer
from tabby.model import IPPool
from tabby.store.client import Client
from tabby.store.memory import MemoryStore
from tabby.testing.fakes import FakeNetlink
from tests.unit.test_agent_cache import node

NETNS = "/var/run/netns/pod-a"


def handler(seen: list[set[str]]) -> AgentPodHandler:
    client = Client(MemoryStore())
    client.create(node("node-1", "198.18.0.11/24"))
    client.create(IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                        "metadata": {"name": "p4"},
                                        "spec": {"cidr": "198.19.0.0/24", "blockSize": 30}}))
    cache = StoreCache(client.store, "node-1")
    cache.load()
    kernel = FakeNetlink()
    for i in range(6):
        kernel.add_netns(f"{NETNS}{i}")
    wirer = PodWirer(kernel.counts, netlink=kernel.open, netns_exists=kernel.netns_exists)

    class Passes:  # the agent's side of "ADD returns programmed"
        def ticket(self) -> int:
            return 0

        def programmed(self, ticket: int) -> bool:  # what the pass the ADD waits for sees
            seen.append({str(b.spec.cidr) for b in cache.snapshot().blocks
                         if b.node == "node-1"})
            return True
    return AgentPodHandler(node="node-1", client=client, cache=cache, wirer=wirer,
                           lock=threading.Lock(), ready=lambda: True, programmer=Passes())


def add(i: int) -> CNIRequest:
    return CNIRequest("ADD", f"c{i}", f"{NETNS}{i}", "eth0",
                      {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": f"p{i}"}, "",
                      {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tabby-cni",
                       "ipam": {"assign_ipv4": "true", "assign_ipv6": "false"}})


def test_the_adds_own_pass_sees_the_block_it_claimed() -> None:
    seen: list[set[str]] = []
    h = handler(seen)
    for i in range(6):  # /30 blocks: 4 addresses each, so the fifth pod claims a second
        h.add(add(i))
    assert seen[0] == {"198.19.0.0/30"}
    assert seen[3] == {"198.19.0.0/30"}
    assert seen[4] == {"198.19.0.0/30", "198.19.0.4/30"}
