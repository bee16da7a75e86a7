"""tabby's image (``scripts/build-image``) runs the node agent under containerd on a lab node.

    lab tim (1 node, dual stack, sqlite)   tim-tor ── tim-node-1
    the lab's own agent on node-1           stopped by the PID the lab recorded
    containerd                              nsenter --net=/var/run/netns/tim-node-1, temp dir
    ctr run -d --privileged localhost/tabby:<version> tim-agent tabby ... agent --node node-1
        --with-ns network:/var/run/netns/tim-node-1   the node's host network
        bind /run/tabby/labs/tim  the CNI socket and the sqlite datastore, same paths inside
        bind /run/netns, rslave   pod namespaces the lab makes later appear inside
    pods                                    LabPods, the lab's way: tabby-cni on the node ->
                                            the socket -> the agent in the container

The image is built once per machine and checkout state (about a minute cold, then
taken from /var/cache/tabby/image); the build's time is printed with ``-s``.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tabby
from tabby.lab import bgp, builder, system
from tabby.lab.pods import LabPods
from tabby.lab.state import IPAddress, LabState, NodeRecord, PodRecord, load, require
from tabby.lab.topology import POOL_V4, POOL_V6
from tabby.model import Pod, WorkloadEndpoint
from tabby.testing.containerd import Containerd, installed
from tabby.testing.image import (
    Bind,
    BuiltImage,
    build_image,
    run_detached,
    run_once,
    task_pid,
)
from tests.netns.http import http_get

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-image"
MISSING = installed()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1500),  # a cold build is about a minute; the mirror may be slower
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mmdebstrap, namespaces)"),
    pytest.mark.skipif(MISSING is not None, reason=f"containerd/ctr not installed: {MISSING}"),
    pytest.mark.skipif(not SCRIPT.is_file(), reason="scripts/build-image: not in a checkout"),
]

LAB = "tim"
NODE = "node-1"
CTR_NAMESPACE = "tim"
AGENT = "tim-agent"
TABBY = [sys.executable, "-m", "tabby.cli.main", "--lab", LAB]
PORT = 8080


def tabby_cli(*args: str) -> str:
    done = subprocess.run([*TABBY, *args], capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise AssertionError(f"tabby {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done.stdout


def leftovers() -> list[str]:
    return sorted(ns for ns in system.netns_list() if ns.startswith((f"{LAB}-", f"{LAB}_")))


def wait_for(what: str, check: Callable[[], object], timeout: float, log: Path) -> None:
    """Poll ``check`` until truthy; fail with the agent container's output after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; the"
                                 f" agent container's output:\n{system.tail(log, 30)}")
        time.sleep(0.1)


def ip(netns: str, *args: str) -> str:
    return system.run(["ip", "-n", netns, *args])


def healthz(netns: str) -> str | None:
    """The body of the agent's /healthz from inside ``netns`` if it answers 200."""
    host, port = builder.AGENT_METRICS.split(":")
    return http_get(netns, host, int(port), "/healthz")


@dataclass
class Env:
    image: BuiltImage
    node: NodeRecord
    containerd: Containerd
    log: Path  # the agent container's stdout and stderr


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    built = build_image(SCRIPT)
    print(f"\nbuild-image: {built.name} {'cached' if built.cached else 'built'} in"
          f" {built.seconds:.1f}s, {built.tar.stat().st_size / 2**20:.0f} MiB: {built.tar}")
    return built


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    if load(LAB) is not None:
        builder.down(LAB)
    assert leftovers() == []
    try:
        assert f"lab {LAB} is up" in tabby_cli("lab", "up", "--name", LAB, "--nodes", "1",
                                               "--stack", "dual")
        yield require(LAB)
    finally:
        state = load(LAB)
        if state is not None:
            tabby_cli("lab", "down", "--name", LAB)
            assert [p for p in state.all_procs() if system.alive(p)] == []
            assert not state.dir.exists()
        assert leftovers() == []


@pytest.fixture(scope="module")
def env(image: BuiltImage, lab: LabState) -> Iterator[Env]:
    node = lab.node(NODE)
    assert node.agent is not None
    # The lab cannot leave a node without its agent: stop it by the PID it recorded.
    assert system.stop([node.agent]) == []
    assert not system.alive(node.agent) and healthz(node.netns) is None
    cd = Containerd(node.netns, namespace=CTR_NAMESPACE)
    try:
        started = time.monotonic()
        cd.start()
        cd.import_image(image.tar)
        print(f"\ncontainerd up and the image imported in {time.monotonic() - started:.1f}s")
        # The lab's own agent command line, with the image's tabby in front.
        argv = builder.agent_argv(lab.datastore, node, lab.topology.mtu)
        argv = ["tabby", *argv[len(builder.tabby_command()):],
                *bgp.agent_flags(lab.topology, node)]
        log = run_detached(cd, image.name, AGENT, argv, netns=node.netns,
                           binds=[Bind(lab.dir), Bind(Path("/run/netns"), slave=True)])
        # Ready: its first full sync is done (the DaemonSet's readiness probe), and the CNI
        # socket is bound (CNI STATUS proves nothing here: the lab's 1.0.0 chain skips it).
        wait_for("the agent from the image to be ready", lambda: node.cni_socket.exists() and
                 (healthz(node.netns) or "").startswith("ok"), 60.0, log)
        yield Env(image, node, cd, log)
    finally:
        cd.stop()
        assert cd.processes() == [] and not cd.dir.exists()
        assert list(Path("/sys/fs/cgroup").glob(f"*/{cd.cgroup_parent}")) == []


def test_the_image_is_named_for_the_version_and_carries_the_commands(env: Env) -> None:
    assert env.image.name == f"localhost/tabby:{tabby.__version__}"
    # No arguments: the image's entrypoint (tabby) and command (--version).
    assert tabby.__version__ in run_once(env.containerd, env.image.name, "tim-version")
    out = run_once(env.containerd, env.image.name, "tim-path", [
        "sh", "-c", "for c in tabby tabby-cni tabby-ipam nft bird conntrack ip; do command -v $c;"
        " done; python3 -V"])
    *paths, python, version = out.split()
    assert paths == ["/usr/local/bin/tabby", "/usr/local/bin/tabby-cni",
                     "/usr/local/bin/tabby-ipam", "/usr/sbin/nft", "/usr/sbin/bird",
                     "/usr/sbin/conntrack", "/usr/sbin/ip"], out
    assert python == "Python" and version.startswith("3.11."), out
    assert env.containerd.containers() == [AGENT]  # --rm removed both


def pod(name: str) -> Pod:
    return Pod.from_manifest({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"nodeName": NODE, "containers": [{
            "name": "main", "image": "x", "ports": [{"containerPort": PORT}]}]}})


def probe(family: str, protocol: str) -> list[dict[str, Any]]:
    out = tabby_cli("lab", "probe", "--family", family, "--port", str(PORT), "--protocol",
                    protocol, "-o", "json")
    return sorted(json.loads(out)["probes"], key=lambda p: (p["from"], p["to"]))


def node_route(env: Env, addr: IPAddress) -> str:
    """The node's route to exactly ``addr`` (one line), "" if none."""
    return ip(env.node.netns, f"-{addr.version}", "-o", "route", "show", str(addr)).strip()


def assert_wired(env: Env, record: PodRecord) -> None:
    """Addresses from the pools on the pod's eth0, its default routes, and the node's
    routes to it through the host side of its veth."""
    v4, v6 = record.ip(4), record.ip(6)
    assert v4 is not None and v6 is not None, record.ips
    assert v4 in POOL_V4 and v6 in POOL_V6, record.ips
    eth0 = ip(record.netns, "-o", "addr", "show", "dev", "eth0")
    assert f"inet {v4}/32" in eth0 and f"inet6 {v6}/128" in eth0
    assert "default via 169.254.1.1 dev eth0" in ip(record.netns, "-4", "route")
    assert "default via fe80::ecee:eeff:feee:eeee dev eth0" in ip(record.netns, "-6", "route")
    for addr in (v4, v6):  # the agent's next pass writes them, just after the ADD
        wait_for(f"the node's route to {addr}", functools.partial(node_route, env, addr),
                 10.0, env.log)
        words = node_route(env, addr).split()
        assert words[:2] == [str(addr), "dev"] and words[2].startswith("tab"), words


def test_the_agent_from_the_image_wires_pods_that_talk(env: Env) -> None:
    # It is the image's agent that answers: the lab's is gone, the task runs from /opt/tabby.
    assert env.node.agent is not None and not system.alive(env.node.agent)
    pid = task_pid(env.containerd, AGENT)
    assert pid is not None and env.containerd.tasks()[AGENT] == "RUNNING"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"/usr/local/bin/tabby" in cmdline and b"agent" in cmdline
    assert Path(f"/proc/{pid}/root/opt/tabby/pyvenv.cfg").is_file()

    with LabPods.open(LAB) as pods:
        assert pods.apply_pods([pod("a"), pod("b")]) == ["created", "created"]
        state = require(LAB)
        a, b = state.pod("default", "a"), state.pod("default", "b")
        assert a is not None and b is not None
        for record in (a, b):
            assert_wired(env, record)
        endpoints = pods.client.list(WorkloadEndpoint, "default")
        assert sorted((w.spec.pod, w.spec.node) for w in endpoints) == [("a", NODE), ("b", NODE)]

        for family, protocol in itertools.product(("ipv4", "ipv6"), ("tcp", "udp")):
            results = probe(family, protocol)
            assert [(p["from"], p["to"], p["connected"]) for p in results] == [
                ("default/a", "default/b", True), ("default/b", "default/a", True)], results

        # CNI DEL through the image's agent: the veth, the routes and the endpoint go.
        host_veths = {w.spec.interface_name for w in endpoints if w.spec.pod == "b"}
        pods.delete_pod("default", "b")
        assert host_veths
        wait_for("b's veth deleted (in the background)",  # DEL retires, the agent deletes
                 lambda: not host_veths & system.link_names(env.node.netns), 10.0, env.log)
        for addr in b.ips:
            assert node_route(env, addr) == ""
        assert [w.spec.pod for w in pods.client.list(WorkloadEndpoint, "default")] == ["a"]
    assert env.containerd.tasks()[AGENT] == "RUNNING"
    errors = [line for line in env.log.read_text().splitlines() if " ERROR " in line]
    assert errors == [], errors
