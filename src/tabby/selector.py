"""Calico's label selector language: parse once, evaluate many times.

Grammar (as Calico documents it)::

    expr    := or
    or      := and ( "||" and )*
    and     := unary ( "&&" unary )*
    unary   := "!" unary | primary
    primary := "(" expr ")" | "all()" | "global()" | "has(" key ")"
             | key "==" str | key "!=" str | key "in" set | key "not in" set
             | key "contains" str | key "starts with" str | key "ends with" str
    set     := "{" [ str ( "," str )* ] "}"

Strings are quoted with ' or ". Parse errors name the character position.
``global()`` matches objects outside any namespace (global network sets,
host endpoints); in a label-only context it is true.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tabby.errors import SelectorError as SelectorError


@dataclass(frozen=True, slots=True)
class All:
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True, slots=True)
class Global:
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "global()"


@dataclass(frozen=True, slots=True)
class Has:
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True, slots=True)
class Compare:
    key: str
    op: str  # ==, !=, contains, starts with, ends with
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.key)
        if self.op == "!=":
            return got != self.value
        if got is None:
            return False
        if self.op == "==":
            return got == self.value
        if self.op == "contains":
            return self.value in got
        if self.op == "starts with":
            return got.startswith(self.value)
        return got.endswith(self.value)

    def __str__(self) -> str:
        return f"{self.key} {self.op} {_quote(self.value)}"


@dataclass(frozen=True, slots=True)
class In:
    key: str
    values: frozenset[str]
    negate: bool

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.key)
        inside = got is not None and got in self.values
        return not inside if self.negate else inside

    def __str__(self) -> str:
        op = "not in" if self.negate else "in"
        return f"{self.key} {op} {{{', '.join(_quote(v) for v in sorted(self.values))}}}"


@dataclass(frozen=True, slots=True)
class Not:
    inner: Selector

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.inner.matches(labels)

    def __str__(self) -> str:
        return f"!{_wrap(self.inner)}"


@dataclass(frozen=True, slots=True)
class And:
    parts: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(p.matches(labels) for p in self.parts)

    def __str__(self) -> str:
        return " && ".join(_wrap(p) for p in self.parts)


@dataclass(frozen=True, slots=True)
class Or:
    parts: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(p.matches(labels) for p in self.parts)

    def __str__(self) -> str:
        return " || ".join(_wrap(p) for p in self.parts)


Selector = All | Global | Has | Compare | In | Not | And | Or


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def _wrap(sel: Selector) -> str:
    return f"({sel})" if isinstance(sel, And | Or) else str(sel)


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<op>==|!=|&&|\|\||[!(){},])
    | (?P<str>'[^']*'|"[^"]*")
    | (?P<word>[A-Za-z0-9_./\-]+)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # op, str, word, end
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            start = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise SelectorError(text, start, f"unexpected character {text[start]!r}")
        kind = m.lastgroup or "op"
        start = m.start(kind)
        out.append(_Tok(kind, m.group(kind), start))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


MAX_DEPTH = 64  # nested '!' and '(': deeper is refused, never a RecursionError


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested more than {MAX_DEPTH} deep ('!' and parentheses)")

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def fail(self, message: str, tok: _Tok | None = None) -> SelectorError:
        tok = tok or self.peek()
        return SelectorError(self.text, tok.pos, message)

    def expect(self, kind: str, text: str | None = None) -> _Tok:
        tok = self.peek()
        if tok.kind != kind or (text is not None and tok.text != text):
            want = repr(text) if text else kind
            got = repr(tok.text) if tok.kind != "end" else "end of input"
            raise self.fail(f"expected {want}, got {got}")
        return self.take()

    def parse(self) -> Selector:
        if self.peek().kind == "end":
            return All()  # Calico: an empty selector selects everything
        sel = self.or_()
        if self.peek().kind != "end":
            raise self.fail(f"unexpected {self.peek().text!r}")
        return sel

    def or_(self) -> Selector:
        parts = [self.and_()]
        while self.peek().text == "||" and self.peek().kind == "op":
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_(self) -> Selector:
        parts = [self.unary()]
        while self.peek().text == "&&" and self.peek().kind == "op":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self) -> Selector:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "!":
            self.nest()
            self.take()
            inner = self.unary()
            self.depth -= 1
            return Not(inner)
        return self.primary()

    def primary(self) -> Selector:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "(":
            self.nest()
            self.take()
            inner = self.or_()
            self.expect("op", ")")
            self.depth -= 1
            return inner
        if tok.kind != "word":
            got = repr(tok.text) if tok.kind != "end" else "end of input"
            raise self.fail(f"expected a label key or function, got {got}")
        nxt = self.peek(1)
        if nxt.kind == "op" and nxt.text == "(" and tok.text in ("all", "global", "has"):
            return self.function()
        key = self.take().text
        return self.comparison(key)

    def function(self) -> Selector:
        name = self.take().text
        self.expect("op", "(")
        if name == "has":
            key = self.expect("word").text
            self.expect("op", ")")
            return Has(key)
        self.expect("op", ")")
        return All() if name == "all" else Global()

    def comparison(self, key: str) -> Selector:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("==", "!="):
            self.take()
            return Compare(key, tok.text, self.string())
        if tok.kind == "word":
            word = tok.text
            if word == "in":
                self.take()
                return In(key, self.set_(), negate=False)
            if word == "not" and self.peek(1).text == "in":
                self.take()
                self.take()
                return In(key, self.set_(), negate=True)
            if word == "contains":
                self.take()
                return Compare(key, "contains", self.string())
            if word in ("starts", "ends") and self.peek(1).text == "with":
                self.take()
                self.take()
                return Compare(key, f"{word} with", self.string())
        got = repr(tok.text) if tok.kind != "end" else "end of input"
        raise self.fail(f"expected an operator after {key!r}, got {got}")

    def string(self) -> str:
        return self.expect("str").text[1:-1]

    def set_(self) -> frozenset[str]:
        self.expect("op", "{")
        values: list[str] = []
        if self.peek().text != "}":
            values.append(self.string())
            while self.peek().text == ",":
                self.take()
                values.append(self.string())
        self.expect("op", "}")
        return frozenset(values)


_CACHE: dict[str, Selector] = {}


def parse(text: str) -> Selector:
    """Parse a selector (cached: selectors repeat across many objects)."""
    sel = _CACHE.get(text)
    if sel is None:
        sel = _Parser(text).parse()
        if len(_CACHE) < 4096:
            _CACHE[text] = sel
    return sel
