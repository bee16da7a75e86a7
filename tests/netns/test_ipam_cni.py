"""tabby-ipam under the reference CNI plugins (bridge, ptp), driven as a runtime would.

    ti-n<id>  the node namespace: the runtime runs /usr/lib/cni/{bridge,ptp} here
      ├── ti-a<id>  container a (eth0)     addresses from tabby-ipam, 198.19.200.0/24
      └── ti-b<id>  container b (eth0)     and fd7a:bb1e:200::/120

The plugin gets the network config on stdin and CNI_* in its environment;
CNI_PATH holds /usr/lib/cni and a directory with ``tabby-ipam``. The store is
a SQLite file in the test's temporary directory. Namespaces are removed even
when a test fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tabby.ipam import IPAM
from tabby.model import IPAMHandle, parse_manifest
from tabby.store import open_store
from tabby.store.client import Client

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("busybox") is None
    or not Path("/usr/lib/cni/bridge").exists(),
    reason="needs root, iproute2, busybox and the reference CNI plugins in /usr/lib/cni")

PLUGIN = Path(sys.executable).parent / "tabby-ipam"
V4_POOL, V6_POOL = "198.19.200.0/24", "fd7a:bb1e:200::/120"
NETWORK = "ti-net"
SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(4); print('ready', flush=True)
for _ in range(2):
    c, _ = s.accept(); c.sendall(b'hello from b'); c.close()
"""
CLIENT = """
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        c = socket.create_connection((sys.argv[1], 8080), timeout=2); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.05)
print(c.recv(100).decode())
"""


def sh(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: rc={done.returncode} {done.stdout}"
                             f" {done.stderr}".strip())
    return done


@dataclass
class Lab:
    node: str
    containers: dict[str, str]  # short name -> netns name
    url: str
    cni_path: str

    def cni(self, plugin: str, command: str, short: str, conf: dict[str, Any]
            ) -> dict[str, Any] | None:
        """Run /usr/lib/cni/<plugin> in the node namespace, exactly as a runtime does."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": f"cid-{short}",
               "CNI_NETNS": f"/var/run/netns/{self.containers[short]}", "CNI_IFNAME": "eth0",
               "CNI_PATH": self.cni_path}
        done = sh("ip", "netns", "exec", self.node, f"/usr/lib/cni/{plugin}",
                  input=json.dumps(conf), env=env, check=False)
        assert done.returncode == 0, f"{plugin} {command}: {done.stdout} {done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    def exec(self, short: str, *args: str, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.containers[short], *args, check=check)

    def addresses(self, short: str) -> set[str]:
        out = json.loads(self.exec(short, "ip", "-j", "addr", "show", "dev", "eth0").stdout)
        return {f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"]
                if a.get("scope") == "global"}

    def ipam(self) -> IPAM:
        return IPAM(Client(open_store(self.url)))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    tag = f"{os.getpid() % 100000}"
    node = f"ti-n{tag}"
    containers = {"a": f"ti-a{tag}", "b": f"ti-b{tag}"}
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    (bin_dir / "tabby-ipam").symlink_to(PLUGIN)
    url = f"sqlite://{tmp_path}/store.db"
    client = Client(open_store(url))
    for name, cidr, size in (("ti-v4", V4_POOL, 26), ("ti-v6", V6_POOL, 122)):
        client.create(parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                      "metadata": {"name": name},
                                      "spec": {"cidr": cidr, "blockSize": size}}))
    client.store.close()
    made: list[str] = []
    try:
        for ns in (node, *containers.values()):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            for key in ("all", "default"):
                sh("ip", "netns", "exec", ns, "sysctl", "-qw",
                   f"net.ipv6.conf.{key}.accept_dad=0")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield Lab(node, containers, url, f"/usr/lib/cni:{bin_dir}")
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)


def network(lab: Lab, plugin: str, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": NETWORK, "type": plugin, "ipMasq": False, **extra,
            "ipam": {"type": "tabby-ipam", "datastore": lab.url, "node": "ti-node",
                     "assign_ipv4": True, "assign_ipv6": True,
                     "routes": [{"dst": V4_POOL}, {"dst": V6_POOL}]}}


def talk(lab: Lab, src: str, dst_ip: str) -> None:
    """ping and a TCP exchange from container ``src`` to ``dst_ip`` (served in b)."""
    ping = lab.exec(src, "busybox", "ping", "-c", "1", "-W", "3", dst_ip, check=False)
    assert ping.returncode == 0, f"ping {dst_ip} from {src}: {ping.stdout} {ping.stderr}"
    with subprocess.Popen(
            ["ip", "netns", "exec", lab.containers["b"], sys.executable, "-c", SERVER, dst_ip],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as server:
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            got = lab.exec(src, sys.executable, "-c", CLIENT, dst_ip).stdout.strip()
            assert got == "hello from b"
        finally:
            server.kill()


def exercise(lab: Lab, plugin: str, conf: dict[str, Any], bridge: str = "") -> None:
    ipam = lab.ipam()
    try:
        check_pods(lab, plugin, conf, ipam, bridge)
    finally:
        ipam.client.store.close()


def check_pods(lab: Lab, plugin: str, conf: dict[str, Any], ipam: IPAM, bridge: str) -> None:
    results = {c: lab.cni(plugin, "ADD", c, conf) for c in ("a", "b")}
    given: dict[str, list[str]] = {}
    for c, result in results.items():
        assert result is not None and result["cniVersion"] == "1.0.0"
        given[c] = [ip["address"] for ip in result["ips"]]
        held = ipam.addresses_of(f"{NETWORK}.cid-{c}.eth0")
        assert [str(ipaddress.ip_interface(a).ip) for a in given[c]] == [str(a) for a in held]
        v4, v6 = (ipaddress.ip_interface(a) for a in given[c])
        assert v4.ip in ipaddress.ip_network(V4_POOL) and v4.network.prefixlen == 26
        assert v6.ip in ipaddress.ip_network(V6_POOL) and v6.network.prefixlen == 122
        assert lab.addresses(c) == set(given[c])  # the container wears tabby's addresses
    for dst_ip in (str(ipaddress.ip_interface(a).ip) for a in given["b"]):
        talk(lab, "a", dst_ip)
    if bridge:  # the reserved gateway went to the bridge, and to no pod
        out = json.loads(sh("ip", "-n", lab.node, "-j", "addr", "show", "dev", bridge).stdout)
        on_bridge = {f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"]}
        assert {"198.19.200.1/26", "fd7a:bb1e:200::1/122"} <= on_bridge
    assert lab.cni(plugin, "CHECK", "a", {**conf, "prevResult": results["a"]}) is None
    for c in ("a", "b"):
        assert lab.cni(plugin, "DEL", c, conf) is None
        assert ipam.addresses_of(f"{NETWORK}.cid-{c}.eth0") == ()
    assert ipam.client.list(IPAMHandle) == []
    assert lab.cni(plugin, "DEL", "a", conf) is None  # DEL again: still fine
    assert len(ipam.release_empty_blocks("ti-node")) == 2


def test_bridge_pods_on_one_node_reach_each_other(lab: Lab) -> None:
    exercise(lab, "bridge", network(lab, "bridge", bridge="tibr0", isGateway=True), "tibr0")


def test_ptp_pods_on_one_node_reach_each_other(lab: Lab) -> None:
    exercise(lab, "ptp", network(lab, "ptp"))
