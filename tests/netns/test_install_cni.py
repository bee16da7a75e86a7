"""``tabby install-cni`` into a temporary root, then containerd's ``ctr run --cni`` on it.

    lab tpk (1 node, IPv4, SQLite)     tpk-node-1: the lab's agent, containerd, ctr
    ROOT/opt/cni/bin                   portmap (linked first, as on a host), then what
    ROOT/etc/cni/net.d                 install-cni writes: launchers, tabby.d/, conflist

install-cni is told the lab node's agent socket, MTU and datastore. The installed
launchers run with nothing of this checkout: ``env -i``, cwd /, and a private mount
namespace where the checkout (its virtualenv included) is an empty tmpfs. ctr then
finds ROOT's conflist at /etc/cni/net.d and ROOT's bin at /opt/cni/bin
(``tabby.testing.containerd``, as tests/netns/test_containerd.py drives the lab's
own), so the pod is wired by the installed copy. A read-only mount of the bin dir
is refused without a change, and ``--uninstall`` leaves ROOT as it found it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tabby.cni.install import link_reference_plugins
from tabby.ipam import IPAM
from tabby.lab import builder, system
from tabby.lab.state import LabState, load, require
from tabby.store import open_store
from tabby.store.client import Client
from tabby.testing.containerd import CNIPaths, Containerd, busybox_image, installed
from tests.netns.http import http_get

MISSING = installed()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(MISSING is not None, reason=f"containerd/ctr not installed: {MISSING}"),
]

LAB = "tpk"
CHECKOUT = Path(__file__).resolve().parents[2]
TABBY = [sys.executable, "-m", "tabby.cli.main"]
POOL = ipaddress.ip_network("198.19.0.0/16")
PORT = 8080
CONFLIST = "10-tabby.conflist"
T = TypeVar("T")


def tabby(*args: str) -> str:
    done = subprocess.run([*TABBY, "--lab", LAB, *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd="/")
    assert done.returncode == 0, f"tabby {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def without_checkout(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv`` with exactly ``env``, cwd /, the checkout hidden under an empty tmpfs."""
    hide = f"mount -t tmpfs tpk-hidden {CHECKOUT} && exec env -i \"$@\""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh",
         *(f"{k}={v}" for k, v in env.items()), *argv],
        capture_output=True, text=True, timeout=60, check=False, cwd="/")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return value


@dataclass(frozen=True, slots=True)
class Host:
    """The temporary root and what install-cni was told about the lab node."""

    bin_dir: Path
    conf_dir: Path
    netns: str
    datastore: str
    install_output: str
    rerun_output: str  # the same install-cni again, at once


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    if load(LAB) is not None:
        builder.down(LAB)
    try:
        assert f"lab {LAB} is up" in tabby("lab", "up", "--name", LAB, "--nodes", "1",
                                           "--stack", "ipv4")
        yield require(LAB)
    finally:
        if load(LAB) is not None:
            tabby("lab", "down", "--name", LAB)
        listed = system.run(["ip", "netns", "list"]).split()
        assert not [n for n in listed if n.startswith(f"{LAB}-")]


@pytest.fixture(scope="module")
def host(lab: LabState) -> Iterator[Host]:
    [node] = lab.nodes
    lab_conf = json.loads(node.cni_conflist.read_text())
    root = Path(tempfile.mkdtemp(prefix="tpk-root-"))
    bin_dir, conf_dir = root / "opt/cni/bin", root / "etc/cni/net.d"
    try:
        bin_dir.mkdir(parents=True)
        conf_dir.mkdir(parents=True)
        link_reference_plugins(bin_dir, ["portmap"])
        args = ["install-cni", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
                "--cni-socket", lab_conf["plugins"][0]["socket"],
                "--mtu", str(lab_conf["plugins"][0]["mtu"]),
                "--datastore", lab.datastore, "--node", node.name]
        first = tabby(*args)
        yield Host(bin_dir, conf_dir, node.netns, lab.datastore, first, tabby(*args))
    finally:
        shutil.rmtree(root)


def test_installed_files(host: Host, lab: LabState) -> None:
    [package] = (host.bin_dir / "tabby.d").iterdir()
    assert host.install_output.splitlines() == [
        f"written {package}", f"written {host.bin_dir}/tabby-cni",
        f"written {host.bin_dir}/tabby-ipam", f"written {host.conf_dir}/10-tabby.conflist"]
    assert sorted(p.name for p in host.conf_dir.iterdir()) == ["10-tabby.conflist"]
    conf = json.loads((host.conf_dir / "10-tabby.conflist").read_text())
    lab_conf = json.loads(lab.nodes[0].cni_conflist.read_text())
    assert conf["plugins"][0].pop("ipam") == {"type": "tabby-ipam", "node": "node-1",
                                              "datastore": lab.datastore}
    assert conf == lab_conf  # the lab's own conflist, portmap included
    assert not (package / "kubernetes" / "aio").exists()
    assert (package / "kubernetes" / "client" / "api_client.py").is_file()


def test_launchers_run_without_the_checkout(host: Host) -> None:
    probe = without_checkout(["/usr/bin/python3", "-c", "import tabby"], {})
    assert probe.returncode == 1 and "No module named 'tabby'" in probe.stderr  # hidden
    for plugin in ("tabby-cni", "tabby-ipam"):
        done = without_checkout([str(host.bin_dir / plugin)], {"CNI_COMMAND": "VERSION"})
        assert done.returncode == 0 and json.loads(done.stdout)["supportedVersions"], done
    # tabby-ipam's store, IPAM engine and datastore clients come from the copy too.
    env = {"CNI_COMMAND": "STATUS"}
    for url, answer in ((host.datastore, ""),
                        ("kubernetes:///nonexistent/kubeconfig", "cannot load")):
        config = {"cniVersion": "1.1.0", "name": "n", "type": "tabby-ipam",
                  "ipam": {"type": "tabby-ipam", "datastore": url, "node": "node-1"}}
        done = without_checkout(["sh", "-c", f"echo '{json.dumps(config)}' | "
                                 f"{host.bin_dir}/tabby-ipam"], env)
        assert answer in done.stdout and "Traceback" not in done.stderr, done
        assert done.returncode == (0 if not answer else 1), done


def test_ctr_run_cni_through_the_installed_plugin(host: Host) -> None:
    cd = Containerd(host.netns, namespace=LAB)
    client = Client(open_store(host.datastore))
    cid = f"{LAB}-web"
    try:
        cd.start()
        cd.import_image(busybox_image(cd.dir / "busybox.tar"))
        run = cd.run_cni("web", ["sh", "-c", f"echo tpk-web > /tmp/index.html && "
                                              f"exec httpd -f -p {PORT} -h /tmp"],
                         CNIPaths(host.conf_dir, host.bin_dir))

        def started() -> bool:
            assert run.running(), f"ctr exited:\n{run.output()}"
            return cd.tasks().get("web") == "RUNNING"

        wait_for("the task to run (once the whole chain has run)", started)
        line = cd.exec("web", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        words = line.split()
        addr = ipaddress.IPv4Interface(words[words.index("inet") + 1])
        assert addr.ip in POOL and addr.network.prefixlen == 32
        handle = f"k8s-pod-network.{cid}.eth0"
        assert IPAM(client).addresses_of(handle) == (addr.ip,)
        [cached] = run.cached_results()  # libcni's: ctr ran the installed conflist
        entry = json.loads(cached.read_text())
        assert base64.b64decode(entry["config"]) == (host.conf_dir / CONFLIST).read_bytes()
        assert [ip["address"] for ip in entry["result"]["ips"]] == [str(addr)]
        got = wait_for("httpd from the node", lambda: http_get(host.netns, str(addr.ip), PORT))
        assert got == "tpk-web"
        [veth] = [n for n in system.link_names(host.netns) if n.startswith("tab")]
        cd.ctr("task", "kill", "--signal", "SIGKILL", "web")
        assert run.wait(20) == 137
        assert IPAM(client).addresses_of(handle) == ()  # ctr's DEL, through the copy
        assert run.cached_results() == []
        wait_for(f"{veth} deleted (in the background)",  # DEL retires, the agent deletes
                 lambda: veth not in system.link_names(host.netns), 5.0)
    finally:
        cd.stop()
        client.store.close()
    assert cd.processes() == [] and not cd.dir.exists()


def test_read_only_bin_dir_changes_nothing(host: Host) -> None:
    before = {p: p.read_bytes() for p in host.conf_dir.iterdir()}
    script = (f"mount --bind {host.bin_dir} {host.bin_dir} && "
              f"mount -o remount,bind,ro {host.bin_dir} && exec \"$@\"")
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *TABBY,
         "install-cni", "--bin-dir", str(host.bin_dir), "--conf-dir", str(host.conf_dir),
         "--datastore", host.datastore, "--mtu", "1300"],
        capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert done.returncode == 1
    assert done.stderr == f"error: bin dir {host.bin_dir} is read-only\n"
    assert {p: p.read_bytes() for p in host.conf_dir.iterdir()} == before


def test_rerun_changes_nothing_and_uninstall_removes_only_its_own(host: Host) -> None:
    assert host.rerun_output == host.install_output.replace("written", "unchanged")
    gone = tabby("install-cni", "--uninstall", "--bin-dir", str(host.bin_dir),
                 "--conf-dir", str(host.conf_dir))
    assert len(gone.splitlines()) == 4 and all(line.startswith("removed ")
                                               for line in gone.splitlines())
    assert [p.name for p in host.bin_dir.iterdir()] == ["portmap"]
    assert list(host.conf_dir.iterdir()) == []
