"""Reading manifests for ``-f FILE|DIR|-`` (repeatable) and ``-R``, as kubectl reads them.

A directory contributes its ``*.yaml``, ``*.yml`` and ``*.json`` files in name
order (with ``-R`` those of its subdirectories too); a file named explicitly is
read whatever its name. Every non-empty YAML document, and every item of a
``kind: List``, becomes one ``Doc``: its resource when it validates, else its
error lines, so that a caller can apply the good ones and name the rest.
Malformed YAML in a file is an error for the whole run (nothing is applied),
since the documents after the break cannot be known.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from tabby.cli.usage import UsageError
from tabby.errors import FieldError, TabbyError, ValidationError
from tabby.model import Resource, kind_for_manifest, parse_manifest
from tabby.model.base import field_warnings

EXTENSIONS = (".yaml", ".yml", ".json")
MAX_DEPTH = 100  # nesting levels a document may have (no tabby resource needs 20)


@dataclass(frozen=True, slots=True)
class Doc:
    """One document: where it came from, its ``kind/name`` and the parsed resource or errors."""

    where: str
    label: str
    obj: Resource | None
    errors: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())  # fields tabby accepts and ignores


def files_of(paths: list[str], recursive: bool) -> list[str]:
    """The files ``-f`` names: directories expanded; TabbyError for a missing path."""
    out: list[str] = []
    for path in paths:
        if path == "-":
            out.append(path)
            continue
        p = Path(path)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(str(f) for f in p.glob(pattern)
                           if f.is_file() and f.suffix in EXTENSIONS)
            if not found:
                raise TabbyError(f"{path}: no *.yaml, *.yml or *.json files in this directory"
                                 + ("" if recursive else " (-R reads its subdirectories too)"))
            out.extend(found)
        elif p.exists():
            out.append(path)
        else:
            raise TabbyError(f"{path}: no such file or directory")
    if out.count("-") > 1:
        raise UsageError("-f - (standard input) can be given only once")
    return out


def raw_documents(paths: list[str], stdin: TextIO | None = None) -> Iterator[tuple[str, Any]]:
    """(where, document) for every non-empty YAML document; ValidationError on bad YAML."""
    for path in paths:
        try:
            if path == "-":
                text = (stdin or sys.stdin).read()
            else:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
        except OSError as exc:
            raise TabbyError(f"{path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise TabbyError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        try:
            docs = list(yaml.load_all(text, Loader=StrictLoader))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            problem = getattr(exc, "problem", None) or str(exc)
            raise ValidationError(where, [FieldError("", f"malformed YAML: {problem}")]) from exc
        for index, doc in enumerate(docs):
            if doc is not None:
                yield f"{path}[{index}]", doc


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps
    the last silently; kubectl refuses it too) and a document nested more than
    ``MAX_DEPTH`` levels deep (PyYAML builds nodes recursively: thousands of ``[``
    would end in a RecursionError)."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expand_lists(doc: Any) -> list[Any]:
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        return list(doc["items"])
    return [doc]


def raw_label(doc: Any) -> str:
    """``kind/name`` of a document that may not validate (kubectl's lower-case kind)."""
    if not isinstance(doc, dict):
        return f"<{type(doc).__name__}>"
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) and doc.get("kind") else "<no kind>"
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    name = name if isinstance(name, str) and name else "<unnamed>"
    try:
        from tabby.cli.kinds import display
        return display(kind_for_manifest(doc), name)
    except ValidationError:  # unknown kind or apiVersion: as it was written
        return f"{str(kind).lower()}/{name}"


def read(paths: list[str], recursive: bool = False, stdin: TextIO | None = None) -> list[Doc]:
    """Every document of ``-f`` PATHS, parsed and validated one by one."""
    from tabby.cli.kinds import display
    docs: list[Doc] = []
    for where, raw in raw_documents(files_of(paths, recursive), stdin):
        for item in _expand_lists(raw):
            label = raw_label(item)
            if not isinstance(item, dict):
                docs.append(Doc(where, label, None, (
                    f"{where}: a document must be a mapping, not {type(item).__name__}",)))
                continue
            try:
                obj = parse_manifest(item)
            except ValidationError as exc:
                docs.append(Doc(where, label, None, tuple(exc.lines())))
                continue
            docs.append(Doc(where, display(type(obj), obj.meta.name), obj,
                            warnings=tuple(str(w) for w in field_warnings(item))))
    return docs
