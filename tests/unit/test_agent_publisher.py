"""NodePublisher: the node's own writes to the store, and into the cache at once.

Over a real in-memory store: a VXLAN pool gives the node a VTEP (address from
IPAM, MAC on the Node) that the very next snapshot carries, a second run writes
nothing, a pool that stops asking for VXLAN takes the VTEP back; an endpoint
follows its pod's labels; with an address source (a fake here; HostAddresses in
the agent) the node registers itself and its BGP addresses follow the host's.
The pass (NodeCalculator) never writes: the publisher is the only writer of the
loop.
"""

from __future__ import annotations

import ipaddress

from tabby.agent.autodetect import Detected
from tabby.agent.cache import StoreCache
from tabby.agent.publisher import NodePublisher
from tabby.calc.vxlan import tunnel_mac
from tabby.ipam import IPAM
from tabby.marks import tunnel_handle
from tabby.model import IPPool, Node, WorkloadEndpoint
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


# -- the Node's addresses (self-registration) ------------------------------------------------

class FakeSource:
    """An address source that says what the test sets (stands in for HostAddresses)."""

    def __init__(self, v4: str = "", v6: str = "") -> None:
        self.detected = Detected()
        self.set(v4=v4, v6=v6)

    def set(self, problems: tuple[str, ...] = (), v4: str = "", v6: str = "") -> None:
        self.detected = Detected({v: ipaddress.ip_interface(a) for v, a in ((4, v4), (6, v6))
                                  if a}, problems)

    def detect(self) -> Detected:
        return self.detected


def registering(source: FakeSource, *, seeded: Node | None = None
                ) -> tuple[Client, StoreCache, NodePublisher]:
    client = Client(MemoryStore())
    if seeded is not None:
        client.create(seeded)
    cache = StoreCache(client.store, "node-1")
    cache.load()
    return client, cache, NodePublisher("node-1", client, cache, addresses=source)


def bgp_of(client: Client) -> tuple[str, str]:
    b = client.get(Node, "node-1").spec.bgp
    return str(b.ipv4_address), str(b.ipv6_address)


def test_the_agent_registers_its_node_with_the_detected_addresses() -> None:
    client, cache, publisher = registering(FakeSource(v4="198.18.0.11/24",
                                                      v6="fd7a:bb1e::11/64"))
    assert publisher.periodic
    published = publisher.run(cache.snapshot(), full=True)
    assert (published.addresses, published.problems, published.wrote) == (1, [], True)
    assert bgp_of(client) == ("198.18.0.11/24", "fd7a:bb1e::11/64")
    local = cache.snapshot().node("node-1")  # in the cache at once
    assert local is not None and str(local.spec.bgp.ipv4_address) == "198.18.0.11/24"
    assert publisher.run(cache.snapshot(), full=False).addresses == 0  # nothing changed


def test_a_node_registered_in_a_vxlan_pool_gets_its_vtep_in_the_same_run() -> None:
    client, cache, publisher = registering(FakeSource(v4="198.18.0.11/24"))
    client.create(IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                        "metadata": {"name": "p4"},
                                        "spec": {"cidr": "198.19.0.0/16",
                                                 "vxlanMode": "Always"}}))
    cache.load()
    published = publisher.run(cache.snapshot(), full=False)
    assert (published.addresses, published.vteps, published.problems) == (1, 1, [])
    assert client.get(Node, "node-1").spec.vxlan.address(4) is not None


def test_a_changed_host_address_is_written_and_the_rest_of_the_node_kept() -> None:
    seeded = Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                                 "metadata": {"name": "node-1", "labels": {"rack": "r1"}},
                                 "spec": {"bgp": {"ipv4Address": "198.18.0.11/24",
                                                  "ipv6Address": "fd7a:bb1e::11/64",
                                                  "asNumber": 64512}}})
    source = FakeSource(v4="198.18.0.11/24")
    client, cache, publisher = registering(source, seeded=seeded)
    assert publisher.run(cache.snapshot(), full=False).addresses == 0
    source.set(v4="198.18.0.12/24")  # IPv6 not managed (--ip6 none): left as stored
    assert publisher.run(cache.snapshot(), full=False).addresses == 1
    stored = client.get(Node, "node-1")
    assert bgp_of(client) == ("198.18.0.12/24", "fd7a:bb1e::11/64")
    assert (stored.spec.bgp.as_number, dict(stored.meta.labels)) == (64512, {"rack": "r1"})


def test_a_family_the_source_cannot_decide_keeps_its_address_and_is_a_problem() -> None:
    seeded = node("node-1", "198.18.0.11/24")
    source = FakeSource()
    source.set(problems=("IPv4 address: nothing on wlan0",), v6="fd7a:bb1e::11/64")
    client, cache, publisher = registering(source, seeded=seeded)
    published = publisher.run(cache.snapshot(), full=False)
    assert published.problems == ["node addresses: IPv4 address: nothing on wlan0"]
    assert bgp_of(client) == ("198.18.0.11/24", "fd7a:bb1e::11/64")


def test_a_node_deleted_after_registration_is_not_made_again() -> None:
    client, cache, publisher = registering(FakeSource(v4="198.18.0.11/24"))
    publisher.run(cache.snapshot(), full=False)
    client.delete(Node, "node-1")  # the node controller: its Kubernetes Node went
    cache.load()
    published = publisher.run(cache.snapshot(), full=False)
    assert (published.addresses, published.problems) == (0, [])
    assert client.try_get(Node, "node-1") is None


def test_a_node_the_cache_has_not_seen_yet_is_updated_not_created() -> None:
    client, cache, publisher = registering(FakeSource(v4="198.18.0.12/24"))
    client.create(node("node-1", "198.18.0.11/24"))  # the installer, after our listing
    assert publisher.run(cache.snapshot(), full=False).addresses == 1
    assert bgp_of(client) == ("198.18.0.12/24", "None")


def test_without_a_source_a_missing_node_is_left_missing() -> None:
    client = Client(MemoryStore())
    cache = StoreCache(client.store, "node-1")
    cache.load()
    publisher = NodePublisher("node-1", client, cache)
    assert not publisher.periodic
    assert publisher.run(cache.snapshot(), full=True).wrote is False
    assert client.try_get(Node, "node-1") is None
