"""A real container runtime on a lab node: containerd 1.6 and ``ctr run --cni``.

    lab tcd (1 node, IPv4)    tcd-tor ── tcd-node-1: tabby agent, containerd, ctr
    containerd  nsenter --net=/var/run/netns/tcd-node-1, its own config in a temp dir
    ctr run     the same netns and a private mount namespace where the lab node's
                net.d is /etc/cni/net.d, its cniBinDir /opt/cni/bin, a temp dir /var/lib/cni

What ``ctr run --cni`` does (containerd 1.6, cmd/ctr/commands/run/run.go, checked
against this machine's 1.6.20): ``gocni.New(gocni.WithDefaultConf)`` loads the
*first* config file of /etc/cni/net.d in name order (the lab writes only
``10-tabby.conflist``) with plugins from /opt/cni/bin and caches results in
/var/lib/cni; then ``network.Setup(ctx, "<ctr namespace>-<container id>",
"/proc/<task pid>/ns/net", )`` with no options at all, interface ``eth0``. So ctr
sends no CNI_ARGS (tabby names such a pod ``cni-<container id>`` in ``default``) and
no capability args: it cannot pass portMappings, by flag or by label. When the
task exits, a foreground ``ctr run`` (not ``--detach``) calls
``network.Remove(ctx, id, "")``: CNI DEL with an empty CNI_NETNS, libcni adding the
cached prevResult; with ``--rm`` the container is removed too. (``ctr task kill``
plus ``ctr container rm`` alone would run no DEL.)

For the hostPort: portmap reads ``runtimeConfig.portMappings`` from the config on
its stdin, and libcni replaces ``runtimeConfig`` only when the runtime passes
capability args, which ctr never does. A conflist whose portmap entry carries a
static ``runtimeConfig`` therefore reaches portmap unchanged through ctr; the
hostPort test runs the lab node's chain that way (the lab's own conflist, used
verbatim by the first test, gets no mappings: portmap passes the result through
and writes no rule, which that test checks too).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tabby.errors import LabError
from tabby.ipam import IPAM
from tabby.ipam.blocks import address, allocated
from tabby.lab import builder, system
from tabby.lab.pods import LabPods
from tabby.lab.state import LabState, load, require
from tabby.model import IPAMBlock, Pod, WorkloadEndpoint
from tabby.testing.containerd import CNIPaths, Containerd, CtrRun, busybox_image, installed
from tests.netns.http import http_get

MISSING = installed()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(MISSING is not None, reason=f"containerd/ctr not installed: {MISSING}"),
]

LAB = "tcd"
CTR_NAMESPACE = "tcd"  # ctr's CNI container id is "<namespace>-<container>"
TABBY = [sys.executable, "-m", "tabby.cli.main"]
POOL = ipaddress.ip_network("198.19.0.0/16")
HTTP_PORT, HOST_PORT = 8080, 8888
T = TypeVar("T")


def tabby(*args: str) -> str:
    done = subprocess.run([*TABBY, "--lab", LAB, *args], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"tabby {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done.stdout


def leftovers() -> list[str]:
    """The lab's namespaces that ``ip netns list`` still shows."""
    listed = system.run(["ip", "netns", "list"]).splitlines()
    return sorted(line.split()[0] for line in listed if line.startswith((f"{LAB}-", f"{LAB}_")))


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0,
             alive: CtrRun | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` or as
    soon as ``alive`` (a ctr run that should keep running) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if alive is not None and not alive.running():
            raise AssertionError(f"ctr run {alive.container} exited ({alive.proc.returncode})"
                                 f" while waiting for {what}:\n{alive.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def nat_rules(netns: str) -> str:
    return system.run(system.in_netns(netns, ["iptables", "-w", "-t", "nat", "-S"]))


@dataclass(frozen=True, slots=True)
class Node:
    """What ``tabby lab status -o json`` says a runtime on node-1 needs."""

    netns: str
    address: str
    conflist: Path
    bin_dir: Path
    tor_netns: str


@dataclass
class Env:
    node: Node
    containerd: Containerd
    pods: LabPods
    client_netns: str  # a lab pod on the same node, wired by the lab (not by ctr)
    ipam: IPAM


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    if load(LAB) is not None:
        builder.down(LAB)
    assert leftovers() == []
    try:
        assert f"lab {LAB} is up" in tabby("lab", "up", "--name", LAB, "--nodes", "1",
                                           "--stack", "ipv4")
        yield require(LAB)
    finally:
        state = load(LAB)
        if state is not None:
            tabby("lab", "down", "--name", LAB)
            assert [p for p in state.all_procs() if system.alive(p)] == []
            assert not state.dir.exists()
        assert leftovers() == []


@pytest.fixture(scope="module")
def env(lab: LabState) -> Iterator[Env]:
    info = json.loads(tabby("lab", "status", "-o", "json"))
    [n] = info["nodes"]
    node = Node(n["netns"], n["addresses"][0].split("/")[0], Path(n["cniConfList"]),
                Path(n["cniBinDir"]), info["tor"]["netns"])
    conf = json.loads(node.conflist.read_text())
    assert [p["type"] for p in conf["plugins"]] == ["tabby-cni", "portmap"], conf
    cd = Containerd(node.netns, namespace=CTR_NAMESPACE)
    try:
        with LabPods.open(LAB) as pods:
            cd.start()
            cd.import_image(busybox_image(cd.dir / "busybox.tar"))
            assert pods.apply_pod(Pod.from_manifest({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "client", "namespace": "default"},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
            })) == "created"
            record = require(LAB).pod("default", "client")
            assert record is not None
            yield Env(node, cd, pods, record.netns, IPAM(pods.client))
    finally:
        cd.stop()
        assert cd.processes() == [] and not cd.dir.exists()
        assert list(Path("/sys/fs/cgroup").glob(f"*/{cd.cgroup_parent}")) == []


def start(env: Env, container: str, body: str, conf_dir: Path) -> CtrRun:
    """``ctr run --rm --cni`` a busybox httpd answering ``body`` on HTTP_PORT."""
    argv = ["sh", "-c", f"echo {body} > /tmp/index.html && exec httpd -f -p {HTTP_PORT} -h /tmp"]
    return env.containerd.run_cni(container, argv, CNIPaths(conf_dir, env.node.bin_dir))


def finish(env: Env, run: CtrRun) -> int:
    """Kill the container's task (SIGKILL: a container's PID 1 has no default action for
    SIGTERM) and wait for ctr to run CNI DEL and remove the container; its exit code."""
    if run.running():
        with contextlib.suppress(LabError):  # no task yet: ctr is about to exit anyway
            env.containerd.ctr("task", "kill", "--signal", "SIGKILL", run.container)
    return run.wait(20)


def endpoint_of(env: Env, container_id: str) -> WorkloadEndpoint | None:
    return next((w for w in env.pods.client.list(WorkloadEndpoint, "default")
                 if w.spec.container_id == container_id), None)


def eth0_address(env: Env, container: str) -> ipaddress.IPv4Interface:
    """The IPv4 address the container itself sees on its eth0."""
    out = env.containerd.exec(container, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
    [line] = out.splitlines()
    words = line.split()
    return ipaddress.IPv4Interface(words[words.index("inet") + 1])


def allocated_ips(env: Env) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address some IPAM block has allocated."""
    return {address(b.spec, o) for b in env.pods.client.list(IPAMBlock)
            for o, _ in allocated(b.spec)}


def test_ctr_run_cni_wires_a_container_through_tabby(env: Env) -> None:
    """The lab node's conflist verbatim: address, endpoint, traffic, then DEL on exit."""
    cid = f"{CTR_NAMESPACE}-web"
    handle = f"k8s-pod-network.{cid}.eth0"
    run = start(env, "web", "tabby-web", env.node.conflist.parent)
    try:
        wep = wait_for("the container's WorkloadEndpoint", lambda: endpoint_of(env, cid),
                       alive=run)
        wait_for("the task to run (ctr starts it once the whole chain has run)",
                 lambda: env.containerd.tasks().get("web") == "RUNNING", alive=run)
        addr = eth0_address(env, "web")
        assert addr.network.prefixlen == 32 and addr.ip in POOL
        assert wep.spec.ip_networks == (addr.network,)
        assert (wep.meta.namespace, wep.spec.pod, wep.spec.node) == (
            "default", f"cni-{cid}", "node-1")  # ctr sends no K8S_POD_* CNI_ARGS
        assert env.ipam.addresses_of(handle) == (addr.ip,) and addr.ip in allocated_ips(env)
        host_veth = wep.spec.interface_name
        assert host_veth in system.link_names(env.node.netns)

        # libcni's cache: ctr ran exactly the lab's conflist, tabby-cni then portmap ...
        [cached] = run.cached_results()
        entry = json.loads(cached.read_text())
        assert cached.name == f"k8s-pod-network-{cid}-eth0" and entry["containerId"] == cid
        assert base64.b64decode(entry["config"]) == env.node.conflist.read_bytes()
        assert [ip["address"] for ip in entry["result"]["ips"]] == [str(addr)]
        # ... with no portMappings (ctr passes none): portmap wrote no rule for it.
        assert cid not in nat_rules(env.node.netns)

        got = wait_for("httpd from the node", lambda: http_get(
            env.node.netns, str(addr.ip), HTTP_PORT), alive=run)
        assert got == "tabby-web"
        assert http_get(env.client_netns, str(addr.ip), HTTP_PORT) == "tabby-web"
    finally:
        code = finish(env, run)
    assert code == 137  # the task's SIGKILL, passed on by ctr

    # ctr's CNI DEL (empty CNI_NETNS, cached prevResult) tore everything down.
    assert endpoint_of(env, cid) is None
    assert env.ipam.addresses_of(handle) == () and addr.ip not in allocated_ips(env)
    wait_for(f"{host_veth} deleted (in the background)",  # DEL retires, the agent deletes
             lambda: host_veth not in system.link_names(env.node.netns), 5.0)
    assert run.cached_results() == []
    assert "web" not in env.containerd.containers() and env.containerd.tasks() == {}
    assert http_get(env.client_netns, str(addr.ip), HTTP_PORT, timeout=0.5) is None


def test_ctr_run_cni_hostport_answers_from_the_node(env: Env, tmp_path: Path) -> None:
    """The lab's chain with a static runtimeConfig for portmap (ctr cannot pass one)."""
    conf = json.loads(env.node.conflist.read_text())
    portmap = next(p for p in conf["plugins"] if p["type"] == "portmap")
    portmap["runtimeConfig"] = {"portMappings": [
        {"hostPort": HOST_PORT, "containerPort": HTTP_PORT, "protocol": "tcp"}]}
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / env.node.conflist.name).write_text(json.dumps(conf, indent=2))
    cid = f"{CTR_NAMESPACE}-hp"
    run = start(env, "hp", "tabby-hostport", conf_dir)
    try:
        wep = wait_for("the container's WorkloadEndpoint", lambda: endpoint_of(env, cid),
                       alive=run)
        wait_for("the task to run (ctr starts it once the whole chain has run)",
                 lambda: env.containerd.tasks().get("hp") == "RUNNING", alive=run)
        [pod_ip] = [n.network_address for n in wep.spec.ip_networks]
        assert pod_ip in POOL
        rules = nat_rules(env.node.netns)
        assert cid in rules and f"--dport {HOST_PORT}" in rules
        assert f"--to-destination {pod_ip}:{HTTP_PORT}" in rules

        node = env.node
        got = wait_for("the hostPort from the node", lambda: http_get(
            node.netns, node.address, HOST_PORT), alive=run)
        assert got == "tabby-hostport"
        assert http_get(node.tor_netns, node.address, HOST_PORT) == "tabby-hostport"
        assert http_get(env.client_netns, node.address, HOST_PORT) == "tabby-hostport"
    finally:
        code = finish(env, run)
    assert code == 137

    # portmap's DEL (given the same static mappings) removed its rules; tabby's DEL the rest.
    assert cid not in nat_rules(env.node.netns)
    assert http_get(env.node.tor_netns, env.node.address, HOST_PORT, timeout=0.5) is None
    assert endpoint_of(env, cid) is None
    assert env.ipam.addresses_of(f"k8s-pod-network.{cid}.eth0") == ()
    assert pod_ip not in allocated_ips(env)
