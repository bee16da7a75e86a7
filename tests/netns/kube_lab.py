"""Kubernetes-mode labs for the netns tests: ``tabby lab up --datastore kubernetes``,
driven with kubectl against the lab's real API server as a user would.

    KUBE_MISSING              why these tests skip ('' when the programs are built)
    kube_lab(name, *args)     context manager: the lab up, yields (LabState, Kubectl);
                              always down (by PID) and checked torn down at the end
    Kubectl(kubeconfig)       run / apply / delete / get_json (documents sent as JSON)
    probe_addresses(...)      the lab's prober from one pod's namespace to given addresses
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabby.errors import ConfigError
from tabby.lab import prober, system
from tabby.lab.state import LabState, load, require
from tests.netns.test_lab_cluster import assert_torn_down, ensure_gone

TABBY = [sys.executable, "-m", "tabby.cli.main"]


def _missing() -> str:
    from tabby.kube.binaries import bin_dir
    try:
        bin_dir()
    except ConfigError as exc:
        return str(exc)
    return ""


KUBE_MISSING = _missing()


def tabby(lab: str, *args: str, stdin: str | None = None,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*TABBY, "--lab", lab, *args], input=stdin, capture_output=True,
                          text=True, timeout=300, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"tabby {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


def manifests(docs: Sequence[Mapping[str, Any]]) -> str:
    """Documents for kubectl's stdin, as JSON: its YAML reader takes an unquoted ``y``
    (namespace y) for a boolean, which PyYAML does not quote."""
    return "\n---\n".join(json.dumps(d) for d in docs) + "\n"


@dataclass(frozen=True, slots=True)
class Kubectl:
    """kubectl (the one built with the control plane) with the lab's admin kubeconfig."""

    kubeconfig: Path

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        from tabby.kube.binaries import program
        done = subprocess.run([program("kubectl"), "--kubeconfig", str(self.kubeconfig),
                               *args], input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def apply(self, *docs: Mapping[str, Any], check: bool = True
              ) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-f", "-", stdin=manifests(docs), check=check)

    def delete(self, *docs: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.run("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                        stdin=manifests(docs))

    def get_json(self, *args: str) -> Any:
        return json.loads(self.run("get", *args, "-o", "json").stdout)


@contextlib.contextmanager
def kube_lab(name: str, *args: str) -> Iterator[tuple[LabState, Kubectl]]:
    """``tabby lab up --name NAME --datastore kubernetes ARGS``; down at the end, whatever
    happened, and nothing of it left (namespaces, processes, directory)."""
    ensure_gone(name)
    try:
        out = tabby(name, "lab", "up", "--name", name, "--datastore", "kubernetes", *args)
        assert f"lab {name} is up" in out.stdout
        status = json.loads(tabby(name, "lab", "status", "-o", "json").stdout)
        yield require(name), Kubectl(Path(status["kubeconfig"]))
    finally:
        state = load(name)
        if state is not None:
            tabby(name, "lab", "down", "--name", name)
            assert_torn_down(state)


def probe_addresses(netns: str, targets: Sequence[tuple[str, int, str, str]],
                    timeout: float = 0.5) -> list[bool]:
    """From ``netns``, one new connection per (address, port, protocol, expected answer):
    connected only if the listener that answers is the expected pod (the lab's prober)."""
    request = {"timeout": timeout, "probes": [
        {"id": i, "address": a, "port": port, "protocol": proto, "expect": expect}
        for i, (a, port, proto, expect) in enumerate(targets)]}
    done = subprocess.run(system.in_netns(netns, [sys.executable, "-I", "-S", prober.__file__]),
                          input=json.dumps(request), capture_output=True, text=True,
                          timeout=60 + timeout * len(targets), check=True)
    answers = {r["id"]: bool(r["connected"]) for r in json.loads(done.stdout)["results"]}
    return [answers[i] for i in range(len(targets))]
