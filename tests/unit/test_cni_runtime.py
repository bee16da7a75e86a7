"""The conflist executor (tabby.cni.runtime) and the plugin installer, without root."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabby.agent.cniserver import CNIServer
from tabby.cni.install import launcher_text, link_reference_plugins, write_plugin
from tabby.cni.runtime import ConfList, PluginFailed, Runtime, find_plugin, netns_exec
from tabby.errors import ConfigError
from tabby.testing.cni import FakePodHandler, short_tempdir

REFERENCE = Path("/usr/lib/cni")


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def handler() -> FakePodHandler:
    return FakePodHandler()


@pytest.fixture
def server(workdir: Path, handler: FakePodHandler) -> Iterator[CNIServer]:
    with CNIServer(workdir / "cni.sock", handler) as srv:
        srv.start()
        yield srv


def conflist(server_socket: Path, version: str = "1.1.0") -> ConfList:
    return ConfList.from_dict({
        "cniVersion": version, "name": "k8s-pod-network",
        "plugins": [{"type": "tabby-cni", "socket": str(server_socket), "mtu": 1500},
                    {"type": "tabby-cni", "socket": str(server_socket),
                     "capabilities": {"portMappings": True}}]})


# --- install ----------------------------------------------------------------------


def test_launcher_execs_a_real_interpreter(workdir: Path) -> None:
    path = write_plugin(workdir / "bin")
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    first = path.read_text().splitlines()[0]
    interpreter, flags = first[2:].split(" ")
    assert flags == "-IS"
    assert Path(interpreter) == Path(os.path.realpath(interpreter))  # no symlink, no shim
    assert "shims" not in interpreter
    assert write_plugin(workdir / "bin") == path  # rewriting in place is fine
    assert [p.name for p in path.parent.iterdir()] == ["tabby-cni"]
    with pytest.raises(ConfigError):
        launcher_text(Path("/opt/my python/bin/python3"), workdir)


def test_launcher_runs_without_the_venv(workdir: Path) -> None:
    path = write_plugin(workdir, interpreter=Path(os.path.realpath(sys.executable)))
    out = subprocess.run([str(path)], env={"CNI_COMMAND": "VERSION"}, input=b"",
                         capture_output=True, check=True).stdout
    assert b'"supportedVersions"' in out


@pytest.mark.skipif(not (REFERENCE / "portmap").exists(), reason="no reference CNI plugins")
def test_link_reference_plugins(workdir: Path) -> None:
    links = link_reference_plugins(workdir, ["portmap", "tuning"])
    assert [p.name for p in links] == ["portmap", "tuning"]
    assert all(p.is_symlink() and p.resolve().parent == REFERENCE for p in links)
    link_reference_plugins(workdir, ["portmap"])  # idempotent
    with pytest.raises(ConfigError, match="missing"):
        link_reference_plugins(workdir, ["no-such-plugin"])


# --- runtime ----------------------------------------------------------------------


def test_conflist_validation(workdir: Path) -> None:
    for bad in ({"name": "n", "cniVersion": "1.0.0", "plugins": []},
                {"cniVersion": "1.0.0", "plugins": [{"type": "x"}]},
                {"name": "n", "plugins": [{"type": "x"}]}):
        with pytest.raises(ConfigError):
            ConfList.from_dict(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        ConfList.load(workdir / "absent.conflist")
    conf = conflist(workdir / "s")
    (workdir / "k.conflist").write_text(json.dumps(conf.to_dict()))
    assert ConfList.load(workdir / "k.conflist") == conf


def test_plugin_config_injection(workdir: Path) -> None:
    rt = Runtime(conflist(workdir / "s", "1.0.0"), [workdir])
    first, second = rt.conflist.plugins
    caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 1}}
    one = rt.plugin_config(first, None, caps)
    assert one == {**first, "name": "k8s-pod-network", "cniVersion": "1.0.0"}
    two = rt.plugin_config(second, {"cniVersion": "1.0.0"}, caps)
    assert two["prevResult"] == {"cniVersion": "1.0.0"}
    assert two["runtimeConfig"] == {"portMappings": caps["portMappings"]}


def test_find_plugin_and_prefix(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="tabby-cni"):
        find_plugin("tabby-cni", [workdir])
    path = write_plugin(workdir)
    assert find_plugin("tabby-cni", ["/nonexistent", workdir]) == path
    assert netns_exec("tc-node") == ("ip", "netns", "exec", "tc-node")


def test_chain_add_check_del_with_cache(workdir: Path, server: CNIServer,
                                        handler: FakePodHandler) -> None:
    bindir = workdir / "bin"
    write_plugin(bindir)
    rt = Runtime(conflist(server.socket_path), [bindir], cache_dir=workdir / "cache")
    args = {"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web", "IgnoreUnknown": "1"}
    result = rt.add("c1", "/var/run/netns/tc-p", args=args,
                    capability_args={"portMappings": []})
    assert result["cniVersion"] == "1.1.0" and result["ips"]
    assert [e["containerId"] for e in rt.cached_attachments()] == ["c1"]
    rt.check("c1", "/var/run/netns/tc-p")
    rt.status()
    rt.delete("c1", "")
    assert rt.cached_attachments() == [] and handler.pods == {}
    rt.delete("c1", "")  # the second DEL: no cache, no prevResult, no netns
    assert handler.commands() == ["ADD", "ADD", "CHECK", "CHECK", "STATUS", "STATUS",
                                  "DEL", "DEL", "DEL", "DEL"]
    with pytest.raises(ConfigError, match="prevResult"):
        rt.check("c1", "/var/run/netns/tc-p")


def test_gc_deletes_stale_cached_attachments(workdir: Path, server: CNIServer,
                                             handler: FakePodHandler) -> None:
    write_plugin(workdir / "bin")
    rt = Runtime(conflist(server.socket_path), [workdir / "bin"], cache_dir=workdir / "c")
    for cid in ("a", "b"):
        rt.add(cid, f"/var/run/netns/tc-{cid}")
    rt.gc([("a", "eth0")])
    assert [e["containerId"] for e in rt.cached_attachments()] == ["a"]
    assert handler.gc_lists == [[("a", "eth0")], [("a", "eth0")]]
    assert list(handler.pods) == [("a", "eth0")]


def test_status_and_gc_skip_old_versions(workdir: Path, server: CNIServer,
                                         handler: FakePodHandler) -> None:
    write_plugin(workdir / "bin")
    rt = Runtime(conflist(server.socket_path, "1.0.0"), [workdir / "bin"])
    rt.status()
    rt.gc([])
    assert handler.calls == []


def test_plugin_failures_name_the_plugin(workdir: Path) -> None:
    write_plugin(workdir / "bin")
    rt = Runtime(conflist(workdir / "no-agent.sock"), [workdir / "bin"])
    with pytest.raises(PluginFailed) as info:
        rt.add("c1", "/var/run/netns/tc-p")
    assert (info.value.plugin, info.value.command, info.value.code) == ("tabby-cni", "ADD", 11)
    assert "tabby-cni ADD: CNI error 11" in str(info.value)


@pytest.mark.skipif(not (REFERENCE / "portmap").exists(), reason="no reference CNI plugins")
def test_version_of_a_reference_plugin(workdir: Path) -> None:
    rt = Runtime(conflist(workdir / "s", "1.0.0"), [REFERENCE])
    assert "1.0.0" in rt.version("portmap")["supportedVersions"]
