"""Services: Services and EndpointSlices (YAML) in, the ``svc-*`` part of tabby's table
as ``nft -f`` text out (``UPDATE_GOLDEN=1`` rewrites the expected file)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tabby.model import Node, parse_manifest
from tabby.nft.render import render_full
from tabby.services.nft import services_part
from tabby.snapshot import Snapshot

HERE = Path(__file__).parent / "services"


def test_services_ruleset_matches_golden() -> None:
    objects = [parse_manifest(doc) for doc in yaml.safe_load_all((HERE / "input.yaml").read_text())]
    nodes = [o for o in objects if isinstance(o, Node)]
    others = [o for o in objects if not isinstance(o, Node)]
    text = render_full(services_part(Snapshot.build(nodes=nodes, others=others), "node-1"))
    expected = HERE / "ruleset.nft"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(text)
    assert text == expected.read_text()
