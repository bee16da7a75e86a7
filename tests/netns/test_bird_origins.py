"""``Bird.apply`` when only the origins change: no ``bird -p``, BIRD parses the file itself.

Two namespaces (``rtx-ba``, ``rtx-bb``) on a veth, tabby's own bird.conf in each.
A new block on node-a is a change of origin routes only: it must reach node-b's
kernel without a ``bird -p`` run, and bird.conf must then hold the new text. A
structural change still runs ``bird -p``. An origin BIRD refuses (an IPv6 route
in the IPv4 origins) leaves bird.conf and the running config as they were.
Every BIRD is stopped by PID and both namespaces deleted, also on failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.bgp.config import render_bird_conf
from tabby.bgp.control import BirdError
from tabby.bgp.daemon import Bird
from tabby.bgp.status import node_status
from tabby.lab import system
from tabby.model import IPAMBlock, Node, Resource, block_name, parse_manifest
from tabby.snapshot import Snapshot
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bird") is None,
                                reason="needs root and BIRD (bird2)")

A, B = "rtx-ba", "rtx-bb"
ADDRESSES = {A: "198.18.0.11/24", B: "198.18.0.12/24"}


TIMEOUT = 20.0


def manifest(kind: str, name: str, spec: dict[str, Any]) -> Resource:
    return parse_manifest({"apiVersion": "tabby.dev/v1", "kind": kind,
                           "metadata": {"name": name}, "spec": spec})


def block(cidr: str, owner: str) -> IPAMBlock:
    net = ipaddress.ip_network(cidr)
    return IPAMBlock.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPAMBlock", "metadata": {"name": block_name(net)},
        "spec": {"cidr": cidr, "affinity": f"host:{owner}",
                 "allocations": [None] * net.num_addresses,
                 "unallocated": list(range(net.num_addresses)), "attributes": []}})


def config(node: str, blocks: list[str], *extra: Resource) -> str:
    nodes = [Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node", "metadata": {
        "name": name}, "spec": {"bgp": {"ipv4Address": ADDRESSES[ns]}}})
        for name, ns in (("node-a", A), ("node-b", B))]
    snap = Snapshot.build(nodes=nodes,
                          others=[manifest("IPPool", "v4", {"cidr": "198.19.0.0/16"}), *extra],
                          blocks=[block(c, "node-a") for c in blocks])
    return render_bird_conf(snap, node)


def kernel_routes(netns: str) -> set[str]:
    out = system.run(["ip", "-4", "-n", netns, "route", "show", "proto", "bird"])
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def established(bird: Bird) -> bool:
    try:
        return any(p.established for p in node_status(bird.socket, timeout=2.0).peers)
    except BirdError:
        return False


@pytest.fixture
def pair() -> Iterator[tuple[Bird, Bird]]:
    base = Path(tempfile.mkdtemp(prefix="rtx-", dir="/tmp"))  # short: socket paths < 108
    made: list[Bird] = []
    try:
        system.delete_netns([A, B])  # leftovers of a run that was killed
        system.add_netns([A, B])
        system.ip_batch(["link set lo up", f"link add eth0 type veth peer name eth0 netns {B}"],
                        A)
        for ns, v4 in ADDRESSES.items():
            system.ip_batch(["link set lo up", "link set eth0 up", f"addr add {v4} dev eth0"],
                            ns)
        made += [Bird(base / "a", netns=f"/run/netns/{A}"),
                 Bird(base / "b", netns=f"/run/netns/{B}")]
        yield made[0], made[1]
    finally:
        for bird in made:
            bird.close()
            bird.stop()
        for directory in (base / "a", base / "b"):  # a BIRD started behind the objects' back
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((directory / "bird.pid").read_text()), signal.SIGTERM)
        system.delete_netns([A, B])
        shutil.rmtree(base, ignore_errors=True)


def test_origin_changes_skip_bird_p_and_structural_ones_do_not(pair: tuple[Bird, Bird]
                                                              ) -> None:
    a, b = pair
    assert a.apply(config("node-a", ["198.19.0.0/26"])) == []
    assert b.apply(config("node-b", ["198.19.0.0/26"])) == []
    wait_for("the session", lambda: established(b), TIMEOUT)
    wait_for("node-a's block on node-b", lambda: kernel_routes(B) == {"198.19.0.0/26"},
             TIMEOUT)
    checks, pid = a.checks, a.pid

    more = config("node-a", ["198.19.0.0/26", "198.19.0.64/26", "198.19.9.9/32"])
    assert a.apply(more) == []
    assert a.checks == checks and a.pid == pid  # no bird -p; reloaded, not restarted
    assert a.conf.read_text() == more and not (a.dir / "bird.conf.new").exists()
    wait_for("the new blocks on node-b", lambda: kernel_routes(B) == {
        "198.19.0.0/26", "198.19.0.64/26", "198.19.9.9"}, TIMEOUT)

    fewer = config("node-a", ["198.19.0.64/26"])
    assert a.apply(fewer) == [] and a.checks == checks
    wait_for("the withdrawal on node-b", lambda: kernel_routes(B) == {"198.19.0.64/26"},
             TIMEOUT)

    structural = config("node-a", ["198.19.0.64/26"],
                        manifest("IPPool", "v4b", {"cidr": "198.18.128.0/24"}))
    assert a.apply(structural) == [] and a.checks == checks + 1


def test_an_origin_bird_refuses_leaves_everything_as_it_was(pair: tuple[Bird, Bird]) -> None:
    a, _ = pair
    good = config("node-a", ["198.19.0.0/26"])
    assert a.apply(good) == []
    checks = a.checks
    wrong = good.replace("  route 198.19.0.0/26 blackhole;", "  route fd7a:bb1e:9::/64 blackhole;")
    assert wrong != good
    problems = a.apply(wrong)
    assert a.checks == checks  # BIRD itself parsed it
    assert len(problems) == 1 and "keeps the old bird.conf" in problems[0]
    assert "incompatible" in problems[0]
    assert a.conf.read_text() == good and a.running()
    assert a.apply(good.replace("198.19.0.0/26", "198.19.0.0/25")) == []  # still reloads
    # host bits set: not an origin tabby would render, so the full check refuses it
    problems = a.apply(good.replace("198.19.0.0/26", "198.19.0.1/26"))
    assert a.checks == checks + 1 and "does not parse" in problems[0]
