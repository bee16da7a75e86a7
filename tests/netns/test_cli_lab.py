"""The tabby command against real stores and a real lab (issue 17): describe (pod: endpoint,
IPs, selecting policies; node: BGP peers from BIRD, blocks), node diags (a tarball with
BIRD's, nft's and the kernel's state), get -w and --dry-run=server on etcd.

Lab ``clx`` (2 nodes, IPv4, BGP mesh) is torn down (namespaces, agents, BIRDs: by PID)
even when a test fails; the etcd member is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabby.lab import builder
from tabby.lab.state import LabState, load, require
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "clx"
TABBY = [sys.executable, "-m", "tabby.cli.main"]
MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: front, namespace: web, labels: {app: front}}
spec:
  nodeName: node-1
  containers: [{name: main, image: busybox, ports: [{containerPort: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: front-in, namespace: web}
spec:
  podSelector: {matchLabels: {app: front}}
  policyTypes: [Ingress]
"""

TIMEOUT = 60.0  # seconds a wait_for in this module may take


def tabby(*args: str, env: dict[str, str] | None = None, ok: bool = True
          ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*TABBY, *args], capture_output=True, text=True, timeout=300,
                          check=False, env=env)
    if ok:
        assert done.returncode == 0, f"tabby {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    if load(LAB) is not None:
        builder.down(LAB)
    try:
        tabby("--lab", LAB, "lab", "up", "--name", LAB, "--nodes", "2", "--stack", "ipv4",
              "--bgp", "mesh")
        f = tmp_path_factory.mktemp("clx") / "m.yaml"
        f.write_text(MANIFESTS)
        tabby("--lab", LAB, "apply", "-f", str(f))
        yield require(LAB)
    finally:
        if load(LAB) is not None:
            builder.down(LAB)


def test_describe_pod_and_node(lab: LabState) -> None:
    out = tabby("--lab", LAB, "describe", "pod", "front", "-n", "web").stdout
    assert "Node:         node-1" in out and "Status:       Running" in out
    ip = json.loads(tabby("--lab", LAB, "get", "pod", "front", "-n", "web", "-o",
                          "json").stdout)["status"]["podIP"]
    assert f"IPs:          {ip}" in out and f"{ip}/32" in out
    ingress = next(line for line in out.splitlines() if line.strip().startswith("Ingress:"))
    assert "front-in" in ingress
    egress = next(line for line in out.splitlines() if line.strip().startswith("Egress:"))
    assert "<none>" in egress

    def established() -> bool:
        text = tabby("--lab", LAB, "describe", "node", "node-1").stdout
        return "198.18.0.12" in text and "Established" in text
    wait_for("node-1's mesh session in describe", established, TIMEOUT)
    out = tabby("--lab", LAB, "describe", "node", "node-1").stdout
    blocks = out.split("Blocks:")[1].split("BGP peers:")[0]
    assert "198.19." in blocks


def test_node_diags(lab: LabState, tmp_path: Path) -> None:
    out = tabby("--lab", LAB, "node", "diags", "--node", "node-1", "--dir", str(tmp_path)).stdout
    path = Path(out.splitlines()[0].rsplit(" ", 1)[1])
    assert path.parent == tmp_path and path.name.endswith(".tar.gz")
    with tarfile.open(path) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                 for m in tar.getmembers()}
    assert "table inet tabby" in files["nft.txt"]
    assert "BGP" in files["bird-protocols.txt"] and "Established" in files["bird-protocols.txt"]
    assert "198.19." in files["ip-routes-v4.txt"]
    assert files["agent.log"].strip()
    assert "name: node-1" in files["store.yaml"] and "front" in files["store.yaml"]
    assert files["errors.txt"] == "none\n"
    bad = tabby("--lab", LAB, "node", "diags", "--node", "node-9", ok=False)
    assert bad.returncode == 1 and "no node 'node-9'" in bad.stderr


def test_dry_run_server_on_the_lab_store(lab: LabState, tmp_path: Path) -> None:
    pod = tmp_path / "p.yaml"
    pod.write_text(MANIFESTS.split("---\n")[1].replace("front", "back"))
    out = tabby("--lab", LAB, "apply", "-f", str(pod), "--dry-run=server").stdout
    assert out == "pod/back created (server dry run)\n"
    assert tabby("--lab", LAB, "get", "pods", "-n", "web", "-o", "name").stdout == \
        "pod/front\n"
    assert not any(p.name == "back" for p in require(LAB).pods)  # nothing was wired either


ETCD_POOL = """\
apiVersion: tabby.dev/v1
kind: IPPool
metadata: {{name: {name}}}
spec: {{cidr: {cidr}}}
"""


def test_dry_run_server_and_watch_on_etcd(tmp_path: Path) -> None:
    from tabby.testing.etcd import EtcdCluster
    with EtcdCluster(size=1, base_dir=str(tmp_path)).start() as etcd:
        env = {**os.environ, "TABBY_DATASTORE": etcd.url, "TABBY_LAB": "clx-no-lab"}
        a = tmp_path / "a.yaml"
        a.write_text(ETCD_POOL.format(name="pool-a", cidr="198.19.0.0/16"))
        tabby("apply", "-f", str(a), env=env)
        over = tmp_path / "o.yaml"
        over.write_text(ETCD_POOL.format(name="pool-o", cidr="198.19.8.0/24"))
        bad = tabby("apply", "-f", str(over), "--dry-run=server", env=env, ok=False)
        assert bad.returncode == 1 and "overlaps IPPool/pool-a" in bad.stderr
        assert tabby("apply", "-f", str(over), "--dry-run=client", env=env).returncode == 0
        assert tabby("get", "ipp", "-o", "name", env=env).stdout == "ippool.tabby.dev/pool-a\n"
        with subprocess.Popen([*TABBY, "get", "ipp", "-w", "-o", "name",
                               "--request-timeout", "60"], env=env, text=True,
                              stdout=subprocess.PIPE) as watcher:
            try:
                assert watcher.stdout is not None
                # The list comes first: after it, the watch's start revision is fixed.
                assert watcher.stdout.readline() == "ippool.tabby.dev/pool-a\n"
                b = tmp_path / "b.yaml"
                b.write_text(ETCD_POOL.format(name="pool-b", cidr="198.18.128.0/20"))
                tabby("apply", "-f", str(b), env=env)
                assert watcher.stdout.readline() == "ippool.tabby.dev/pool-b\n"
                tabby("label", "ipp", "pool-a", "seen=yes", env=env)
                assert watcher.stdout.readline() == "ippool.tabby.dev/pool-a\n"
            finally:
                watcher.kill()
