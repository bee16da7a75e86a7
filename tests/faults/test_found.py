"""What the fuzzers found, pinned: one case each, as it was found (each failed before its fix)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tabby.errors import ValidationError
from tabby.model import parse_manifest

TABBY = [str(Path(sys.executable).parent / "tabby")]


def block(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "tabby.dev/v1", "kind": "IPAMBlock",
            "metadata": {"name": "198-19-0-0-30"},
            "spec": {"cidr": "198.19.0.0/30", "allocations": [0, None, None, None],
                     "unallocated": [1, 2, 3], "attributes": [{"handle_id": "h"}], **spec}}


@pytest.mark.parametrize(("spec", "field"), [
    ({"unallocated": ["a/b"]}, "spec.unallocated"),
    ({"unallocated": [{"x": 1}]}, "spec.unallocated"),
    ({"allocations": 1.5}, "spec.allocations"),
])
def test_a_block_with_nonsense_fields_is_a_field_error(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_manifest(block(**spec))
    assert field in str(err.value)


def test_a_handle_with_nonsense_counts_is_a_field_error() -> None:
    doc = {"apiVersion": "tabby.dev/v1", "kind": "IPAMHandle", "metadata": {"name": "h"},
           "spec": {"handleID": "h", "block": {"198.19.0.0/30": ["x"]}}}
    with pytest.raises(ValidationError) as err:
        parse_manifest(doc)
    assert "spec.block" in str(err.value)


@pytest.mark.parametrize("text", ["[" * 50_000, "a:\n" + "".join(
    f"{'  ' * (i + 1)}k:\n" for i in range(300)) + "  " * 301 + "v\n"])
def test_apply_refuses_a_document_nested_too_deep(tmp_path: Path, text: str) -> None:
    done = subprocess.run([*TABBY, "--datastore", f"sqlite://{tmp_path / 's.db'}", "apply",
                           "-f", "-"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "nested more than 100 levels deep" in done.stderr


@pytest.mark.parametrize("doc", [
    {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
     "metadata": {"name": "default"},
     "spec": {"failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22}]}},
    {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
     "metadata": {"name": "p"}, "spec": {"selector": ""}},
])
def test_objects_survive_their_own_round_trip(doc: dict[str, Any]) -> None:
    obj = parse_manifest(doc)
    assert parse_manifest(obj.to_manifest()) == obj


@pytest.mark.parametrize("spec", [{"nodeSelector": "!has(rr)", "peerSelector": ""},
                                  {"node": "node-1", "peerIP": "", "asNumber": 65000}])
def test_an_empty_peer_is_no_peer(spec: dict[str, Any]) -> None:
    """Found by full runs (make faults; seeds 20261206 and 5): an empty peerSelector or
    peerIP was accepted, written back without it, and the written object was refused."""
    with pytest.raises(ValidationError) as err:
        parse_manifest({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                        "metadata": {"name": "p"}, "spec": spec})
    assert "needs peerIP" in str(err.value)
