"""Ignored fields reported where they come in: ``tabby apply | create | replace`` print
kubectl-style warnings and still succeed; the agent logs them once per object version
(objects written past tabby's CLI, as kubectl does in Kubernetes mode)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tabby.agent.cache import StoreCache
from tabby.cli.main import main
from tabby.store.base import Key
from tabby.store.memory import MemoryStore

FELIX = """\
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  bpfEnabled: false
  bpfLogLevel: Debug
  failsafeInboundHostPorts: [{port: 22}]
"""
WARNING = ("Warning: FelixConfiguration/default: spec.bpfLogLevel is accepted and ignored by"
           " tabby: eBPF dataplane: tabby's dataplane is nftables")


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TABBY_DATASTORE", f"sqlite://{tmp_path}/tabby.db")
    monkeypatch.setenv("TABBY_LAB", "fld-no-such-lab")
    path = tmp_path / "felix.yaml"
    path.write_text(FELIX)
    return path


@pytest.mark.parametrize("verbs", [("apply",), ("create",), ("create", "replace"),
                                   ("apply", "apply")])
def test_write_verbs_warn_and_succeed(manifest: Path, verbs: tuple[str, ...],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    for verb in verbs:
        assert main([verb, "-f", str(manifest)]) == 0
        out, err = capsys.readouterr()
        assert err.splitlines() == [WARNING], verb  # bpfEnabled: false is what tabby does
        assert out.startswith("felixconfiguration.tabby.dev/default ")


@pytest.mark.parametrize("mode", ["client", "server"])
def test_dry_run_warns_too(manifest: Path, mode: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", "-f", str(manifest)]) == 0  # a dry run never creates the store
    capsys.readouterr()
    assert main(["apply", f"--dry-run={mode}", "-f", str(manifest)]) == 0
    assert capsys.readouterr().err.splitlines() == [WARNING]


def test_a_rejected_field_fails_the_document(manifest: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    manifest.write_text(FELIX + "  wireguardEnabled: true\n")
    assert main(["apply", "-f", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert ("error: FelixConfiguration/default: spec.wireguardEnabled: tabby has no WireGuard"
            " encryption") in err
    assert "Warning:" not in err  # the document did not apply: nothing was ignored


def test_an_honoured_only_document_is_quiet(manifest: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    manifest.write_text(FELIX.replace("  bpfLogLevel: Debug\n", ""))
    assert main(["apply", "-f", str(manifest)]) == 0
    assert capsys.readouterr().err == ""


# -- the agent ------------------------------------------------------------------------------

def felix(revision_note: str) -> dict[str, Any]:
    return {"apiVersion": "tabby.dev/v1", "kind": "FelixConfiguration",
            "metadata": {"name": "default", "annotations": {"note": revision_note}},
            "spec": {"bpfLogLevel": "Debug", "logSeverityScreen": "Info"}}


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [r.getMessage() for r in caplog.records if "accepted and ignored" in r.getMessage()]
    caplog.clear()
    return out


def test_agent_logs_once_per_object_version(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    key = Key("felixconfigurations.tabby.dev", "", "default")
    store.create(key, felix("one"))  # written past the model, as kubectl would
    cache = StoreCache(store, "node-1")
    caplog.set_level(logging.WARNING, logger="tabby.agent.cache")
    start = cache.load()
    assert logged(caplog) == [
        "FelixConfiguration/default: spec.logSeverityScreen is accepted and ignored by tabby:"
        " the agent logs to standard error at its --log-level",
        "FelixConfiguration/default: spec.bpfLogLevel is accepted and ignored by tabby:"
        " eBPF dataplane: tabby's dataplane is nftables"]
    cache.load()  # a relist reads the same version: nothing new
    assert logged(caplog) == []
    store.update(key, felix("two"), revision=store.get(key).revision)
    with store.watch(None, start + 1) as watch:
        cache.apply(watch.next(timeout=0.5))
    assert len(logged(caplog)) == 2  # a new version: logged again
