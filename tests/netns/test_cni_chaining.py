"""tabby-cni chained with the reference plugins, driven exactly as a runtime does.

    tor netns tc-<pid>-tor: fab0 198.18.0.1/24, fd7a:bb1e::1/64  (an outside client)
        | veth
    node netns tc-<pid>-node: fab0 198.18.0.11/24, fd7a:bb1e::11/64
        `tabby agent --node node-1` (ip netns exec; stopped by PID)
        plugins run here too (tabby.cni.runtime with `ip netns exec`)
    pod netns tc-<pid>-pod: eth0 wired by the agent, a listener on port 80

Conflist (cniVersion 1.0.0: Debian's reference plugins 1.1.1 stop there):
tabby-cni -> tuning (a sysctl) -> bandwidth (capability) -> portmap (capability,
hostPort 8080 -> 80). ADD in order with prevResult, CHECK, DEL in reverse,
then the kubelet's second DEL with no netns and no prevResult.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tabby.cni.install import link_reference_plugins, write_plugin
from tabby.cni.protocol import PodResult
from tabby.cni.runtime import ConfList, Runtime, netns_exec
from tabby.dataplane.netlink import entered_netns
from tabby.ipam import IPAM
from tabby.model import IPPool, Namespace, Node, Pod
from tabby.store import open_store
from tabby.store.client import Client
from tabby.testing.cni import run_plugin, short_tempdir
from tests.waiting import wait_for

REFERENCE = Path("/usr/lib/cni")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables") is None
    or not all((REFERENCE / p).exists() for p in ("portmap", "bandwidth", "tuning")),
    reason="needs root, iproute2, iptables and the reference CNI plugins in /usr/lib/cni")

TABBY = str(Path(sys.executable).parent / "tabby")
NODE_V4, NODE_V6 = "198.18.0.11", "fd7a:bb1e::11"
HOST_PORT, POD_PORT = 8080, 80
KUBELET_ARGS = {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web",
                "K8S_POD_INFRA_CONTAINER_ID": "c0ffee01", "K8S_POD_UID": "9a1e-77",
                "IgnoreUnknown": "1"}
CAPABILITIES = {
    "portMappings": [{"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}],
    "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                  "egressRate": 100_000_000, "egressBurst": 1_000_000}}

TIMEOUT = 20.0  # seconds a wait_for in this module may take


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: rc={done.returncode} {done.stderr.strip()}")
    return done


@dataclass
class ChainNode:
    tmp: Path
    prefix: str = field(default_factory=lambda: f"tc-{os.getpid()}")
    namespaces: list[str] = field(default_factory=list)
    agent: subprocess.Popen[bytes] | None = None

    @property
    def ns(self) -> str:
        return f"{self.prefix}-node"

    @property
    def tor(self) -> str:
        return f"{self.prefix}-tor"

    @property
    def socket(self) -> Path:
        return self.tmp / "node-1" / "cni.sock"

    def netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
           "net.ipv6.conf.default.accept_dad=0")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build(self) -> None:
        ns = self.netns(self.ns)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1")
        tor = self.netns(self.tor)
        sh("ip", "-n", tor, "link", "add", "fab0", "type", "veth", "peer", "name", "fab0",
           "netns", ns)
        sh("ip", "-n", tor, "addr", "add", "198.18.0.1/24", "dev", "fab0")
        sh("ip", "-n", tor, "addr", "add", "fd7a:bb1e::1/64", "dev", "fab0", "nodad")
        sh("ip", "-n", tor, "link", "set", "fab0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{NODE_V4}/24", "dev", "fab0")
        sh("ip", "-n", ns, "addr", "add", f"{NODE_V6}/64", "dev", "fab0", "nodad")
        sh("ip", "-n", ns, "link", "set", "fab0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", "198.18.0.1")
        sh("ip", "-6", "-n", ns, "route", "add", "default", "via", "fd7a:bb1e::1")
        self.bin = self.tmp / "bin"
        write_plugin(self.bin)
        link_reference_plugins(self.bin, ["portmap", "bandwidth", "tuning"])
        self.store_url = f"sqlite://{self.tmp / 'store.db'}"
        self.store = open_store(self.store_url)
        self.client = Client(self.store)
        self._objects()
        self._start_agent()

    def _objects(self) -> None:
        for name, cidr, size in (("v4", "198.19.0.0/16", 26), ("v6", "fd7a:bb1e:1::/48", 122)):
            self.client.create(IPPool.from_manifest({
                "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": name},
                "spec": {"cidr": cidr, "blockSize": size}}))
        self.client.create(Node.from_manifest({
            "apiVersion": "tabby.dev/v1", "kind": "Node",
            "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
            "spec": {"bgp": {"ipv4Address": f"{NODE_V4}/24", "ipv6Address": f"{NODE_V6}/64"}}}))
        self.client.apply(Namespace.from_manifest({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}))
        self.client.apply(Pod.from_manifest({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [
                {"name": "c", "image": "busybox", "ports": [
                    {"containerPort": POD_PORT, "hostPort": HOST_PORT, "name": "http"}]}]}}))

    def _start_agent(self) -> None:
        log = open(self.tmp / "agent.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.agent = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, TABBY, "--datastore", self.store_url, "agent",
                 "--node", "node-1", "--cni-socket", str(self.socket),
                 "--metrics-addr", "127.0.0.1:9099"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        wait_for("the agent to answer STATUS", self._ready, timeout=30)

    def _ready(self) -> bool:
        if self.agent is not None and self.agent.poll() is not None:
            raise AssertionError(f"agent exited with {self.agent.returncode}:\n{self.log()}")
        conf = {"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "tabby-cni",
                "socket": str(self.socket)}
        return run_plugin(self.bin / "tabby-cni", {"CNI_COMMAND": "STATUS"}, conf).returncode == 0

    def log(self) -> str:
        path = self.tmp / "agent.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def runtime(self, portmap: bool = True) -> Runtime:
        plugins: list[dict[str, Any]] = [
            {"type": "tabby-cni", "socket": str(self.socket), "mtu": 1500},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "1234"}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}}]
        if portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True},
                            "snat": True})
        conflist = ConfList.from_dict({"cniVersion": "1.0.0", "name": "k8s-pod-network",
                                       "plugins": plugins})
        return Runtime(conflist, [self.bin], exec_prefix=netns_exec(self.ns),
                       cache_dir=self.tmp / "results")

    def close(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            os.kill(self.agent.pid, signal.SIGTERM)
            try:
                self.agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.agent.pid, signal.SIGKILL)
                self.agent.wait(timeout=10)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20,
                           check=False)
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


@pytest.fixture(scope="module")
def node() -> Iterator[ChainNode]:
    n = ChainNode(short_tempdir())
    try:
        n.build()
        yield n
    finally:
        n.close()
        shutil.rmtree(n.tmp, ignore_errors=True)


class Listener:
    """A dual-stack TCP listener inside the pod answering ``pong``."""

    def __init__(self, netns: str) -> None:
        with entered_netns(f"/var/run/netns/{netns}"):
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::", POD_PORT))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"pong")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def fetch(netns: str, address: str, port: int) -> bytes | None:
    """Connect from inside ``netns``; the answer, or None if refused/unreachable."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with entered_netns(f"/var/run/netns/{netns}"):
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(2)
        try:
            sock.connect((address, port))
            return sock.recv(16)
        except OSError:
            return None


def nat_rules(node: ChainNode, tool: str = "iptables") -> str:
    return sh("ip", "netns", "exec", node.ns, tool, "-w", "-t", "nat", "-S").stdout


def test_chain_add_check_del(node: ChainNode) -> None:
    pod_ns = node.netns(f"{node.prefix}-pod")
    netns = f"/var/run/netns/{pod_ns}"
    cid = "c0ffee01" * 8
    rt = node.runtime()
    result = rt.add(cid, netns, args=KUBELET_ARGS, capability_args=CAPABILITIES)

    # The final result is tabby-cni's, passed through tuning, bandwidth and portmap.
    assert result["cniVersion"] == "1.0.0"
    parsed = PodResult.from_dict(result)
    pod_v4, pod_v6 = parsed.container_addresses("eth0")
    assert pod_v4 in ipaddress.ip_network("198.19.0.0/16")
    assert pod_v6 in ipaddress.ip_network("fd7a:bb1e:1::/48")
    host_veth = next(i.name for i in parsed.interfaces if not i.sandbox)

    # tuning wrote its sysctl in the pod; bandwidth shaped the host veth.
    somaxconn = sh("ip", "netns", "exec", pod_ns, "sysctl", "-n", "net.core.somaxconn")
    assert somaxconn.stdout.strip() == "1234"
    assert "tbf" in sh("ip", "netns", "exec", node.ns, "tc", "qdisc", "show", "dev",
                     host_veth).stdout

    # portmap: the hostPort on the node's address reaches the pod's port 80.
    listener = Listener(pod_ns)
    try:
        assert fetch(node.ns, str(pod_v4), POD_PORT) == b"pong"
        assert wait_for("hostPort over IPv4", lambda: fetch(node.ns, NODE_V4, HOST_PORT), TIMEOUT) \
            == b"pong"
        assert wait_for("hostPort over IPv6", lambda: fetch(node.ns, NODE_V6, HOST_PORT), TIMEOUT) \
            == b"pong"
        for address in (NODE_V4, NODE_V6):  # from outside the node: PREROUTING's DNAT
            assert fetch(node.tor, address, HOST_PORT) == b"pong", address

        # CHECK the chain, except portmap: Debian's portmap 1.1.1 checks the IPv4 rules
        # against ip6tables too and fails every dual-stack CHECK (upstream, cf.
        # containernetworking/plugins#819); its rules are proven by the traffic above.
        checked = node.runtime(portmap=False)
        checked.check(cid, netns, args=KUBELET_ARGS, capability_args=CAPABILITIES,
                      prev_result=result)

        rt.delete(cid, netns, args=KUBELET_ARGS, capability_args=CAPABILITIES)
        assert fetch(node.ns, NODE_V4, HOST_PORT) is None
        assert fetch(node.tor, NODE_V4, HOST_PORT) is None
    finally:
        listener.close()

    # Everything the chain made is gone: portmap's rules, the veth, the addresses.
    assert "CNI-DN-" not in nat_rules(node) and "CNI-DN-" not in nat_rules(node, "ip6tables")
    assert sh("ip", "-n", node.ns, "link", "show", host_veth, check=False).returncode != 0
    assert "eth0" not in sh("ip", "-n", pod_ns, "link", "show").stdout
    handle = f"k8s-pod-network.{cid}.eth0"
    assert IPAM(node.client).addresses_of(handle) == ()
    assert rt.cached_attachments() == []

    # The kubelet's second DEL: no netns, no prevResult; every plugin must accept it.
    rt.delete(cid, "", args=KUBELET_ARGS, capability_args=CAPABILITIES)


def test_status_and_gc_through_the_real_agent(node: ChainNode) -> None:
    """A 1.1.0 list (tabby-cni alone: the reference plugins stop at 1.0.0)."""
    conflist = ConfList.from_dict({"cniVersion": "1.1.0", "name": "k8s-pod-network",
                                   "plugins": [{"type": "tabby-cni",
                                                "socket": str(node.socket)}]})
    rt = Runtime(conflist, [node.bin], exec_prefix=netns_exec(node.ns))
    rt.status()
    pods: dict[str, tuple[str, str, PodResult]] = {}
    for name in ("keep", "gone"):
        node.client.apply(Pod.from_manifest({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]}}))
        ns = node.netns(f"{node.prefix}-{name}")
        cid = f"{name}0001"
        added = rt.add(cid, f"/var/run/netns/{ns}", args={**KUBELET_ARGS, "K8S_POD_NAME": name})
        pods[name] = (cid, ns, PodResult.from_dict(added))
    ipam = IPAM(node.client)

    rt.gc([(pods["keep"][0], "eth0")])

    for name, present in (("keep", True), ("gone", False)):
        cid, ns, result = pods[name]
        held = ipam.addresses_of(f"k8s-pod-network.{cid}.eth0")
        assert (set(held) == set(result.addresses())) if present else held == (), name
        host_veth = next(i.name for i in result.interfaces if not i.sandbox)
        shown = sh("ip", "-n", node.ns, "link", "show", host_veth, check=False).returncode
        assert (shown == 0) == present, name
    rt.delete(pods["keep"][0], f"/var/run/netns/{pods['keep'][1]}")
