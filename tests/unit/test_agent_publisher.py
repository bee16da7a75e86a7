"""NodePublisher: the node's own writes to the store, and into the cache at once.

Over a real in-memory store: a VXLAN pool gives the node a VTEP (address from
IPAM, MAC on the Node) that the very next snapshot carries, a second run writes
nothing, a pool that stops asking for VXLAN takes the VTEP back; an endpoint
follows its pod's labels. The pass (NodeCalculator) never writes: the
publisher is the only writer of the loop.
"""

from __future__ import annotations

from tabby.agent.cache import StoreCache
from tabby.agent.publisher import NodePublisher
from tabby.calc.vxlan import tunnel_mac
from tabby.ipam import IPAM
from tabby.marks import tunnel_handle
from tabby.model import IPPool, WorkloadEndpoint
from tabby.store.client import Client
from tabby.store.memory import MemoryStore
from tests.unit.test_agent_cache import node, pod, wep


def setup(vxlan: str) -> tuple[Client, StoreCache, NodePublisher]:
    client = Client(MemoryStore())
    client.create(node("node-1", "198.18.0.11/24"))
    client.create(IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                        "metadata": {"name": "p4"},
                                        "spec": {"cidr": "198.19.0.0/16",
                                                 "vxlanMode": vxlan}}))
    cache = StoreCache(client.store, "node-1")
    cache.load()
    return client, cache, NodePublisher("node-1", client, cache)


def test_a_vxlan_pool_gets_the_node_a_vtep_the_next_snapshot_carries() -> None:
    client, cache, publisher = setup("Always")
    published = publisher.run(cache.snapshot(), full=True)
    assert (published.vteps, published.problems, published.wrote) == (1, [], True)
    local = cache.snapshot().node("node-1")  # from the cache: no watch event needed
    assert local is not None
    vtep = local.spec.vxlan.address(4)
    assert vtep is not None and str(vtep).startswith("198.19.")
    assert local.spec.vxlan.mac_of(4) == tunnel_mac("node-1", 4)
    assert IPAM(client).addresses_of(tunnel_handle("node-1", 4)) == (vtep,)
    again = publisher.run(cache.snapshot(), full=True)
    assert (again.vteps, again.wrote) == (0, False)


def test_a_pool_that_stops_asking_for_vxlan_takes_the_vtep_back() -> None:
    client, cache, publisher = setup("Always")
    publisher.run(cache.snapshot(), full=False)
    pool = client.get(IPPool, "p4", "")
    changed = IPPool.from_manifest({**pool.to_manifest(), "spec": {
        **pool.to_manifest()["spec"], "vxlanMode": "Never"}})
    cache.put(client.update(changed, pool))
    assert publisher.run(cache.snapshot(), full=False).vteps == 1
    local = cache.snapshot().node("node-1")
    assert local is not None and local.spec.vxlan.address(4) is None
    assert IPAM(client).addresses_of(tunnel_handle("node-1", 4)) == ()


def test_endpoints_follow_their_pods_labels() -> None:
    client, cache, publisher = setup("Never")
    client.create(wep("node-1", "a"))
    cache.put(client.create(pod("a", {"app": "web"})))
    cache.load()
    published = publisher.run(cache.snapshot(), full=False)
    assert published.endpoints == 1
    stored = client.get(WorkloadEndpoint, "node-1-k8s-a-eth0", "default")
    assert stored.meta.labels.get("app") == "web"
    assert cache.snapshot().local_endpoints("node-1")[0].meta.labels.get("app") == "web"
    assert publisher.run(cache.snapshot(), full=False).endpoints == 0
