"""The agent end to end, traffic: TCP and UDP across pods, 20 ADDs at once, restarts.

Uses the two-node mini cluster of ``test_agent_cluster`` (its own instance).
Listeners and clients are sockets the test process opens inside the pods'
namespaces; the restart test pings with busybox while both agents restart.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tabby.dataplane.netlink import entered_netns
from tests.netns.test_agent_cluster import (
    Cluster,
    IPAddress,
    PodRef,
    mini_cluster,
    pytestmark,  # noqa: F401 - the same skip conditions apply here
    run,
    wait_for,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from mini_cluster(tmp_path_factory)


class Responder:
    """TCP and UDP listeners on one address inside a pod's namespace, answering its name."""

    def __init__(self, pod: PodRef, address: IPAddress, port: int = 8080) -> None:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        with entered_netns(pod.path):
            self.tcp = socket.socket(family, socket.SOCK_STREAM)
            self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.answer = pod.name.encode()
        for s in (self.tcp, self.udp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((str(address), port))
            s.settimeout(0.2)
        self.tcp.listen(64)
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._serve_tcp, daemon=True),
                        threading.Thread(target=self._serve_udp, daemon=True)]
        for t in self.threads:
            t.start()

    def _serve_tcp(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(self.answer)

    def _serve_udp(self) -> None:
        while not self.stopped.is_set():
            try:
                _, peer = self.udp.recvfrom(64)
            except OSError:
                continue
            self.udp.sendto(self.answer, peer)

    def close(self) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=2)
        self.tcp.close()
        self.udp.close()


def talk(src: PodRef, dst: IPAddress, proto: str, port: int = 8080) -> bytes:
    family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with entered_netns(src.path):
        s = socket.socket(family, kind)
    with s:
        s.settimeout(2)
        s.connect((str(dst), port))
        if proto == "udp":
            s.send(b"hi")
        return s.recv(64)


@pytest.fixture
def responders() -> Iterator[list[Responder]]:
    made: list[Responder] = []
    try:
        yield made
    finally:
        for r in made:
            r.close()



@pytest.mark.parametrize("version", [4, 6])
def test_tcp_and_udp_same_node_and_cross_node(cluster: Cluster, responders: list[Responder],
                                              version: int) -> None:
    a = cluster.add_pod(1, f"talk{version}-a")
    b = cluster.add_pod(1, f"talk{version}-b")
    c = cluster.add_pod(2, f"talk{version}-c")
    try:
        for target in (b, c, a):
            responders.append(Responder(target, target.address(version)))
        for src, dst in ((a, b), (a, c), (c, a), (b, c)):
            for proto in ("tcp", "udp"):
                answer = wait_for(f"{proto} {src.name} -> {dst.name} over IPv{version}",
                                  lambda s=src, d=dst, p=proto: _try_talk(s, d, version, p))
                assert answer == dst.name.encode()
    finally:
        for r in responders:
            r.close()
        responders.clear()
        for pod in (a, b, c):
            cluster.remove_pod(pod)


def _try_talk(src: PodRef, dst: PodRef, version: int, proto: str) -> bytes | None:
    try:
        return talk(src, dst.address(version), proto)
    except OSError:
        return None


def test_twenty_concurrent_adds(cluster: Cluster, responders: list[Responder]) -> None:
    names = [f"conc-{i}" for i in range(20)]
    probe = cluster.add_pod(2, "conc-probe")
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        pods = list(pool.map(lambda n: cluster.add_pod(1, n), names))
    elapsed = time.monotonic() - started
    try:
        addresses = [a for p in pods for a in p.addresses]
        assert len(set(addresses)) == len(addresses) == 40
        for p in pods:
            responders.append(Responder(p, p.address(4)))
        for p in pods:
            assert wait_for(f"probe -> {p.name}",
                            lambda d=p: _try_talk(probe, d, 4, "tcp")) == p.name.encode()
        print(f"20 concurrent ADDs through tabby-cni: {elapsed:.2f}s wall")
    finally:
        for r in responders:
            r.close()
        responders.clear()
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            list(pool.map(cluster.remove_pod, [*pods, probe]))


def test_foreign_routes_survive_and_our_leftovers_are_swept(cluster: Cluster) -> None:
    node = cluster.node_ns(1)
    run("ip", "-n", node, "route", "add", "198.19.250.0/24", "via", "198.18.0.1",
        "proto", "static")
    run("ip", "-n", node, "route", "add", "blackhole", "198.19.251.0/24", "proto", "12")
    run("ip", "-6", "-n", node, "route", "add", "fd7a:bb1e:250::/64", "via", "fd7a:bb1e::1",
        "proto", "zebra")
    cluster.stop_agent(1)
    run("ip", "-n", node, "route", "add", "blackhole", "198.19.252.0/26", "proto", "77")
    try:
        cluster.start_agent(1)
        wait_for("the leftover to be swept",
                 lambda: "198.19.252.0/26" not in cluster.routes(1))
        routes = cluster.routes(1)
        assert "198.19.250.0/24 via 198.18.0.1 dev eth0 proto static" in routes
        assert "blackhole 198.19.251.0/24 proto bird" in routes
        assert "fd7a:bb1e:250::/64 via fd7a:bb1e::1 dev eth0 proto zebra" in routes
    finally:
        run("ip", "-n", node, "route", "del", "198.19.250.0/24", check=False)
        run("ip", "-n", node, "route", "del", "blackhole", "198.19.251.0/24", check=False)
        run("ip", "-6", "-n", node, "route", "del", "fd7a:bb1e:250::/64", check=False)
        if 1 not in cluster.agents:
            cluster.start_agent(1)


def test_restarting_agents_keeps_cross_node_traffic_flowing(cluster: Cluster) -> None:
    a = cluster.add_pod(1, "rst-a")
    b = cluster.add_pod(2, "rst-b")
    pinger: subprocess.Popen[str] | None = None
    try:
        target = str(b.address(4))
        wait_for("first ping", lambda: run("ip", "netns", "exec", a.netns, "busybox", "ping",
                                           "-c1", "-W1", target, check=False).returncode == 0)
        before = {i: cluster.routes(i, "proto", "77") for i in (1, 2)}
        pinger = subprocess.Popen(
            ["ip", "netns", "exec", a.netns, "busybox", "ping", "-i", "0.05", "-W", "1",
             target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)  # a few answers before the first restart (the pinger runs freely)
        for i in (1, 2):
            assert cluster.stop_agent(i) == 0  # SIGTERM: a clean exit
            assert not os.path.exists(cluster.socket_path(i))
            cluster.start_agent(i)
            wait_for(f"node-{i} to settle", lambda n=i: cluster.routes(n, "proto", "77")
                     == before[n])
        time.sleep(0.3)
        os.kill(pinger.pid, signal.SIGINT)
        out, _ = pinger.communicate(timeout=10)
        sent, received = (int(x) for x in re.search(
            r"(\d+) packets transmitted, (\d+) packets received", out).groups())  # type: ignore[union-attr]
        print(f"ping through two agent restarts: {received}/{sent} answered")
        assert sent >= 10
        assert sent - received <= 1, out  # at most the one in flight at SIGINT
        assert {i: cluster.routes(i, "proto", "77") for i in (1, 2)} == before
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
            pinger.wait(timeout=10)
        cluster.remove_pod(a)
        cluster.remove_pod(b)
