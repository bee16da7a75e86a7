"""The tabby command on the Kubernetes datastore, against the lab's real API server (issue 17).

One one-node Kubernetes-mode lab (``dcxk``), torn down (namespaces, processes: by PID)
even when a test fails.

- ``apply --dry-run=server`` goes through the API server's own dry run (``dryRun=All``):
  a Pod tabby's model accepts but the API server's validation refuses (a container
  name that is not an RFC 1123 label) is refused with the API server's message, exit
  1, and nothing is stored; ``--dry-run=client`` of the same Pod passes, so the refusal
  came from the server; a valid object is "created (server dry run)" and is not there.
- ``get -w`` on the Kubernetes store prints a change made by someone else (kubectl):
  a tabby CRD kind and a core kind in one watch.
- ``tabby version --lab`` reads the agent's version from its /metrics in its node's
  namespace.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tabby as tabby_pkg
from tabby.lab.state import LabState
from tests.netns.kube_lab import KUBE_MISSING, TABBY, Kubectl, kube_lab, tabby

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(bool(KUBE_MISSING), reason=KUBE_MISSING),
]

LAB = "dcxk"
BAD_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: dcx-bad, namespace: default}
spec:
  containers: [{name: Bad_Name, image: busybox}]
"""
GOOD_SET = """\
apiVersion: tabby.dev/v1
kind: GlobalNetworkSet
metadata: {name: dcx-dry, labels: {role: dry}}
spec: {nets: [198.18.250.0/24]}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[LabState, Kubectl]]:
    with kube_lab(LAB, "--nodes", "1") as lab:
        yield lab


def test_dry_run_server_is_the_api_servers(lab: tuple[LabState, Kubectl],
                                           tmp_path: Path) -> None:
    _, kubectl = lab
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POD)
    refused = tabby(LAB, "apply", "-f", str(bad), "--dry-run=server", check=False)
    assert refused.returncode == 1, refused
    assert "pod/dcx-bad" in refused.stderr and "Bad_Name" in refused.stderr, refused.stderr
    assert "RFC 1123" in refused.stderr, refused.stderr  # the API server's own words
    assert "Traceback" not in refused.stderr
    passed = tabby(LAB, "apply", "-f", str(bad), "--dry-run=client")
    assert passed.stdout == "pod/dcx-bad created (dry run)\n"

    good = tmp_path / "good.yaml"
    good.write_text(GOOD_SET)
    out = tabby(LAB, "apply", "-f", str(good), "--dry-run=server").stdout
    assert out == "globalnetworkset.tabby.dev/dcx-dry created (server dry run)\n"

    # Nothing was written, as the API server itself says.
    pods = kubectl.get_json("pods", "-n", "default")["items"]
    assert not [p for p in pods if p["metadata"]["name"] == "dcx-bad"]
    sets = kubectl.get_json("globalnetworksets.tabby.dev")["items"]
    assert not [s for s in sets if s["metadata"]["name"] == "dcx-dry"]


class Lines:
    """A process's stdout lines, read on a thread so that waits have deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line.rstrip("\n"))

    def wait_for(self, wanted: str, times: int = 1, timeout: float = 60.0) -> None:
        """Until ``wanted`` has been printed ``times`` times in all."""
        deadline = time.monotonic() + timeout
        while self.seen.count(wanted) < times:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {wanted!r}"
                                     f" x{times}; the watch printed {self.seen}")
            try:
                self.seen.append(self.queue.get(timeout=min(left, 1.0)))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"tabby get -w exited {self.proc.returncode};"
                                         f" it printed {self.seen}") from None


def test_get_watch_sees_changes_made_with_kubectl(lab: tuple[LabState, Kubectl]) -> None:
    _, kubectl = lab
    gns = {"apiVersion": "tabby.dev/v1", "kind": "GlobalNetworkSet",
           "metadata": {"name": "dcx-watched", "labels": {"step": "one"}},
           "spec": {"nets": ["198.18.251.0/24"]}}
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dcx-watched"}}
    with subprocess.Popen([*TABBY, "--lab", LAB, "get", "globalnetworkset,namespace", "-w",
                           "-o", "name", "--request-timeout", "120"],
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            lines = Lines(proc)
            lines.wait_for("namespace/default")  # the list first, then the watch
            kubectl.apply(gns, ns)
            lines.wait_for("globalnetworkset.tabby.dev/dcx-watched")
            lines.wait_for("namespace/dcx-watched")
            kubectl.run("label", "globalnetworkset.tabby.dev", "dcx-watched", "step=two",
                        "--overwrite")
            lines.wait_for("globalnetworkset.tabby.dev/dcx-watched", times=2)
        finally:
            proc.kill()
            kubectl.delete(gns, ns)


def test_version_reads_the_agents_build_info(lab: tuple[LabState, Kubectl]) -> None:
    state, _ = lab
    out = json.loads(tabby(LAB, "version", "-o", "json").stdout)
    assert out["client"]["version"] == tabby_pkg.__version__
    assert [(a["node"], a["netns"], a["reachable"], a["version"]) for a in out["agents"]] == [
        (n.name, n.netns, True, tabby_pkg.__version__) for n in state.nodes]
