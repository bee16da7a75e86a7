"""Policy: store objects (YAML) in, the ``pol-*`` part of tabby's table as ``nft -f`` text out.

Each ``policy/<case>.yaml`` starts with a header document naming the node to
render (``render: node-1``; ``counters: true`` turns per-rule counters on); the
other documents are manifests as ``tabby apply`` takes them (WorkloadEndpoints as
the agent writes them). The expected text is ``policy/<case>.nft``;
``UPDATE_GOLDEN=1`` rewrites it. As root, every expected file must also pass
``nft -c`` (a dry run in a private namespace).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tabby.model import parse_manifest
from tabby.nft.render import render_full
from tabby.policy.nftables import desired_policy
from tabby.policy.synthetic import snapshot_of

HERE = Path(__file__).parent / "policy"
CASES = sorted(HERE.glob("*.yaml"))


def rendered(case: Path) -> str:
    header, *docs = yaml.safe_load_all(case.read_text())
    snapshot = snapshot_of([parse_manifest(d) for d in docs])
    return render_full(desired_policy(snapshot, header["render"],
                                      counters=bool(header.get("counters"))))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_policy_ruleset_matches_golden(case: Path) -> None:
    text = rendered(case)
    expected = case.with_suffix(".nft")
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(text)
    assert text == expected.read_text()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None
                    or shutil.which("unshare") is None,
                    reason="nft -c needs root and the nft binary")
@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden_rulesets_pass_nft_check(case: Path) -> None:
    done = subprocess.run(["unshare", "-n", "nft", "-c", "-f", str(case.with_suffix(".nft"))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
