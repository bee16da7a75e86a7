"""The README and docs/ point only at files in this repository, and those files exist.

Markdown links (``[text](path)``) and repository paths written in the text
(``docs/install.md``, ``tests/netns/test_wheel.py``, ``scripts/build-image``)
are checked against the checkout; a path that leaves the repository
(``../``, ``/work/...``) fails whatever it names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:docs|tests|scripts|examples|manifests|src|bench)/[\w./*-]*[\w*])")


def _targets(doc: Path) -> list[tuple[str, Path]]:
    text = doc.read_text()
    out = [(m, doc.parent / m) for m in LINK.findall(text) if "://" not in m]
    out += [(m, ROOT / m) for m in REPO_PATH.findall(text)]
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_exist_in_the_repository(doc: Path) -> None:
    missing = []
    for written, path in _targets(doc):
        if "*" in written:  # a pattern: something must match it
            if not list(ROOT.glob(written)):
                missing.append(written)
            continue
        resolved = path.resolve()
        if ROOT not in resolved.parents or not resolved.exists():
            missing.append(written)
    assert not missing, f"{doc.relative_to(ROOT)} names paths not in the repository: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_outside(doc: Path) -> None:
    text = doc.read_text()
    assert not re.search(r"\.\./|/work/", text), f"{doc.relative_to(ROOT)} points outside"
