"""The agent end to end: a two-node mini cluster built from namespaces, real agents.

    tor netns: bridge br0 198.18.0.1/24, fd7a:bb1e::1/64
       |  veth n1 <-> eth0 of node 1 (198.18.0.11, fd7a:bb1e::11), n2 <-> node 2 (.12)
    node netns: `tabby agent --node node-i` (started with `ip netns exec`, stopped by PID)
    pod netns: wired through the real tabby-cni plugin, as a runtime would drive it

One SQLite store in a temporary directory holds the pools, the Node objects and
the Pods; every namespace and process is recorded and removed, even on failure.
Traffic checks open sockets from the test process inside the pods' namespaces.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tabby.cni.install import write_plugin
from tabby.dataplane.netlink import entered_netns
from tabby.dataplane.pods import host_veth_name
from tabby.ipam import IPAM
from tabby.model import IPPool, Namespace, Node, Pod, WorkloadEndpoint, endpoint_name
from tabby.store import open_store
from tabby.store.base import Store
from tabby.store.client import Client

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("busybox") is None,
    reason="needs root, iproute2 and busybox (network namespaces, ping)")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
TABBY = str(Path(sys.executable).parent / "tabby")
NETWORK = "k8s-pod-network"


def run(*args: str, check: bool = True, timeout: float = 30, **kw: Any
        ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: rc={done.returncode} {done.stderr.strip()}")
    return done


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 15.0,
             interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class PodRef:
    name: str
    namespace: str
    node: int
    netns: str
    cid: str
    result: dict[str, Any]

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def addresses(self) -> list[IPAddress]:
        return [ipaddress.ip_interface(i["address"]).ip for i in self.result["ips"]]

    def address(self, version: int) -> IPAddress:
        return next(a for a in self.addresses if a.version == version)


@dataclass
class Cluster:
    tmp: Path
    nodes: int = 2
    prefix: str = field(default_factory=lambda: f"ta-{os.getpid()}")
    namespaces: list[str] = field(default_factory=list)
    agents: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    pods: dict[str, PodRef] = field(default_factory=dict)
    counter: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- build -----------------------------------------------------------------
    def netns(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0")
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def node_ns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def socket_path(self, i: int) -> str:
        return str(self.tmp / f"node-{i}" / "cni.sock")

    def build(self) -> None:
        tor = self.netns("tor")
        run("ip", "-n", tor, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", tor, "addr", "add", "198.18.0.1/24", "dev", "br0")
        run("ip", "-n", tor, "addr", "add", "fd7a:bb1e::1/64", "dev", "br0", "nodad")
        run("ip", "-n", tor, "link", "set", "br0", "up")
        for i in range(1, self.nodes + 1):
            node = self.netns(f"n{i}")
            run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1")
            run("ip", "-n", tor, "link", "add", f"n{i}", "type", "veth", "peer", "name", "eth0",
                "netns", node)
            run("ip", "-n", tor, "link", "set", f"n{i}", "master", "br0", "up")
            run("ip", "-n", node, "addr", "add", f"198.18.0.{10 + i}/24", "dev", "eth0")
            run("ip", "-n", node, "addr", "add", f"fd7a:bb1e::{10 + i}/64", "dev", "eth0",
                "nodad")
            run("ip", "-n", node, "link", "set", "eth0", "up")
            run("ip", "-n", node, "route", "add", "default", "via", "198.18.0.1")
            run("ip", "-6", "-n", node, "route", "add", "default", "via", "fd7a:bb1e::1")
        self.plugin = str(write_plugin(self.tmp / "bin"))
        self.store_url = f"sqlite://{self.tmp / 'store.db'}"
        self.store: Store = open_store(self.store_url)
        self.client = Client(self.store)
        for doc in (
            {"metadata": {"name": "v4"}, "spec": {"cidr": "198.19.0.0/16", "blockSize": 26}},
            {"metadata": {"name": "v6"}, "spec": {"cidr": "fd7a:bb1e:1::/48",
                                                  "blockSize": 122}},
        ):
            self.client.create(IPPool.from_manifest(
                {"apiVersion": "tabby.dev/v1", "kind": "IPPool", **doc}))
        for i in range(1, self.nodes + 1):
            self.client.create(Node.from_manifest({
                "apiVersion": "tabby.dev/v1", "kind": "Node",
                "metadata": {"name": f"node-{i}",
                             "labels": {"kubernetes.io/hostname": f"node-{i}"}},
                "spec": {"bgp": {"ipv4Address": f"198.18.0.{10 + i}/24",
                                 "ipv6Address": f"fd7a:bb1e::{10 + i}/64"}}}))
        for i in range(1, self.nodes + 1):
            self.start_agent(i)

    # -- agents ----------------------------------------------------------------
    def start_agent(self, i: int) -> None:
        log = open(self.tmp / f"agent-{i}.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.node_ns(i), TABBY, "--datastore", self.store_url,
                 "agent", "--node", f"node-{i}", "--cni-socket", self.socket_path(i),
                 "--metrics-addr", "127.0.0.1:9099", "--resync-interval", "2"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self.agents[i] = proc
        wait_for(f"agent node-{i} to be ready", lambda: self.healthy(i), timeout=30)

    def stop_agent(self, i: int) -> int:
        proc = self.agents.pop(i)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode

    def http_get(self, i: int, path: str) -> tuple[int, str]:
        with entered_netns(f"/var/run/netns/{self.node_ns(i)}"):
            conn = http.client.HTTPConnection("127.0.0.1", 9099, timeout=2)
            conn.connect()  # the socket is made here, inside the node's namespace
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def healthy(self, i: int) -> bool:
        proc = self.agents.get(i)
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"agent node-{i} exited with {proc.returncode}:\n"
                                 + self.log(i))
        try:
            return self.http_get(i, "/healthz")[0] == 200
        except OSError:
            return False

    def log(self, i: int) -> str:
        path = self.tmp / f"agent-{i}.log"
        return path.read_text()[-4000:] if path.exists() else ""

    # -- CNI -------------------------------------------------------------------
    def cni(self, node: int, command: str, cid: str = "", netns: str = "",
            ifname: str = "eth0", args: str = "", extra: dict[str, Any] | None = None
            ) -> tuple[int, dict[str, Any]]:
        config = {"cniVersion": "1.1.0", "name": NETWORK, "type": "tabby-cni",
                  "socket": self.socket_path(node), "mtu": 1500, **(extra or {})}
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_PATH": str(self.tmp / "bin"), "CNI_ARGS": args,
               "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        done = run("ip", "netns", "exec", self.node_ns(node), self.plugin, check=False,
                   input=json.dumps(config), env=env)
        out = json.loads(done.stdout) if done.stdout.strip() else {}
        return done.returncode, out

    def add_pod(self, node: int, name: str, namespace: str = "default",
                labels: dict[str, str] | None = None) -> PodRef:
        with self.lock:
            self.counter += 1
            n = self.counter
        if self.client.try_get(Namespace, namespace) is None:
            self.client.apply(Namespace.from_manifest({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
        self.client.apply(Pod.from_manifest({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"nodeName": f"node-{node}", "containers": [
                {"name": "c", "image": "busybox",
                 "ports": [{"containerPort": 8080, "name": "http"}]}]}}))
        netns = self.netns(f"p{n}")
        cid = f"{n:04d}" + "c0ffee" * 10
        rc, out = self.cni(node, "ADD", cid, f"/var/run/netns/{netns}",
                           args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};"
                                f"K8S_POD_NAME={name}")
        assert rc == 0, f"ADD {name}: {out}\n{self.log(node)}"
        pod = PodRef(name, namespace, node, netns, cid, out)
        self.pods[name] = pod
        return pod

    def del_pod(self, pod: PodRef, netns: str | None = None) -> tuple[int, dict[str, Any]]:
        return self.cni(pod.node, "DEL", pod.cid, pod.path if netns is None else netns,
                        args=f"K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name}")

    def remove_pod(self, pod: PodRef) -> None:
        rc, out = self.del_pod(pod)
        assert rc == 0, out
        run("ip", "netns", "del", pod.netns, check=False)
        if pod.netns in self.namespaces:
            self.namespaces.remove(pod.netns)
        self.pods.pop(pod.name, None)

    def routes(self, node: int, *extra: str) -> str:
        return (run("ip", "-n", self.node_ns(node), "route", "show", *extra).stdout
                + run("ip", "-6", "-n", self.node_ns(node), "route", "show", *extra).stdout)

    # -- teardown --------------------------------------------------------------
    def close(self) -> None:
        for i in list(self.agents):
            self.stop_agent(i)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


def mini_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Build a cluster, yield it, and tear down everything it made (for module fixtures)."""
    c = Cluster(tmp_path_factory.mktemp("agent-cluster"))
    try:
        c.build()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from mini_cluster(tmp_path_factory)


# -- traffic -------------------------------------------------------------------

# -- the tests -----------------------------------------------------------------

def test_add_wires_and_records_the_pod(cluster: Cluster) -> None:
    pod = cluster.add_pod(1, "rec-a", labels={"app": "web"})
    try:
        assert [a.version for a in pod.addresses] == [4, 6]
        assert pod.addresses[0] in ipaddress.ip_network("198.19.0.0/16")
        assert pod.addresses[1] in ipaddress.ip_network("fd7a:bb1e:1::/48")
        names = [i["name"] for i in pod.result["interfaces"]]
        assert names == [host_veth_name(pod.cid, "eth0"), "eth0"]
        assert pod.result["interfaces"][1]["sandbox"] == pod.path
        wep = cluster.client.get(WorkloadEndpoint, endpoint_name("node-1", "rec-a"), "default")
        assert wep.spec.container_id == pod.cid and wep.spec.node == "node-1"
        assert wep.spec.interface_name == names[0]
        assert [str(n) for n in wep.spec.ip_networks] == [f"{a}/{a.max_prefixlen}"
                                                          for a in pod.addresses]
        assert dict(wep.meta.labels) == {"app": "web", "projectcalico.org/namespace": "default",
                                         "projectcalico.org/orchestrator": "k8s"}
        assert ("kubernetes.io/metadata.name", "default") in wep.spec.namespace_labels
        assert [(p.name, p.port) for p in wep.spec.ports] == [("http", 8080)]
        # ADD again (a runtime retry) gives the same addresses
        rc, again = cluster.cni(1, "ADD", pod.cid, pod.path,
                                args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=rec-a")
        assert rc == 0 and again["ips"] == pod.result["ips"]
        # the block routes: a blackhole here, a route via node-1 on node-2
        blocks = IPAM(cluster.client).affine_blocks("node-1")
        assert blocks
        for block in blocks:
            wait_for(f"blackhole {block} on node-1", lambda b=block: f"blackhole {b}" in
                     cluster.routes(1, "proto", "77"))
            wait_for(f"route to {block} on node-2", lambda b=block: f"{b} via" in
                     cluster.routes(2, "proto", "77"))
    finally:
        cluster.remove_pod(pod)


def test_del_frees_everything_and_is_idempotent(cluster: Cluster) -> None:
    pod = cluster.add_pod(2, "del-a")
    veth = host_veth_name(pod.cid, "eth0")
    handle = f"{NETWORK}.{pod.cid}.eth0"
    ipam = IPAM(cluster.client)
    assert ipam.addresses_of(handle) == tuple(pod.addresses)
    assert veth in run("ip", "-n", cluster.node_ns(2), "link").stdout
    rc, out = cluster.del_pod(pod)
    assert rc == 0, out
    assert ipam.addresses_of(handle) == ()
    routes = cluster.routes(2)  # the pair is down at once: its routes are gone
    # the agent's reaper deletes the retired pair in the background
    wait_for(f"{veth} deleted", lambda: veth not in run("ip", "-n", cluster.node_ns(2),
                                                         "link").stdout, 5.0)
    assert all(f"{a} dev {veth}" not in routes for a in pod.addresses), routes
    assert veth not in routes
    assert cluster.client.try_get(WorkloadEndpoint, endpoint_name("node-2", "del-a"),
                                  "default") is None
    assert "eth0" not in run("ip", "-n", pod.netns, "link").stdout
    # the runtime's second DEL, then one without a netns at all
    assert cluster.del_pod(pod)[0] == 0
    rc, out = cluster.del_pod(pod, netns="")
    assert rc == 0, out
    cluster.remove_pod(pod)


def test_del_after_the_netns_is_gone(cluster: Cluster) -> None:
    pod = cluster.add_pod(1, "del-b")
    run("ip", "netns", "del", pod.netns)  # the runtime tore the sandbox down first
    cluster.namespaces.remove(pod.netns)
    rc, out = cluster.del_pod(pod)
    assert rc == 0, out
    assert IPAM(cluster.client).addresses_of(f"{NETWORK}.{pod.cid}.eth0") == ()
    assert host_veth_name(pod.cid, "eth0") not in run("ip", "-n", cluster.node_ns(1),
                                                      "link").stdout
    cluster.pods.pop(pod.name)


def test_gc_tears_down_what_the_runtime_no_longer_lists(cluster: Cluster) -> None:
    keep = cluster.add_pod(1, "gc-keep")
    drop = cluster.add_pod(1, "gc-drop")
    node = cluster.node_ns(1)
    run("ip", "-n", node, "link", "add", "tab0123456789ab", "type", "veth", "peer", "name",
        "gcpeer")
    try:
        rc, out = cluster.cni(1, "GC", extra={"cni.dev/valid-attachments": [
            {"containerID": keep.cid, "ifname": "eth0"}]})
        assert rc == 0, out
        links = run("ip", "-n", node, "link").stdout
        assert host_veth_name(keep.cid, "eth0") in links
        assert host_veth_name(drop.cid, "eth0") not in links
        assert "tab0123456789ab" not in links
        ipam = IPAM(cluster.client)
        assert ipam.addresses_of(f"{NETWORK}.{drop.cid}.eth0") == ()
        assert ipam.addresses_of(f"{NETWORK}.{keep.cid}.eth0") == tuple(keep.addresses)
        assert cluster.client.try_get(WorkloadEndpoint, endpoint_name("node-1", "gc-drop"),
                                      "default") is None
        assert cluster.client.try_get(WorkloadEndpoint, endpoint_name("node-1", "gc-keep"),
                                      "default") is not None
    finally:
        run("ip", "-n", node, "link", "del", "tab0123456789ab", check=False)
        cluster.remove_pod(keep)
        cluster.remove_pod(drop)


def test_check_reports_a_route_removed_behind_the_agents_back(cluster: Cluster) -> None:
    pod = cluster.add_pod(1, "chk-a")
    try:
        args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=chk-a"
        prev = {**pod.result, "cniVersion": "1.1.0"}
        assert cluster.cni(1, "CHECK", pod.cid, pod.path, args=args,
                           extra={"prevResult": prev}) == (0, {})
        # Host side: the agent restores its routes (every 2 s here, or on any store
        # change), so delete and CHECK until one CHECK catches the gap.
        v4 = pod.address(4)
        for _ in range(5):
            run("ip", "-n", cluster.node_ns(1), "route", "del", f"{v4}/32", check=False)
            rc, out = cluster.cni(1, "CHECK", pod.cid, pod.path, args=args,
                                  extra={"prevResult": prev})
            if rc != 0:
                break
        assert rc != 0 and f"host route {v4}/32" in out.get("details", ""), out
        wait_for("the agent to restore the route",
                 lambda: f"{v4} dev {host_veth_name(pod.cid, 'eth0')}" in cluster.routes(1))
        assert cluster.cni(1, "CHECK", pod.cid, pod.path, args=args)[0] == 0
        # Pod side: nobody restores that; CHECK says so until ADD wires it again.
        run("ip", "-n", pod.netns, "route", "del", "default")
        rc, out = cluster.cni(1, "CHECK", pod.cid, pod.path, args=args)
        assert rc != 0 and "route 0.0.0.0/0 via 169.254.1.1 dev eth0 is missing in the pod" \
            in out.get("details", ""), out
        assert cluster.cni(1, "ADD", pod.cid, pod.path, args=args)[0] == 0
        assert cluster.cni(1, "CHECK", pod.cid, pod.path, args=args)[0] == 0
        # prevResult naming other addresses is an error too
        wrong = {**prev, "ips": [{"address": "198.19.255.1/32", "interface": 1}]}
        rc, out = cluster.cni(1, "CHECK", pod.cid, pod.path, args=args,
                              extra={"prevResult": wrong})
        assert rc != 0 and "prevResult" in out.get("msg", ""), out
    finally:
        cluster.remove_pod(pod)


def test_status_and_metrics(cluster: Cluster) -> None:
    assert cluster.cni(1, "STATUS") == (0, {})
    status, text = cluster.http_get(1, "/metrics")
    assert status == 200
    assert re.search(r'^tabby_cni_requests_total\{command="ADD",result="ok"\} [1-9]', text,
                     re.M), text
    assert re.search(r'^tabby_netlink_calls_total\{op="route_replace"\} [1-9]', text, re.M)
    assert re.search(r"^tabby_cni_request_duration_seconds_count\{command=\"ADD\"\} [1-9]",
                     text, re.M)
    assert re.search(r"^tabby_endpoints \d+", text, re.M)
    assert re.search(r"^tabby_ready 1", text, re.M)


def test_relabelling_pod_and_namespace_updates_the_endpoint(cluster: Cluster) -> None:
    pod = cluster.add_pod(2, "lbl-a", namespace="lbl", labels={"app": "one"})
    name = endpoint_name("node-2", "lbl-a")
    try:
        cluster.client.mutate(Pod, "lbl-a", "lbl", lambda p: p.with_meta(
            labels={"app": "two", "tier": "x"}))
        wait_for("pod labels on the endpoint", lambda: dict(cluster.client.get(
            WorkloadEndpoint, name, "lbl").meta.labels).get("app") == "two")
        wep = cluster.client.get(WorkloadEndpoint, name, "lbl")
        assert wep.meta.labels["tier"] == "x"
        assert wep.meta.labels["projectcalico.org/namespace"] == "lbl"
        cluster.client.mutate(Namespace, "lbl", "", lambda n: n.with_meta(
            labels={**n.meta.labels, "team": "blue"}))
        wait_for("namespace labels on the endpoint", lambda: ("team", "blue") in cluster.client
                 .get(WorkloadEndpoint, name, "lbl").spec.namespace_labels)
    finally:
        cluster.remove_pod(pod)
