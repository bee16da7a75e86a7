"""kubectl's JSONPath templates, for ``-o jsonpath=...`` and ``-o custom-columns=...``.

    template := ( TEXT | "{" expr "}" )*
    expr     := path | "range" path | "end" | '"' string '"'
    path     := [ "$" | "@" ] step*
    step     := "." NAME | ".*" | ".." NAME | "[" N "]" | "[" A ":" B "]" | "[*]"
              | "['" NAME "']" | "[?(" "@" path OP literal ")]"      OP: == != < > <= >=

As in kubectl: several results of one ``{}`` are joined by a space; strings
print as they are, maps and lists as JSON; a missing field prints nothing
(``--allow-missing-template-keys`` is kubectl's default). ``{range}`` repeats
its body for each result. Errors (``ConfigError``) name the template and the
position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tabby.errors import ConfigError


def template_error(template: str, pos: int, message: str) -> ConfigError:
    """A template that does not parse, naming the position (an -o flag: ConfigError)."""
    return ConfigError(f"jsonpath {template!r}: {message} at position {pos}")


@dataclass(frozen=True, slots=True)
class Step:
    op: str  # field | any | recurse | index | slice | filter
    name: str = ""
    start: int | None = None
    stop: int | None = None
    path: tuple[Step, ...] = ()
    compare: str = ""
    literal: Any = None


_STEP = re.compile(r"""\.\.(?P<rec>[\w-]+)|\.(?P<field>[\w-]+)|\.(?P<any>\*)
    |\[(?P<idx>-?\d+)\]|\[(?P<a>-?\d*):(?P<b>-?\d*)\]|\[(?P<all>\*)\]
    |\[(?P<q>['"])(?P<key>.*?)(?P=q)\]|\[\?\((?P<filter>[^)]*)\)\]""", re.VERBOSE)
_FILTER = re.compile(r"\s*@(?P<path>[^=!<>\s]*)\s*(?:(?P<op>==|!=|<=|>=|<|>)\s*(?P<lit>.+?))?\s*")


def parse_path(text: str, template: str = "", offset: int = 0) -> tuple[Step, ...]:
    text = text.strip()
    pos = 1 if text[:1] in ("$", "@") else 0
    if text in ("", "$", "@"):
        return ()
    steps: list[Step] = []
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None:
            raise template_error(template or text, offset + pos,
                                f"unexpected {text[pos:pos + 10]!r} in path {text!r}")
        steps.append(_step(m, template or text, offset + pos))
        pos = m.end()
    return tuple(steps)


def _step(m: re.Match[str], template: str, pos: int) -> Step:
    g = m.groupdict()
    if g["rec"]:
        return Step("recurse", g["rec"])
    if g["field"]:
        return Step("field", g["field"])
    if g["any"] or g["all"]:
        return Step("any")
    if g["idx"] is not None:
        return Step("index", start=int(g["idx"]))
    if g["key"] is not None:
        return Step("field", g["key"])
    if g["filter"] is not None:
        f = _FILTER.fullmatch(g["filter"])
        if f is None:
            raise template_error(template, pos, f"filter {g['filter']!r}: expected @.path OP value")
        literal = None
        if f["op"]:
            try:
                literal = json.loads(f["lit"].replace("'", '"'))
            except ValueError:
                literal = f["lit"]
        return Step("filter", path=parse_path(f["path"] or "@", template, pos),
                    compare=f["op"] or "", literal=literal)
    return Step("slice", start=int(g["a"]) if g["a"] else None,
                stop=int(g["b"]) if g["b"] else None)


def evaluate(steps: tuple[Step, ...], data: Any) -> list[Any]:
    """Every value ``steps`` reach from ``data`` (missing fields reach nothing)."""
    current = [data]
    for step in steps:
        current = [v for node in current for v in _apply(step, node)]
    return current


def _apply(step: Step, node: Any) -> Iterator[Any]:
    if step.op == "field":
        if isinstance(node, dict) and step.name in node:
            yield node[step.name]
    elif step.op == "any":
        if isinstance(node, dict):
            yield from node.values()
        elif isinstance(node, list):
            yield from node
    elif step.op == "recurse":
        yield from _recurse(node, step.name)
    elif isinstance(node, list) and step.op == "index":
        assert step.start is not None
        if -len(node) <= step.start < len(node):
            yield node[step.start]
    elif isinstance(node, list) and step.op == "slice":
        yield from node[step.start:step.stop]
    elif isinstance(node, list) and step.op == "filter":
        yield from (item for item in node if _keep(step, item))


def _recurse(node: Any, name: str) -> Iterator[Any]:
    if isinstance(node, dict):
        if name in node:
            yield node[name]
        for value in node.values():
            yield from _recurse(value, name)
    elif isinstance(node, list):
        for value in node:
            yield from _recurse(value, name)


def _keep(step: Step, item: Any) -> bool:
    found = evaluate(step.path, item)
    if not step.compare:
        return bool(found)
    if not found:
        return False
    left, right = found[0], step.literal
    try:
        return bool({"==": left == right, "!=": left != right}.get(step.compare)
                    if step.compare in ("==", "!=") else
                    {"<": left < right, ">": left > right, "<=": left <= right,
                     ">=": left >= right}[step.compare])
    except TypeError:
        return False


def text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# -- templates -----------------------------------------------------------------

_PART = re.compile(r"\{((?:[^{}\"]|\"(?:[^\"\\]|\\.)*\")*)\}")


@dataclass(frozen=True, slots=True)
class Node:
    kind: str  # text | path | range
    text: str = ""
    path: tuple[Step, ...] = ()
    body: tuple[Node, ...] = ()


def parse_template(template: str) -> tuple[Node, ...]:
    stack: list[tuple[list[Node], tuple[Step, ...], int]] = []
    nodes: list[Node] = []
    pos = 0
    for m in _PART.finditer(template):
        if template[pos:m.start()]:
            nodes.append(Node("text", _literal_text(template[pos:m.start()], template, pos)))
        pos = m.end()
        expr = m.group(1).strip()
        if expr.startswith('"') and expr.endswith('"') and len(expr) >= 2:
            nodes.append(Node("text", json.loads(expr)))
        elif expr.startswith("range ") or expr == "range":
            stack.append((nodes, parse_path(expr[5:], template, m.start(1) + 5), m.start()))
            nodes = []
        elif expr == "end":
            if not stack:
                raise template_error(template, m.start(), "{end} without {range}")
            outer, path, _ = stack.pop()
            outer.append(Node("range", path=path, body=tuple(nodes)))
            nodes = outer
        else:
            nodes.append(Node("path", path=parse_path(expr, template, m.start(1))))
    rest = template[pos:]
    if "{" in rest or "}" in rest:
        raise template_error(template, pos + max(rest.find("{"), rest.find("}")),
                            "unbalanced { or }")
    if rest:
        nodes.append(Node("text", rest))
    if stack:
        raise template_error(template, stack[-1][2], "{range} without {end}")
    return tuple(nodes)


def _literal_text(text: str, template: str, pos: int) -> str:
    if "{" in text or "}" in text:
        raise template_error(template, pos, "unbalanced { or }")
    return text


def render(nodes: tuple[Node, ...], data: Any) -> str:
    out: list[str] = []
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "path":
            out.append(" ".join(text_of(v) for v in evaluate(node.path, data)))
        else:
            for item in evaluate(node.path, data):
                out.append(render(node.body, item))
    return "".join(out)
