"""CNI DEL retires a pod's veth pair and the reaper deletes retired pairs later, in bulk.

PodWirer and the agent's PodHandler over FakeNetlink and a memory store; the
reaper's thread against a stand-in ``reap`` that counts. The real kernel's side
(one request deletes the whole link group, peers included) is checked in
tests/netns/test_rtlink_agree.py, and DEL's latency in bench/cni.py.
"""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from tabby.agent.cache import StoreCache
from tabby.agent.handler import AgentPodHandler
from tabby.cni.protocol import CNIRequest
from tabby.dataplane.pods import PodWirer, PodWiring, host_veth_name
from tabby.dataplane.reaper import VethReaper
from tabby.ipam import IPAM
from tabby.marks import ROUTE_PROTOCOL
from tabby.model import IPPool, WorkloadEndpoint
from tabby.store.client import Client
from tabby.store.memory import MemoryStore
from tabby.testing.fakes import FakeNetlink
from tests.unit.test_agent_cache import node
from tests.waiting import wait_for

POD_NS = "/var/run/netns/pod-a"
NETWORK = "k8s-pod-network"


def wirer(kernel: FakeNetlink) -> PodWirer:
    return PodWirer(kernel.counts, netlink=kernel.open, netns_exists=kernel.netns_exists)


def wiring(cid: str, ns: str = POD_NS) -> PodWiring:
    return PodWiring(host_veth_name(cid, "eth0"), ns, "eth0",
                     (ipaddress.ip_interface("198.19.0.5/32"),
                      ipaddress.ip_interface("fd7a:bb1e:1::5/128")))


# -- PodWirer: retire, reap -----------------------------------------------------------

def test_retired_pairs_are_out_of_service_at_once_and_reaped_together() -> None:
    kernel = FakeNetlink()
    for ns in ("/var/run/netns/a", "/var/run/netns/b", "/var/run/netns/c"):
        kernel.add_netns(ns)
    w = wirer(kernel)
    a, b, c = (wiring(x, f"/var/run/netns/{x}") for x in "abc")
    for x in (a, b, c):
        w.wire(x)
    assert w.reap() is False  # nothing retired yet
    assert w.retire(a.host_veth) and w.retire(b.host_veth)
    assert w.retire("tab000000000000") is False
    host_a = kernel.link(a.host_veth)
    assert host_a is not None and not host_a.up  # down: its routes went with it
    host_c = kernel.link(c.host_veth)
    assert host_c is not None
    assert {r.oif for r in kernel.routes(4, ROUTE_PROTOCOL)} == {host_c.index}
    assert w.host_veths() == sorted(x.host_veth for x in (a, b, c))  # not deleted yet
    made = kernel.counts.snapshot()[0]["link_del"]
    assert w.reap() is True
    assert kernel.counts.snapshot()[0]["link_del"] == made + 1  # one request for both
    assert w.host_veths() == [c.host_veth]
    assert kernel.open("/var/run/netns/a").link("eth0") is None  # peers went too
    assert kernel.open("/var/run/netns/c").link("eth0") is not None


def test_wiring_a_retired_pair_again_makes_it_afresh() -> None:
    kernel = FakeNetlink()
    kernel.add_netns(POD_NS)
    w, x = wirer(kernel), wiring("c1")
    w.wire(x)
    w.retire(x.host_veth)
    old = kernel.link(x.host_veth)
    w.wire(x)  # an ADD for the same attachment before the reaper came by
    new = kernel.link(x.host_veth)
    assert old is not None and new is not None and new.up and new.index != old.index
    assert w.reap() is False  # the retired pair is gone, the new one is not retired
    assert w.inspect(x) == []


# -- the reaper's thread ---------------------------------------------------------------

class Reaps:
    def __init__(self, failures: int = 0) -> None:
        self.calls = 0
        self.failures = failures
        self.lock = threading.Lock()

    def __call__(self) -> bool:
        with self.lock:
            self.calls += 1
            if self.failures:
                self.failures -= 1
                raise OSError(16, "Device or resource busy")
        return True


def test_the_thread_reaps_when_kicked_and_at_start() -> None:
    reaps = Reaps()
    reaper = VethReaper(reaps)
    try:
        reaper.start()  # an earlier agent's retired pairs
        wait_for("the first reap", lambda: reaps.calls == 1, 5.0, 0.01)
        reaper.kick()
        wait_for("the second reap", lambda: reaps.calls == 2, 5.0, 0.01)
    finally:
        reaper.close()
    assert reaps.calls == 3  # close deletes what is still retired


def test_a_failed_reap_is_retried() -> None:
    reaps = Reaps(failures=2)
    reaper = VethReaper(reaps, retry=0.01)
    try:
        reaper.kick()
        wait_for("the third reap, one round", lambda: reaps.calls == 3 and reaper.rounds == 1,
                 5.0, 0.01)
    finally:
        reaper.close()


def test_without_a_thread_nothing_happens_until_flushed() -> None:
    reaps = Reaps()
    reaper = VethReaper(reaps, background=False)
    reaper.kick()
    time.sleep(0.05)
    assert reaps.calls == 0
    assert reaper.flush() is True and reaps.calls == 1


# -- the agent's DEL -----------------------------------------------------------------------

@pytest.fixture
def kernel() -> FakeNetlink:
    k = FakeNetlink()
    k.add_netns(POD_NS)
    return k


@pytest.fixture
def handler(kernel: FakeNetlink) -> AgentPodHandler:
    client = Client(MemoryStore())
    client.create(node("node-1", "198.18.0.11/24"))
    client.create(IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                        "metadata": {"name": "p4"},
                                        "spec": {"cidr": "198.19.0.0/24", "blockSize": 29}}))
    cache = StoreCache(client.store, "node-1")
    cache.load()
    w = wirer(kernel)
    return AgentPodHandler(node="node-1", client=client, cache=cache, wirer=w,
                           lock=threading.Lock(), ready=lambda: True,
                           reaper=VethReaper(w.reap, background=False))


def request(command: str, container: str) -> CNIRequest:
    return CNIRequest(command, container, POD_NS, "eth0",
                      {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "a"}, "",
                      {"cniVersion": "1.0.0", "name": NETWORK, "type": "tabby-cni",
                       "ipam": {"assign_ipv4": "true", "assign_ipv6": "false"}})


def test_del_releases_everything_and_leaves_the_pair_to_the_reaper(
        handler: AgentPodHandler, kernel: FakeNetlink) -> None:
    handler.add(request("ADD", "c1"))
    veth = host_veth_name("c1", "eth0")
    handler.delete(request("DEL", "c1"))
    assert handler.client.list(WorkloadEndpoint) == [] and handler.cache.endpoints() == []
    assert IPAM(handler.client).addresses_of(f"{NETWORK}.c1.eth0") == ()
    link = kernel.link(veth)
    assert link is not None and not link.up  # retired: down, unrouted, not yet deleted
    assert kernel.routes(4, ROUTE_PROTOCOL) == []
    assert handler.reaper.flush() is True
    assert kernel.link(veth) is None and kernel.open(POD_NS).link("eth0") is None


def test_add_right_after_del_gets_a_working_pair(handler: AgentPodHandler,
                                                 kernel: FakeNetlink) -> None:
    handler.add(request("ADD", "c1"))
    handler.delete(request("DEL", "c1"))
    result = handler.add(request("ADD", "c1"))  # the reaper has not come by
    veth = host_veth_name("c1", "eth0")
    link = kernel.link(veth)
    assert link is not None and link.up
    assert [str(r.dst) for r in kernel.routes(4, ROUTE_PROTOCOL)] == [
        f"{result.ips[0].address.ip}/32"]
    assert handler.reaper.flush() is False  # nothing retired is left to delete
    assert kernel.link(veth) is not None


def test_gc_deletes_veths_the_runtime_no_longer_lists(handler: AgentPodHandler,
                                                      kernel: FakeNetlink) -> None:
    handler.add(request("ADD", "c1"))
    orphan = wiring("c9")
    kernel.add_netns("/var/run/netns/other")
    wirer(kernel).wire(PodWiring(orphan.host_veth, "/var/run/netns/other", "eth0",
                                 orphan.addresses[:1]))
    handler.gc([("c1", "eth0")])  # retired, then deleted in one request before it answers
    assert kernel.link(orphan.host_veth) is None
    assert handler.reaper.flush() is False
    kept = kernel.link(host_veth_name("c1", "eth0"))
    assert kept is not None and kept.up
