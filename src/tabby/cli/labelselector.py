"""Kubernetes label selectors, as ``kubectl get -l`` takes them, and the filter of ``-l``.

    requirements := requirement ( "," requirement )*
    requirement  := KEY | "!" KEY
                  | KEY ( "=" | "==" | "!=" ) VALUE
                  | KEY ( "in" | "notin" ) "(" [ VALUE ( "," VALUE )* ] ")"
                  | KEY ( ">" | "<" ) INTEGER

All requirements must hold. As in Kubernetes, ``!=`` and ``notin`` also match
objects without the key. Errors (``SelectorError``) name the position.
``matcher(label_selector, calico_selector)`` combines ``-l`` with
``--calico-selector`` (Calico's language, ``tabby.selector``) into one test on
an object's ``metadata.labels``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tabby.errors import SelectorError

_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_TOKEN = re.compile(r"\s*(!=|==|=|!|,|\(|\)|<|>|[^\s!=,()<>]+)")
Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # exists | !exists | = | != | in | notin | > | <
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        if self.op in ("!=", "notin"):
            return value is None or value not in self.values
        try:
            number = int(value) if value is not None else None
        except ValueError:
            return False
        bound = int(self.values[0])
        return number is not None and (number > bound if self.op == ">" else number < bound)


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _tokens(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:  # pragma: no cover - the pattern matches any non-space character
            raise SelectorError(text, pos, "unexpected character")
        out.append((m.start(1), m.group(1)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i][1] if self.i < len(self.toks) else ""

    def pos(self) -> int:
        return self.toks[self.i][0] if self.i < len(self.toks) else len(self.text)

    def take(self) -> str:
        tok = self.peek()
        if not tok:
            raise SelectorError(self.text, self.pos(), "unexpected end")
        self.i += 1
        return tok

    def fail(self, message: str) -> SelectorError:
        return SelectorError(self.text, self.pos(), message)

    def key(self) -> str:
        pos, key = self.pos(), self.take()
        if len(key) > 317 or not _KEY.fullmatch(key) or len(key.rpartition("/")[2]) > 63:
            raise SelectorError(self.text, pos, f"{key!r} is not a valid label key")
        return key

    def value(self) -> str:
        pos, value = self.pos(), self.peek()
        if value in (",", ")", ""):
            return ""  # an empty value is a valid one: "a=" selects a=""
        self.take()
        if len(value) > 63 or not _VALUE.fullmatch(value):
            raise SelectorError(self.text, pos, f"{value!r} is not a valid label value")
        return value

    def requirement(self) -> Requirement:
        if self.peek() == "!":
            self.take()
            return Requirement(self.key(), "!exists")
        key = self.key()
        op = self.peek()
        if op in ("", ","):
            return Requirement(key, "exists")
        self.take()
        if op in ("=", "==", "!="):
            return Requirement(key, "!=" if op == "!=" else "=", (self.value(),))
        if op in ("in", "notin"):
            return Requirement(key, op, self.set())
        if op in (">", "<"):
            pos, number = self.pos(), self.take()
            if not re.fullmatch(r"-?\d+", number):
                raise SelectorError(self.text, pos, f"{number!r} is not an integer")
            return Requirement(key, op, (number,))
        self.i -= 1
        raise self.fail(f"expected =, ==, !=, in, notin, > or < after {key!r}, got {op!r}")

    def set(self) -> tuple[str, ...]:
        if self.peek() != "(":
            raise self.fail("expected ( to open the set of values")
        self.take()
        values: list[str] = []
        while True:
            values.append(self.value())
            tok = self.take()
            if tok == ")":
                return tuple(values)
            if tok != ",":
                self.i -= 1
                raise self.fail(f"expected , or ) in the set of values, got {tok!r}")

    def parse(self) -> LabelSelector:
        reqs = []
        if not self.toks:
            return LabelSelector(())
        while True:
            reqs.append(self.requirement())
            if not self.peek():
                return LabelSelector(tuple(reqs))
            if self.take() != ",":
                self.i -= 1
                raise self.fail("expected , between requirements")


def parse(text: str) -> LabelSelector:
    """A Kubernetes label selector; SelectorError with the position if it does not parse."""
    return _Parser(text).parse()


def matcher(label_selector: str | None, calico_selector: str | None
            ) -> Callable[[Labels], bool] | None:
    """One test for ``-l`` and ``--calico-selector`` together; None when neither is given."""
    tests: list[Callable[[Labels], bool]] = []
    if label_selector is not None:
        tests.append(parse(label_selector).matches)
    if calico_selector is not None:
        from tabby import selector
        tests.append(selector.parse(calico_selector).matches)
    if not tests:
        return None
    return lambda labels: all(t(labels) for t in tests)
