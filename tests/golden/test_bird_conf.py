"""bird.conf: store objects (YAML) in, BIRD's configuration out, one file per case and node.

Each ``bird/<case>.yaml`` starts with a header document: ``render`` (the node,
or a list of nodes) and ``blocks`` (IPAM blocks in short form: ``cidr``,
``node``, ``holders`` {ordinal: node}, ``deleted``); the other documents are
manifests as ``tabby apply`` takes them. The expected text is
``bird/<case>.conf`` (one node) or ``bird/<case>.<node>.conf``;
``UPDATE_GOLDEN=1`` rewrites them. Every expected file must also parse with
the real BIRD (``bird -p``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tabby.bgp.config import render_bird_conf
from tabby.model import IPAMBlock, Node, block_name, parse_manifest
from tabby.snapshot import Snapshot

HERE = Path(__file__).parent / "bird"
CASES = sorted(HERE.glob("*.yaml"))


def block(spec: dict[str, Any]) -> IPAMBlock:
    import ipaddress
    cidr = ipaddress.ip_network(spec["cidr"])
    size = cidr.num_addresses
    allocations: list[int | None] = [None] * size
    attributes = []
    for ordinal, holder in sorted((spec.get("holders") or {}).items()):
        allocations[int(ordinal)] = len(attributes)
        attributes.append({"handle_id": f"k8s-pod-network.c{ordinal}.eth0",
                           "secondary": {"node": holder, "namespace": "default",
                                         "pod": f"p{ordinal}"}})
    return IPAMBlock.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPAMBlock", "metadata": {"name": block_name(cidr)},
        "spec": {"cidr": str(cidr), "affinity": f"host:{spec['node']}",
                 "allocations": allocations,
                 "unallocated": [i for i in range(size) if allocations[i] is None],
                 "attributes": attributes, "deleted": bool(spec.get("deleted"))}})


def load(case: Path) -> tuple[list[str], Snapshot]:
    header, *docs = yaml.safe_load_all(case.read_text())
    objects = [parse_manifest(d) for d in docs]
    snapshot = Snapshot.build(
        nodes=[o for o in objects if isinstance(o, Node)],
        blocks=[block(b) for b in header.get("blocks", [])],
        others=[o for o in objects if not isinstance(o, Node)])
    render = header["render"]
    return ([render] if isinstance(render, str) else list(render)), snapshot


def expectations() -> list[tuple[Path, str, Path]]:
    out = []
    for case in CASES:
        nodes, _ = load(case)
        for node in nodes:
            name = f"{case.stem}.conf" if len(nodes) == 1 else f"{case.stem}.{node}.conf"
            out.append((case, node, HERE / name))
    return out


@pytest.mark.parametrize(("case", "node", "expected"), expectations(),
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_bird_conf_matches_golden(case: Path, node: str, expected: Path) -> None:
    _, snapshot = load(case)
    text = render_bird_conf(snapshot, node)
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(text)
    assert text == expected.read_text()


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD (Debian's bird2) not installed")
@pytest.mark.parametrize("expected", [e for _, _, e in expectations()], ids=lambda p: p.name)
def test_bird_parses_every_golden(expected: Path) -> None:
    done = subprocess.run(["bird", "-p", "-c", str(expected)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_every_expected_file_has_a_case() -> None:
    wanted = {e.name for _, _, e in expectations()}
    assert {p.name for p in HERE.glob("*.conf")} == wanted


def test_rendering_is_deterministic() -> None:
    for case in CASES:
        nodes, snapshot = load(case)
        _, again = load(case)
        assert [render_bird_conf(snapshot, n) for n in nodes] == \
            [render_bird_conf(again, n) for n in nodes]
