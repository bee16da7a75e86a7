"""What tabby does with each field of a kind: honoured, accepted and ignored, or rejected.

Every field a kind's ``SCHEMA`` names is honoured unless a ``FieldNote`` says
otherwise. A note covers one field path (``schema_paths``' notation:
``spec.bpfEnabled``, ``spec.ingress[].metadata``, ``{}`` for any map key):

- ``IGNORED``: accepted (the kind's parser takes it, its schema keeps it, so
  ``kubectl apply`` works) but without effect; ``tabby apply`` prints a warning
  and the agent logs one per object version. ``as_if`` is the value tabby
  behaves as: writing exactly that value is no warning (``bpfEnabled: false``).
- ``REJECTED``: an error at apply time naming the field and why. With
  ``as_if``, that one value is accepted (and is what tabby does anyway):
  ``wireguardEnabled: false``.

``FieldNotes`` is one kind's declaration (``tabby.model.kindnotes`` lists every
kind's). ``screen`` runs inside ``Resource.from_manifest`` before the kind's
own parser: it reports rejected fields with their reasons and hands the parser
a copy without them (so no second "unknown field" error). ``warnings`` is what
``apply`` prints and the agent logs. Both are pure.

A field counts as written when its value is not null and not an empty mapping or
list: ``status: {}`` says nothing, so nothing is ignored.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tabby.errors import FieldError

__all__ = ["UNSET", "FieldNote", "FieldNotes", "FieldWarning", "Status", "ignored", "rejected"]


class Status(enum.Enum):
    HONOURED = "honoured"
    IGNORED = "ignored"
    REJECTED = "rejected"


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True)
class FieldNote:
    path: str
    status: Status
    reason: str
    as_if: Any = UNSET  # the value tabby behaves as (see the module docstring)
    segments: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", _segments(self.path))

    def applies_to(self, value: Any) -> bool:
        """Whether ``value``, written at ``path``, gets this note (a warning or an error)."""
        if value is None or (isinstance(value, Mapping | list) and not value):
            return False
        return self.as_if is UNSET or not _same(value, self.as_if)


def ignored(path: str, reason: str, as_if: Any = UNSET) -> FieldNote:
    return FieldNote(path, Status.IGNORED, reason, as_if)


def rejected(path: str, reason: str, as_if: Any = UNSET) -> FieldNote:
    return FieldNote(path, Status.REJECTED, reason, as_if)


# A trie of notes by path segment, walked once per document: the notes sharing a prefix
# (spec, spec.ports[]) share its lookups. Key None holds the notes ending at that node.
_Trie = dict[str | None, Any]


@dataclass(frozen=True, slots=True)
class FieldWarning:
    """One ignored field of one object: ``FelixConfiguration/default``, ``spec.bpfEnabled``."""

    ref: str
    path: str  # concrete: spec.ingress[0].metadata
    reason: str

    def __str__(self) -> str:
        return f"{self.ref}: {self.path} is accepted and ignored by tabby: {self.reason}"


@dataclass(frozen=True, slots=True)
class FieldNotes:
    """One kind's declaration.

    ``notes``: the fields not simply honoured. ``extensions``: paths that are
    tabby's own, not in the upstream API the kind follows. ``reads`` and
    ``rest``: for kinds tabby does not own (Kubernetes' Pod, Service, ...), the
    fields it reads, with what they mean to it, and what happens to the others.
    """

    notes: tuple[FieldNote, ...] = ()
    extensions: tuple[str, ...] = ()
    reads: tuple[tuple[str, str], ...] = ()
    rest: str = ""
    # every parse screens: the notes by status, as tries (below), built once
    _rejected: _Trie = field(init=False, repr=False, compare=False)
    _ignored: _Trie = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, status in (("_rejected", Status.REJECTED), ("_ignored", Status.IGNORED)):
            object.__setattr__(self, name, _trie(tuple(n for n in self.notes
                                                       if n.status is status)))

    def note(self, path: str) -> FieldNote | None:
        return next((n for n in self.notes if n.path == path), None)

    def screen(self, doc: Mapping[str, Any], errors: list[FieldError]) -> Mapping[str, Any]:
        """``doc`` without its rejected fields, each reported in ``errors`` with its reason."""
        found: list[tuple[tuple[str | int, ...], FieldNote]] = []
        _matches(self._rejected, doc, (), found)
        if not found:
            return doc
        out = copy.deepcopy(dict(doc))
        for parts, note in found:
            errors.append(FieldError(_format(parts), note.reason))
        for note in {n.path: n for _, n in found}.values():
            _drop(out, note.segments)
        return out

    def warnings(self, ref: str, doc: Mapping[str, Any]) -> tuple[FieldWarning, ...]:
        """One warning per ignored field ``doc`` writes."""
        found: list[tuple[tuple[str | int, ...], FieldNote]] = []
        _matches(self._ignored, doc, (), found)
        return tuple(FieldWarning(ref, _format(parts), note.reason) for parts, note in found)


# -- paths ----------------------------------------------------------------------------------

def _segments(path: str) -> tuple[str, ...]:
    """``spec.ingress[].metadata`` -> (spec, ingress, [], metadata)."""
    out: list[str] = []
    for part in path.split("."):
        name = part.removesuffix("[]")
        out.append(name)
        out.extend("[]" for _ in range((len(part) - len(name)) // 2))
    return tuple(out)


def _trie(notes: tuple[FieldNote, ...]) -> _Trie:
    root: _Trie = {}
    for note in notes:
        node = root
        for seg in note.segments:
            node = node.setdefault(seg, {})
        node.setdefault(None, []).append(note)
    return root


def _matches(trie: _Trie, value: Any, parts: tuple[str | int, ...],
             out: list[tuple[tuple[str | int, ...], FieldNote]]) -> None:
    """Every (path parts, note) whose field ``value`` writes, for the notes under ``trie``."""
    for seg, sub in trie.items():
        if seg is None:
            out += [(parts, note) for note in sub if note.applies_to(value)]
        elif seg == "[]":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    _matches(sub, item, (*parts, i), out)
        elif isinstance(value, Mapping):
            if seg == "{}":
                for key, item in value.items():
                    _matches(sub, item, (*parts, str(key)), out)
            elif (item := value.get(seg)) is not None:
                _matches(sub, item, (*parts, seg), out)


def _format(parts: tuple[str | int, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


def _drop(value: Any, segments: tuple[str, ...]) -> None:
    head, rest = segments[0], segments[1:]
    if head == "[]":
        children = value if isinstance(value, list) else []
    elif isinstance(value, dict):
        if not rest:
            if head == "{}":
                value.clear()
            else:
                value.pop(head, None)
            return
        children = list(value.values()) if head == "{}" else [value.get(head)]
    else:
        return
    if rest:
        for child in children:
            _drop(child, rest)


def _same(value: Any, expected: Any) -> bool:
    # True == 1 in Python; a boolean field written as 1 is a type error elsewhere, not as_if.
    return type(value) is type(expected) and bool(value == expected)
