"""docs/fields.md against the model: generated from it (``make fields``), and complete."""

from __future__ import annotations

from pathlib import Path

from tabby.model import all_kinds
from tabby.model.felixfields import GROUPS
from tabby.model.kindnotes import NOTES, UNSERVED
from tabby.model.reference import render, type_name

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "fields.md"


def test_docs_fields_is_generated_from_the_model() -> None:
    assert DOC.exists(), "docs/fields.md is missing: run `make fields`"
    assert DOC.read_text() == render(), (
        "docs/fields.md differs from the model: run `make fields` and commit it")


def test_every_kind_has_a_section() -> None:
    text = render()
    for cls in all_kinds():
        info = cls.KIND
        assert f'<a id="{info.resource}"></a>' in text
        assert f"## {info.kind} ({info.api_version})" in text
        for short in info.short_names:
            assert f"`{short}`" in text


def test_every_declared_field_is_listed_with_its_status() -> None:
    text = render()
    for notes in NOTES.values():
        for note in notes.notes:
            assert f"| `{note.path}` |" in text, note.path
    for group in GROUPS:
        assert f"**{group.title}**: {group.status.value}:" in text
        for f in group.fields:
            assert f"| `spec.{f.name}` | {type_name(f.schema)} |" in text
    for kind in UNSERVED:
        assert f"| {kind} |" in text


def test_extensions_and_statuses_are_marked() -> None:
    text = render()
    assert ("| `spec.bfd` | object | BFD on this peer's sessions. A tabby extension (Calico"
            " has no BFD). | honoured; *tabby extension* |") in text
    assert "| `spec.bfd.multiplier` |" in text
    assert ("| `spec.keepaliveTime` | - | Calico's; not in tabby's schema. | rejected: BIRD's"
            " keepalive follows its hold time") in text
    assert "| `spec.bpfEnabled` | boolean | ignored (quiet when `false`) |" in text
    assert "| `spec.wireguardEnabled` | boolean | rejected (accepted when `false`) |" in text
    assert ("| `spec.ingress[].metadata.annotations` | map of string | Free annotations. |"
            " ignored (with `spec.ingress[].metadata`) |") in text
