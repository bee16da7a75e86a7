"""``tabby.bgp.daemon.Bird`` with the real BIRD in two namespaces (``tgd-a``, ``tgd-b``):
check before swap, reload, restart when it dies, adoption, TCP-MD5 passwords.

The configs are tabby's own (``render_bird_conf``) for two nodes on one link.
Every BIRD is stopped by PID and both namespaces deleted, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.bgp.config import render_bird_conf
from tabby.bgp.control import BirdError, ask
from tabby.bgp.daemon import Bird
from tabby.bgp.status import node_status
from tabby.lab import system
from tabby.model import IPAMBlock, Node, Resource, block_name, parse_manifest
from tabby.snapshot import Snapshot
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bird") is None,
                                reason="needs root and BIRD (bird2)")

A, B = "tgd-a", "tgd-b"
ADDRESSES = {A: ("198.18.0.11/24", "fd7a:bb1e::11/64"), B: ("198.18.0.12/24", "fd7a:bb1e::12/64")}

TIMEOUT = 15.0  # seconds a wait_for in this module may take


def manifest(kind: str, name: str, spec: dict[str, Any]) -> Resource:
    return parse_manifest({"apiVersion": "tabby.dev/v1", "kind": kind,
                           "metadata": {"name": name}, "spec": spec})


def block(cidr: str, owner: str) -> IPAMBlock:
    import ipaddress
    size = ipaddress.ip_network(cidr).num_addresses
    return IPAMBlock.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPAMBlock",
        "metadata": {"name": block_name(ipaddress.ip_network(cidr))},
        "spec": {"cidr": cidr, "affinity": f"host:{owner}", "allocations": [None] * size,
                 "unallocated": list(range(size)), "attributes": []}})


def snapshot(cidrs: dict[str, list[str]], *extra: Resource) -> Snapshot:
    nodes = [Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node", "metadata": {
        "name": name}, "spec": {"bgp": {"ipv4Address": v4, "ipv6Address": v6}}})
        for name, (v4, v6) in (("node-a", ADDRESSES[A]), ("node-b", ADDRESSES[B]))]
    pools = [manifest("IPPool", "v4", {"cidr": "198.19.0.0/16"}),
             manifest("IPPool", "v6", {"cidr": "fd7a:bb1e:1::/48"})]
    return Snapshot.build(nodes=nodes, others=[*pools, *extra],
                          blocks=[block(c, n) for n, cs in cidrs.items() for c in cs])


def kernel_routes(netns: str, version: int = 4) -> set[str]:
    out = system.run(["ip", f"-{version}", "-n", netns, "route", "show", "proto", "bird"])
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def established(bird: Bird) -> int:
    try:
        return sum(1 for p in node_status(bird.socket, timeout=2.0).peers if p.established)
    except BirdError:
        return 0


@pytest.fixture
def pair() -> Iterator[tuple[Bird, Bird]]:
    base = Path(tempfile.mkdtemp(prefix="tgd-", dir="/tmp"))  # short: socket paths <108
    made: list[Bird] = []
    try:
        system.delete_netns([A, B])  # leftovers of a run that was killed
        system.add_netns([A, B])
        for ns in (A, B):
            system.sysctl(ns, {"net.ipv6.conf.all.accept_dad": "0",
                               "net.ipv6.conf.default.accept_dad": "0"})
        system.ip_batch(["link set lo up", f"link add eth0 type veth peer name eth0 netns {B}"],
                        A)
        for ns, (v4, v6) in ADDRESSES.items():
            system.ip_batch(["link set lo up", "link set eth0 up", f"addr add {v4} dev eth0",
                             f"addr add {v6} dev eth0 nodad"], ns)
        made += [Bird(base / "a", netns=f"/run/netns/{A}"),
                 Bird(base / "b", netns=f"/run/netns/{B}")]
        yield made[0], made[1]
    finally:
        pids = [b.pid for b in made]
        for bird in made:
            bird.close()
            bird.stop()
        for directory in (base / "a", base / "b"):  # BIRDs started behind the objects' back
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((directory / "bird.pid").read_text()), signal.SIGTERM)
        system.delete_netns([A, B])
        shutil.rmtree(base, ignore_errors=True)
        assert all(p is None or not Path(f"/proc/{p}").exists() or
                   Path(f"/proc/{p}/stat").read_text().split()[2] == "Z" for p in pids)


def test_apply_starts_reloads_and_refuses_a_bad_config(pair: tuple[Bird, Bird]) -> None:
    a, b = pair
    s = snapshot({"node-a": ["198.19.0.0/26", "fd7a:bb1e:1::/122"], "node-b": []})
    assert a.apply(render_bird_conf(s, "node-a")) == []
    assert b.apply(render_bird_conf(s, "node-b")) == []
    assert a.running() and b.running() and a.pid != b.pid
    wait_for("both sessions", lambda: established(b) == 2, TIMEOUT)
    wait_for("node-a's blocks on node-b", lambda: kernel_routes(B) == {"198.19.0.0/26"}
             and kernel_routes(B, 6) == {"fd7a:bb1e:1::/122"}, TIMEOUT)

    good = a.conf.read_text()
    problems = a.apply(good.replace("router id", "router identity"))
    assert len(problems) == 1 and "does not parse, BIRD keeps the old one" in problems[0]
    assert a.conf.read_text() == good and a.running()

    pid = a.pid
    more = snapshot({"node-a": ["198.19.0.0/26", "198.19.0.64/26"], "node-b": []})
    assert a.apply(render_bird_conf(more, "node-a")) == []
    assert a.pid == pid  # reloaded, not restarted
    wait_for("the new block on node-b", lambda: kernel_routes(B) == {"198.19.0.0/26",
                                                                    "198.19.0.64/26"}, TIMEOUT)
    assert any(r.text.startswith("BIRD") for r in ask(a.socket, "show status"))


def test_a_dead_bird_is_restarted_and_routes_stay(pair: tuple[Bird, Bird]) -> None:
    a, b = pair
    s = snapshot({"node-a": ["198.19.0.0/26"], "node-b": ["198.19.0.64/26"]})
    assert a.apply(render_bird_conf(s, "node-a")) == []
    assert b.apply(render_bird_conf(s, "node-b")) == []
    a.supervise()
    wait_for("routes both ways", lambda: kernel_routes(A) == {"198.19.0.64/26"}
             and kernel_routes(B) == {"198.19.0.0/26"}, TIMEOUT)
    old = a.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while a.pid in (None, old) and time.monotonic() < deadline:
        # graceful restart: both kernels keep the routes while a's BIRD is away
        assert kernel_routes(A) == {"198.19.0.64/26"}
        assert kernel_routes(B) == {"198.19.0.0/26"}
        time.sleep(0.02)
    assert a.pid not in (None, old) and a.starts == 2
    wait_for("sessions back", lambda: established(a) == 2, TIMEOUT)
    assert kernel_routes(B) == {"198.19.0.0/26"}

    a.close()  # an agent going away: BIRD stays, and the next one adopts it
    adopted = Bird(a.dir, netns=a.netns)
    assert adopted.pid == a.pid
    adopted.supervise()
    try:
        pid = adopted.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for("the adopted BIRD restarted", lambda: adopted.pid not in (None, pid), TIMEOUT)
    finally:
        adopted.close()
        adopted.stop()


def test_tcp_md5_passwords(pair: tuple[Bird, Bird]) -> None:
    a, b = pair
    secret = parse_manifest({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "bgp", "namespace": "tabby-system"}, "stringData": {"mesh": "m3sh-pw"}})
    conf = manifest("BGPConfiguration", "default", {
        "nodeMeshPassword": {"secretKeyRef": {"name": "bgp", "key": "mesh"}}})
    s = snapshot({"node-a": ["198.19.0.0/26"], "node-b": []}, secret, conf)
    assert 'password "m3sh-pw"' in render_bird_conf(s, "node-a")
    assert a.apply(render_bird_conf(s, "node-a")) == []
    assert b.apply(render_bird_conf(s, "node-b")) == []
    wait_for("sessions with TCP-MD5", lambda: established(b) == 2, TIMEOUT)
    # Established comes before the UPDATE and BIRD's kernel sync: wait for the route.
    wait_for("node-a's block on node-b", lambda: kernel_routes(B) == {"198.19.0.0/26"}, TIMEOUT)

    wrong = parse_manifest({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "bgp", "namespace": "tabby-system"}, "stringData": {"mesh": "other"}})
    assert b.apply(render_bird_conf(snapshot({"node-b": []}, wrong, conf), "node-b")) == []
    wait_for("the sessions to drop", lambda: established(b) == 0, TIMEOUT)
    deadline = time.monotonic() + 3.0  # BIRD retries every few seconds: stays refused
    while time.monotonic() < deadline:
        assert established(b) == 0
        time.sleep(0.2)
