"""The field reference (docs/fields.md), generated from the model.

For every registered kind: its apiVersion(s), scope, short names, and every
field path its ``SCHEMA`` names, with type, description and status (honoured;
accepted and ignored, with the reason; rejected, with the error), from the
kind's declaration in ``tabby.model.kindnotes``; tabby's extensions are marked.
Kinds without a schema (Kubernetes' own) list the fields tabby reads.

    python -m tabby.model.reference > docs/fields.md      # what `make fields` runs

``tests/unit/test_fields_reference.py`` fails when docs/fields.md is stale.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from tabby.model import all_kinds
from tabby.model.base import TABBY_GROUP, Resource
from tabby.model.felixfields import GROUPS as FELIX_GROUPS
from tabby.model.fieldnotes import UNSET, FieldNote, FieldNotes, Status
from tabby.model.kindnotes import UNSERVED, notes_for
from tabby.model.schema import KindSchema, Schema

__all__ = ["render", "rows", "type_name"]

Row = tuple[str, str, str, str]  # path, type, description, status

HEADER = """\
# Field reference

Generated from the model by `make fields` (`python -m tabby.model.reference`);
`tests/unit/test_fields_reference.py` fails when this file is stale. Do not edit by hand.

Every field of every kind is one of:

- **honoured**: tabby acts on it;
- **ignored**: accepted (the kind's CRD keeps it, so `kubectl apply` works) but without
  effect. `tabby apply`, `create` and `replace` print
  `Warning: <kind>/<name>: <field> is accepted and ignored by tabby: <reason>` on standard
  error and still succeed; the agent logs the same once per object version (that is how
  objects written with `kubectl` in Kubernetes mode are reported). "quiet when V": writing
  exactly V is what tabby does anyway, so no warning;
- **rejected**: an error naming the field and the reason (with "accepted when V": that
  one value is allowed).

A field that neither tabby nor the upstream API it follows knows is an unknown field
(an error, with a "did you mean"). Fields marked *tabby extension* are tabby's own.
Metadata: `name`, `namespace`, `labels` and `annotations` are honoured; the rest of
`metadata` is kept as written. `projectcalico.org/v3` is accepted wherever `tabby.dev/v1`
is.
"""


def render() -> str:
    kinds = sorted(all_kinds(), key=_order)
    out = [HEADER, "## Kinds", ""]
    out += [f"- [{c.KIND.kind}](#{c.KIND.resource}) ({c.KIND.api_version})" for c in kinds]
    out += ["- [Calico kinds tabby does not serve](#unserved)", ""]
    for cls in kinds:
        out += _kind_section(cls)
    out += ['<a id="unserved"></a>', "", "## Calico kinds tabby does not serve", "",
            "Applying one is an error naming the reason.", "", "| Kind | Why |", "|---|---|"]
    out += [f"| {kind} | {_cell(why)} |" for kind, why in sorted(UNSERVED.items())]
    return "\n".join(out) + "\n"


def _order(cls: type[Resource]) -> tuple[bool, str, str]:
    return (cls.KIND.group != TABBY_GROUP, cls.KIND.kind, cls.KIND.group)


def _kind_section(cls: type[Resource]) -> list[str]:
    info = cls.KIND
    notes = notes_for(info.resource)
    versions = ", ".join(f"`{v}`" for v in (info.api_version, *info.aliases))
    facts = [f"apiVersion {versions}", "namespaced" if info.namespaced else "cluster-scoped",
             f"resource `{info.resource}`"]
    if info.short_names:
        facts.append("short names " + ", ".join(f"`{s}`" for s in info.short_names))
    out = [f'<a id="{info.resource}"></a>', "", f"## {info.kind} ({info.api_version})", "",
           "; ".join(facts) + ".", ""]
    schema = getattr(cls, "SCHEMA", None)
    if isinstance(schema, KindSchema):
        out += _table(rows(schema, notes, skip=_felix_names() if _is_felix(cls) else ()))
        if _is_felix(cls):
            out += _felix_groups(notes)
    else:
        out += ["Kubernetes' own kind: tabby reads the fields below.", "",
                "| Field | What tabby does with it |", "|---|---|"]
        out += [f"| `{path}` | {_cell(what)} |" for path, what in notes.reads]
        out += [f"| `{n.path}` | {_status(n)} |" for n in notes.notes]
        out += ["", f"Other fields: {notes.rest}", ""]
    return out


def _table(body: list[Row]) -> list[str]:
    out = ["| Field | Type | Description | Status |", "|---|---|---|---|"]
    out += [f"| `{p}` | {_cell(t)} | {_cell(d)} | {_cell(s)} |" for p, t, d, s in body]
    return [*out, ""]


def rows(schema: KindSchema, notes: FieldNotes, skip: tuple[str, ...] = ()) -> list[Row]:
    """One row per field path: the schema's (spec, then status), then the rejected fields
    the schema lacks. ``skip``: top-level paths left out (listed elsewhere)."""
    out: list[Row] = []
    named: set[str] = set()
    for top, sub in (("spec", schema.spec), ("status", schema.status)):
        if sub is None:
            continue
        for path, node in _walk(sub, top):
            named.add(path)
            if any(path == s or _under(path, s) for s in skip) or _listed_item(path, node):
                continue
            out.append((path, type_name(node), node.get("description", ""),
                        _path_status(path, notes)))
    out += [(n.path, "-", "Calico's; not in tabby's schema.", _status(n)) for n in notes.notes
            if n.path not in named and n.path not in skip]
    return out


def _walk(schema: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    yield path, schema
    if schema.get("type") == "array":
        yield from _walk(schema.get("items", {}), f"{path}[]")
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}.{{}}")


def _listed_item(path: str, node: Schema) -> bool:
    """An array's item or a map's value without a description of its own (or ``spec``
    itself): its row would only repeat the parent's (``spec.types[]``) or the kind's."""
    return (path.endswith(("[]", ".{}")) or path == "spec") and not node.get("description")


def _path_status(path: str, notes: FieldNotes) -> str:
    own = notes.note(path)
    if own is not None:
        text = _status(own)
    else:
        parent = next((n for n in notes.notes if _under(path, n.path)), None)
        text = f"{parent.status.value} (with `{parent.path}`)" if parent else "honoured"
    if any(path == e or _under(path, e) for e in notes.extensions):
        text += "; *tabby extension*"
    return text


def _under(path: str, parent: str) -> bool:
    return path.startswith((f"{parent}.", f"{parent}["))


def _status(note: FieldNote) -> str:
    if note.as_if is UNSET:
        return f"{note.status.value}: {note.reason}"
    value = _value(note.as_if)
    when = "quiet when" if note.status is Status.IGNORED else "accepted when"
    return f"{note.status.value} ({when} {value}): {note.reason}"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def type_name(schema: Schema) -> str:
    """``string``, ``integer``, ``[]string``, ``map of integer``, ``string (A, B)``, ..."""
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type")
    if kind == "array":
        return "[]" + type_name(schema.get("items", {}))
    if kind == "object" or kind is None:
        if "properties" in schema:
            return "object"
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return f"map of {type_name(extra)}"
        return "object (free-form)"
    enum = schema.get("enum")
    if enum and len(enum) <= 6:
        return f"{kind} ({', '.join(_plain(v) for v in enum)})"
    return str(kind)


def _plain(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# -- FelixConfiguration: Calico's settings, grouped --------------------------------------------

def _is_felix(cls: type[Resource]) -> bool:
    return cls.KIND.kind == "FelixConfiguration" and cls.KIND.group == TABBY_GROUP


def _felix_names() -> tuple[str, ...]:
    return tuple(f"spec.{f.name}" for g in FELIX_GROUPS for f in g.fields)


def _felix_groups(notes: FieldNotes) -> list[str]:
    out = ["Calico's other Felix settings, by what tabby does instead:", ""]
    for group in FELIX_GROUPS:
        out += [f"**{group.title}**: {group.status.value}: {_cell(group.reason)}.", "",
                "| Field | Type | Status |", "|---|---|---|"]
        for f in group.fields:
            note = notes.note(f"spec.{f.name}")
            status = group.status.value
            if note is not None and note.as_if is not UNSET:
                when = "quiet when" if note.status is Status.IGNORED else "accepted when"
                status += f" ({when} {_value(note.as_if)})"
            out.append(f"| `spec.{f.name}` | {_cell(type_name(f.schema))} | {status} |")
        out.append("")
    return out


if __name__ == "__main__":
    sys.stdout.write(render())
