"""CNI ADD returns programmed, and a storm of ADDs shares the agent's passes.

The agent over a memory store, its applier on FakeNetlink and a FakeNft whose
transactions take a while (so that passes overlap the ADDs). Each "ADD" puts
its endpoint into the cache under the dataplane lock, as the pod handler does,
takes a ticket there and waits for a pass that covers it: by then its host
route must be in the kernel, and eight ADDs at once must not cost eight passes
(they did: 112 passes for 100 ADDs from 8 workers in bench/cni.py).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tabby.agent.daemon import Agent, AgentConfig
from tabby.model import WorkloadEndpoint
from tabby.store.client import Client
from tabby.store.memory import MemoryStore
from tabby.testing.fakes import FakeNetlink, FakeNft
from tests.unit.test_agent_apply import applier, ours
from tests.unit.test_agent_cache import node

PODS = 8


class SlowNft(FakeNft):
    """A FakeNft whose transactions take ``delay`` seconds, as a loaded machine's do."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def run(self, script: str) -> None:
        time.sleep(self.delay)
        super().run(script)


def endpoint(i: int) -> WorkloadEndpoint:
    return WorkloadEndpoint.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"node-1-k8s-p{i}-eth0", "namespace": "default"},
        "spec": {"node": "node-1", "pod": f"p{i}", "interfaceName": veth(i),
                 "ipNetworks": [f"198.19.0.{i + 1}/32"], "containerID": f"c{i}"}})


def veth(i: int) -> str:
    return f"tab{i:012x}"


def agent_on_fakes(kernel: FakeNetlink, delay: float) -> tuple[Agent, Client]:
    store = MemoryStore()
    client = Client(store)
    client.create(node("node-1", "198.18.0.11/24"))
    agent = Agent(AgentConfig(node="node-1"), store)
    agent.applier = applier(kernel, SlowNft(delay))
    agent.cache.load()
    assert agent.sync() and agent.is_ready()  # the first pass
    return agent, client


def test_adds_at_once_return_programmed_and_share_passes() -> None:
    kernel = FakeNetlink()
    for i in range(PODS):  # the pods' veths, as wiring would have made them
        kernel.add_link(veth(i), "veth", peer=f"pod{i}", up=True)
    agent, client = agent_on_fakes(kernel, delay=0.02)
    before = agent.passes
    seen: dict[int, set[str]] = {}

    # Every ADD has written its endpoint and taken its ticket before any asks to be
    # programmed (as a burst of ADDs does under the dataplane lock); then all ask at once.
    # One pass covers every ticket: the first asker runs it, the rest join it or find their
    # ticket covered. (Timing-free: an earlier version raced threads and a 20 ms pass, and
    # its bound failed in CI when the scheduler spread the threads out.)
    tickets = []
    for i in range(PODS):
        stored = client.create(endpoint(i))
        with agent.lock:
            agent.cache.put(stored)
            tickets.append(agent.ticket())

    def ask(i: int) -> bool:
        done = agent.programmed(tickets[i])
        with agent.lock:  # no pass is half-way through the kernel now
            seen[i] = ours(kernel)
        return done

    with ThreadPoolExecutor(PODS) as pool:
        assert all(pool.map(ask, range(PODS)))
    for i in range(PODS):
        assert f"198.19.0.{i + 1}/32" in seen[i], i  # programmed when its ADD returned
    assert agent.passes - before == 1


def test_an_add_joins_the_pass_that_snapshots_after_it() -> None:
    kernel = FakeNetlink()
    kernel.add_link(veth(0), "veth", peer="pod0", up=True)
    agent, client = agent_on_fakes(kernel, delay=0.05)
    stored = client.create(endpoint(0))
    with agent.lock:
        loop = threading.Thread(target=agent.sync)  # the loop's pass, on a watch event
        loop.start()
        deadline = time.monotonic() + 5
        while not agent.running() and time.monotonic() < deadline:
            time.sleep(0.001)  # started: it waits for this lock to take its snapshot
        agent.cache.put(stored)
        ticket = agent.ticket()
    time.sleep(0.01)  # the loop's pass takes its snapshot (and then waits on nft)
    before = agent.passes
    assert agent.programmed(ticket)
    loop.join()
    assert agent.passes - before == 1  # the loop's pass covered the ADD: none of its own
    assert "198.19.0.1/32" in ours(kernel)
