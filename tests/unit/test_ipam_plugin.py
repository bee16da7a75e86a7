"""tabby-ipam, the CNI IPAM plugin: commands, result formats, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.cni import wire
from tabby.ipam import IPAM
from tabby.ipam.plugin import run
from tabby.model import IPAMHandle, parse_manifest
from tabby.store import open_store
from tabby.store.client import Client

PLUGIN = Path(sys.executable).parent / "tabby-ipam"


class Plugin:
    """Runs the plugin in-process as a runtime would call it, against one SQLite file."""

    def __init__(self, url: str) -> None:
        self.url = url

    def config(self, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": "net1", "type": "bridge",
                "ipam": {"type": "tabby-ipam", "datastore": self.url, "node": "n1", **ipam}}

    def call(self, command: str, conf: dict[str, Any] | str, cid: str = "c1",
             **env: str) -> tuple[int, dict[str, Any] | None]:
        full = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{cid}",
                "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", **env}
        full = {k: v for k, v in full.items() if v != "-"}  # "-": leave the variable out
        text = conf if isinstance(conf, str) else json.dumps(conf)
        code, out = run(full, text.encode())
        return code, json.loads(out) if out else None

    def client(self) -> Client:
        return Client(open_store(self.url))


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    p = Plugin(f"sqlite://{tmp_path}/store.db")
    client = p.client()
    for name, cidr, size in (("v4", "198.19.0.0/24", 26), ("v6", "fd7a:bb1e::/120", 122)):
        client.create(parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                      "metadata": {"name": name},
                                      "spec": {"cidr": cidr, "blockSize": size}}))
    client.store.close()
    yield p


def test_add_returns_block_prefix_and_reserved_gateway(plugin: Plugin) -> None:
    code, result = plugin.call("ADD", plugin.config(routes=[{"dst": "198.19.0.0/16"}]))
    assert code == 0
    assert result == {"cniVersion": "1.0.0",
                      "ips": [{"address": "198.19.0.2/26", "gateway": "198.19.0.1"}],
                      "routes": [{"dst": "198.19.0.0/16", "gw": "198.19.0.1"}]}


@pytest.mark.parametrize("version", wire.SUPPORTED_VERSIONS)
def test_add_answers_in_the_requested_version(plugin: Plugin, version: str) -> None:
    code, result = plugin.call("ADD", plugin.config(version, assign_ipv6=True))
    assert code == 0 and result is not None
    assert result["cniVersion"] == version
    old = version < "1.0.0"
    assert [ip.get("version") for ip in result["ips"]] == (["4", "6"] if old else [None, None])
    assert [ip["address"] for ip in result["ips"]] == ["198.19.0.2/26", "fd7a:bb1e::2/122"]
    assert [ip["gateway"] for ip in result["ips"]] == ["198.19.0.1", "fd7a:bb1e::1"]


def test_add_is_idempotent_and_del_releases(plugin: Plugin) -> None:
    conf = plugin.config(assign_ipv4="true", assign_ipv6="true")  # Calico writes strings
    first = plugin.call("ADD", conf)
    assert plugin.call("ADD", conf) == first
    assert plugin.call("ADD", conf, cid="c2")[1]["ips"][0]["address"] == "198.19.0.3/26"  # type: ignore[index]
    ipam = IPAM(plugin.client())
    assert [str(a) for a in ipam.addresses_of("net1.c1.eth0")] == ["198.19.0.2", "fd7a:bb1e::2"]
    assert plugin.call("DEL", conf) == (0, None)
    assert plugin.call("DEL", conf, CNI_NETNS="-") == (0, None)  # again, and without a netns
    assert ipam.addresses_of("net1.c1.eth0") == ()
    assert ipam.client.try_get(IPAMHandle, "net1.c1.eth0") is None


def test_add_records_who_holds_the_address(plugin: Plugin) -> None:
    plugin.call("ADD", plugin.config(), CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;"
                                                "K8S_POD_NAME=cart-1;K8S_POD_UID=x")
    assert IPAM(plugin.client()).attributes_of("net1.c1.eth0") == {
        "containerID": "c1", "ifname": "eth0", "namespace": "shop", "network": "net1",
        "node": "n1", "pod": "cart-1"}


def test_node_and_datastore_fall_back_to_the_environment(plugin: Plugin) -> None:
    conf = plugin.config()
    del conf["ipam"]["datastore"], conf["ipam"]["node"]
    assert plugin.call("ADD", conf, TABBY_DATASTORE=plugin.url, TABBY_NODE="n7")[0] == 0
    assert plugin.call("ADD", conf, cid="c2", TABBY_DATASTORE=plugin.url)[0] == 0
    ipam = IPAM(plugin.client())
    assert ipam.attributes_of("net1.c1.eth0")["node"] == "n7"
    assert ipam.attributes_of("net1.c2.eth0")["node"] == socket.gethostname()


def test_requested_pools_are_honoured(plugin: Plugin) -> None:
    client = plugin.client()
    client.create(parse_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                  "metadata": {"name": "other"},
                                  "spec": {"cidr": "198.19.9.0/24", "blockSize": 26}}))
    code, result = plugin.call("ADD", plugin.config(ipv4_pools=["other"]))
    assert code == 0 and result is not None
    assert result["ips"][0]["address"] == "198.19.9.2/26"
    code, result = plugin.call("ADD", plugin.config(ipv4_pools=["nope"]), cid="c2")
    assert code == 1 and result is not None and result["code"] == 101


def test_check(plugin: Plugin) -> None:
    conf = plugin.config()
    _, result = plugin.call("ADD", conf)
    assert plugin.call("CHECK", {**conf, "prevResult": result}) == (0, None)
    stale = {**conf, "prevResult": {"ips": [{"address": "198.19.0.9/26"}]}}
    code, err = plugin.call("CHECK", stale)
    assert code == 1 and err is not None and err["code"] == 102
    assert "198.19.0.9" in err["msg"]
    plugin.call("DEL", conf)
    code, err = plugin.call("CHECK", {**conf, "prevResult": result})
    assert err is not None and err["code"] == 102 and "holds no address" in err["msg"]
    code, err = plugin.call("CHECK", plugin.config("0.3.1"))
    assert err is not None and err["code"] == 1 and "does not allow CHECK" in err["msg"]


def test_version(plugin: Plugin) -> None:
    code, out = run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert code == 0
    assert json.loads(out) == {"cniVersion": "0.4.0",
                               "supportedVersions": list(wire.SUPPORTED_VERSIONS)}


def test_status_and_gc(plugin: Plugin) -> None:
    conf = plugin.config("1.1.0")
    for cid in ("keep", "stale"):
        plugin.call("ADD", conf, cid=cid)
    plugin.call("ADD", {**conf, "ipam": {**conf["ipam"], "node": "n2"}}, cid="elsewhere")
    assert plugin.call("STATUS", conf, CNI_CONTAINERID="-", CNI_IFNAME="-") == (0, None)
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert plugin.call("GC", gc, CNI_CONTAINERID="-", CNI_IFNAME="-") == (0, None)
    ipam = IPAM(plugin.client())
    assert ipam.handles("net1.") == ("net1.elsewhere.eth0", "net1.keep.eth0")  # n2's stays
    code, err = plugin.call("STATUS", plugin.config("1.1.0", ipv4_pools=["nope"]))
    assert code == 1 and err is not None and err["code"] == 50
    code, err = plugin.call("GC", plugin.config("1.0.0"))
    assert err is not None and err["code"] == 1


@pytest.mark.parametrize(("conf", "code", "msg"), [
    # What every plugin refuses (the front-end's part) is in test_cni_frontend.py.
    ('{"cniVersion": "1.0.0", "name": "n"}', 7, 'needs an "ipam" object'),
    ('{"cniVersion": "1.0.0", "name": "n", "ipam": {"assign_ipv4": 3}}', 7, "assign_ipv4"),
    ('{"cniVersion": "1.0.0", "name": "n", "ipam": {"routes": [{"gw": "1.2.3.4"}]}}', 7,
     "routes[0]"),
    # Raised inside the command, where tabby's other errors are mapped: must pass unchanged.
    ('{"cniVersion": "1.0.0", "name": "n", "ipam": {"assign_ipv4": false}}', 7,
     "nothing to assign"),
])
def test_errors_are_cni_error_objects(plugin: Plugin, conf: str, code: int, msg: str) -> None:
    rc, err = plugin.call("ADD", conf)
    assert rc == 1 and err is not None
    assert err["code"] == code and msg in err["msg"], err
    assert err["cniVersion"] == "1.0.0"


def test_pool_exhausted(plugin: Plugin) -> None:
    conf = plugin.config(ipv4_pools=["v4"])
    client = plugin.client()
    IPAM(client).assign("filler", "n9", num_v4=256, num_v6=0)
    code, err = plugin.call("ADD", conf)
    assert code == 1 and err is not None and err["code"] == 100
    assert "no free IPv4 address" in err["details"]


def test_dual_stack_failure_releases_the_v4_address(plugin: Plugin) -> None:
    IPAM(plugin.client()).assign("filler", "n9", num_v4=0, num_v6=256)
    code, err = plugin.call("ADD", plugin.config(assign_ipv6=True))
    assert code == 1 and err is not None and err["code"] == 100
    assert IPAM(plugin.client()).handles() == ("filler",)


@pytest.mark.parametrize("url", ["sqlite:///proc/no/such/dir/x.db", "etcd://127.0.0.1:9"])
def test_unreachable_datastore_is_try_again_later(plugin: Plugin, url: str) -> None:
    for command in ("ADD", "DEL", "CHECK"):
        code, err = plugin.call(command, {**plugin.config(), "ipam": {
            "type": "tabby-ipam", "datastore": url, "node": "n1"}})
        assert code == 1 and err is not None and err["code"] == 11, err
        assert "unavailable" in err["msg"]


def exec_plugin(command: str, stdin: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, **env}
    return subprocess.run([str(PLUGIN)], input=stdin, env=full, capture_output=True, text=True,
                          timeout=30, check=False)


def test_the_installed_command_speaks_cni(plugin: Plugin) -> None:
    version = exec_plugin("VERSION", '{"cniVersion": "1.1.0"}')
    assert version.returncode == 0
    assert json.loads(version.stdout)["supportedVersions"] == list(wire.SUPPORTED_VERSIONS)
    env = {"CNI_CONTAINERID": "x1", "CNI_NETNS": "/run/netns/x1", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni"}
    added = exec_plugin("ADD", json.dumps(plugin.config()), **env)
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads(added.stdout)["ips"][0]["address"] == "198.19.0.2/26"
    assert added.stdout == json.dumps(json.loads(added.stdout)) + "\n"  # the format as ever
    bad = exec_plugin("ADD", "{", **env)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 6
    assert "Traceback" not in bad.stdout + bad.stderr
    assert exec_plugin("DEL", json.dumps(plugin.config()), **env).returncode == 0
