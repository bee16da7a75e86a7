"""natOutgoing: pools (YAML) in, tabby's table as ``nft -f`` text out (``UPDATE_GOLDEN=1``
rewrites the expected file)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tabby.calc.natoutgoing import natoutgoing_part
from tabby.model import parse_manifest
from tabby.nft.render import render_full
from tabby.snapshot import Snapshot

HERE = Path(__file__).parent / "natoutgoing"


def test_nat_outgoing_ruleset_matches_golden() -> None:
    pools = [parse_manifest(doc) for doc in yaml.safe_load_all((HERE / "pools.yaml").read_text())]
    text = render_full(natoutgoing_part(Snapshot.build(others=pools), "node-1"))
    expected = HERE / "ruleset.nft"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(text)
    assert text == expected.read_text()
