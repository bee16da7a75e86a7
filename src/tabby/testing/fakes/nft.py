"""FakeNft, an in-memory ``NftRunner``, and FakeClock, a clock that moves when told.

FakeNft keeps the tables its scripts built and applies each script as nft
does: as one transaction, whole or not at all, refusing what nft refuses
(checked against nft 1.0.6 on Linux 6.x):

- deleting a table, chain, set, map or element that is not there, flushing a
  missing chain, adding to a missing table, chain, set or map: ENOENT;
- a rule jumping to a missing chain or naming a missing ``@set``: ENOENT;
- declaring a set or map again with another declaration: EEXIST;
- deleting a chain that still has rules or is jumped to, or a set a rule
  names: EBUSY;
- a rule naming a missing counter (``counter name "X"``): ENOENT; deleting a
  counter a rule names: EBUSY; ``count`` adds packets as the packet path would;
- adding an element that is there is fine; elements added with a ``timeout``
  expire on the clock (``expires`` says how long they have left).

It understands the lines ``tabby.nft.render`` writes (one command a line) and
refuses any other as a syntax error. ``read`` answers ``list table`` with the
JSON nft prints for the table, its sets (elements with ``timeout`` and
``expires``; nft 1.0.6 leaves the ``dynamic`` flag out) and maps and the names
of its chains; rules are not listed (the fake does not compile them).

``scripts`` records every script run, refused ones included; ``refuse_next``
makes the next one fail; ``add_dynamic`` adds an element as the packet path
would (``update @set { ... timeout 1h }``); ``elements`` reads a set back.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tabby.errors import DataplaneError

if TYPE_CHECKING:
    from tabby.dataplane.nft import NftRunner

__all__ = ["FakeClock", "FakeNft"]

_LINE = re.compile(r"(add|delete|flush) (table|chain|set|map|rule|element|counter) (\w+)"
                   r" ([\w.-]+)"
                   r"(?: ([\w.-]+))?(?: (.*))?$")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_ENOENT, _EEXIST, _EBUSY = ("No such file or directory", "File exists",
                            "Device or resource busy")


class FakeClock:
    """A monotonic clock: ``now`` moves by ``advance`` and by ``step`` after each reading."""

    def __init__(self, start: float = 1000.0, step: float = 0.0) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds


@dataclass
class _Set:
    kind: str  # set or map
    decl: str  # what is between the braces
    handle: int
    elements: dict[str, tuple[str | None, int | None, float | None]] = field(
        default_factory=dict)  # key -> (map value, timeout, deadline)


@dataclass
class _Table:
    handle: int
    sets: dict[str, _Set] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)  # name -> rule texts
    handles: int = 0
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # (packets, bytes)


class FakeNft:
    """An ``NftRunner`` over tables kept in memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.scripts: list[str] = []
        self.reads: list[str] = []
        self.tables: dict[tuple[str, str], _Table] = {}
        self._refusals: list[str] = []

    def refuse_next(self, message: str = "Operation not permitted") -> None:
        self._refusals.append(message)

    def run(self, script: str) -> None:
        self.scripts.append(script)
        if self._refusals:
            raise DataplaneError(f"nft refused the transaction: {self._refusals.pop(0)}")
        tables = copy.deepcopy(self.tables)
        for number, line in enumerate(script.splitlines(), 1):
            problem = self._apply(tables, line.strip()) if line.strip() else None
            if problem is not None:
                raise DataplaneError(f"nft refused the transaction: /dev/stdin:{number}:"
                                     f" Error: {problem} | {line.strip()}")
        self.tables = tables

    def read(self, what: str) -> str:
        self.reads.append(what)
        words = what.split()
        if words[:1] == ["counters"] and len(words) == 4:  # counters table FAMILY NAME
            got = self.tables.get((words[2], words[3]))
            if got is None:
                raise DataplaneError(f"nft list {what}: Error: {_ENOENT}")
            return json.dumps({"nftables": [
                {"counter": {"family": words[2], "name": c, "table": words[3],
                             "packets": p, "bytes": b}}
                for c, (p, b) in sorted(got.counters.items())]})
        table = self.tables.get((words[1], words[2])) if len(words) == 3 else None
        if words[:1] != ["table"] or table is None:
            raise DataplaneError(f"nft list {what}: Error: {_ENOENT}")
        return json.dumps({"nftables": self._listing(words[1], words[2], table)})

    def add_dynamic(self, name: str, value: str, timeout: int,
                    table: tuple[str, str] = ("inet", "tabby")) -> None:
        self.tables[table].sets[name].elements[value] = (None, timeout, self.clock() + timeout)

    def count(self, name: str, packets: int, bytes_: int,
              table: tuple[str, str] = ("inet", "tabby")) -> None:
        """Packets meeting a named counter, as the packet path would count them."""
        p, b = self.tables[table].counters[name]
        self.tables[table].counters[name] = (p + packets, b + bytes_)

    def elements(self, name: str, table: tuple[str, str] = ("inet", "tabby")) -> set[str]:
        """The live elements of a set (a map's as ``key : value``)."""
        now = self.clock()
        return {key if value is None else f"{key} : {value}"
                for key, (value, _, deadline) in self.tables[table].sets[name].elements.items()
                if deadline is None or deadline > now}

    # -- one line of a transaction -------------------------------------------------------
    def _apply(self, tables: dict[tuple[str, str], _Table], line: str) -> str | None:
        m = _LINE.match(line)
        if m is None:
            return "syntax error"
        verb, obj, family, name, sub, rest = m.groups()
        key = (family, name)
        if obj == "table":
            if verb == "add":
                tables.setdefault(key, _Table(handle=len(tables) + 1))
                return None
            if key not in tables:
                return _ENOENT
            if verb == "delete":
                del tables[key]
                return None
            return "syntax error"
        table = tables.get(key)
        if table is None or sub is None:
            return _ENOENT
        if obj == "chain":
            return self._chain(table, verb, sub)
        if obj in ("set", "map"):
            return self._set(table, verb, obj, sub, rest or "")
        if obj == "counter":
            return _counter(table, verb, sub, rest or "")
        if obj == "rule" and verb == "add":
            return self._rule(table, sub, rest or "")
        if obj == "element" and verb in ("add", "delete"):
            return self._element(table, verb, sub, _inside(rest or ""))
        return "syntax error"

    @staticmethod
    def _chain(table: _Table, verb: str, name: str) -> str | None:
        if verb == "add":
            table.chains.setdefault(name, [])
            return None
        if name not in table.chains:
            return _ENOENT
        if verb == "flush":
            table.chains[name] = []
            return None
        jumped = any(name in _jumps(text) for rules in table.chains.values() for text in rules)
        jumped |= any(name in _jumps(value or "") for s in table.sets.values()
                      for value, _, _ in s.elements.values())
        if table.chains[name] or jumped:
            return _EBUSY
        del table.chains[name]
        return None

    @staticmethod
    def _set(table: _Table, verb: str, kind: str, name: str, rest: str) -> str | None:
        have = table.sets.get(name)
        if verb == "add":
            decl = _inside(rest)
            if have is not None:
                return None if (have.kind, have.decl) == (kind, decl) else _EEXIST
            table.handles += 1
            table.sets[name] = _Set(kind, decl, table.handles)
            return None
        if verb != "delete" or have is None or have.kind != kind:
            return _ENOENT
        if any(f"@{name}" in _refs(text) for rules in table.chains.values() for text in rules):
            return _EBUSY
        del table.sets[name]
        return None

    @staticmethod
    def _rule(table: _Table, chain: str, text: str) -> str | None:
        if chain not in table.chains:
            return _ENOENT
        if any(target not in table.chains for target in _jumps(text)):
            return _ENOENT
        if any(ref[1:] not in table.sets for ref in _refs(text)):
            return _ENOENT
        if any(c not in table.counters for c in _counters(text)):
            return _ENOENT
        table.chains[chain].append(text)
        return None

    def _element(self, table: _Table, verb: str, name: str, body: str) -> str | None:
        target = table.sets.get(name)
        if target is None:
            return _ENOENT
        now = self.clock()
        for item in (x.strip() for x in body.split(",") if x.strip()):
            key, value, timeout, expires = _element(item, target.kind == "map")
            if verb == "delete":
                if target.elements.pop(key, None) is None:
                    return _ENOENT
                continue
            if value is not None and any(t not in table.chains for t in _jumps(value)):
                return _ENOENT
            old = target.elements.get(key)
            if old is not None and old[0] != value:
                return _EEXIST
            left = expires if expires is not None else timeout
            target.elements[key] = (value, timeout, None if left is None else now + left)
        return None

    # -- listing ---------------------------------------------------------------------------
    def _listing(self, family: str, name: str, table: _Table) -> list[object]:
        out: list[object] = [
            {"metainfo": {"version": "1.0.6", "release_name": "FakeNft",
                          "json_schema_version": 1}},
            {"table": {"family": family, "name": name, "handle": table.handle}}]
        now = self.clock()
        for set_name, s in table.sets.items():
            entry: dict[str, object] = {"family": family, "name": set_name, "table": name}
            key_type, value_type, flags = _declaration(s.decl)
            entry.update(type=_json_type(key_type), handle=s.handle)
            if value_type is not None:
                entry["map"] = value_type
            if flags:
                entry["flags"] = flags
            elements = [_json_element(k, v, t, d, now) for k, (v, t, d) in s.elements.items()
                        if d is None or d > now]
            if elements:
                entry["elem"] = elements
            out.append({s.kind: entry})
        out += [{"chain": {"family": family, "table": name, "name": chain}}
                for chain in table.chains]
        return out


def _counter(table: _Table, verb: str, name: str, rest: str) -> str | None:
    if verb == "add":
        given = re.search(r"packets (\d+) bytes (\d+)", rest)
        if name not in table.counters or given:
            table.counters[name] = (int(given[1]), int(given[2])) if given else (0, 0)
        return None
    if verb != "delete" or name not in table.counters:
        return _ENOENT
    if any(name in _counters(text) for rules in table.chains.values() for text in rules):
        return _EBUSY
    del table.counters[name]
    return None


def _counters(text: str) -> list[str]:
    return re.findall(r'\bcounter name "([\w.-]+)"', text)


def _inside(text: str) -> str:
    """What is between the outer braces of ``{ ... }``."""
    text = text.strip()
    return text[1:-1].strip() if text.startswith("{") and text.endswith("}") else text


def _unquoted(text: str) -> str:
    return re.sub(r'"[^"]*"', '""', text)


def _jumps(text: str) -> list[str]:
    return re.findall(r"\b(?:jump|goto) ([\w.-]+)", _unquoted(text))


def _refs(text: str) -> list[str]:
    return re.findall(r"@[\w.-]+", _unquoted(text))


def _seconds(text: str) -> int:
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([dhms])", text))


def _element(item: str, is_map: bool
             ) -> tuple[str, str | None, int | None, int | None]:
    """(key, map value, timeout, expires) of one element as a script writes it."""
    timeout = re.search(r" timeout (\w+)", item)
    expires = re.search(r" expires (\w+)", item)
    body = re.sub(r" (timeout|expires) \w+", "", item).strip()
    key, _, value = body.partition(" : ") if is_map else (body, "", "")
    return (key.strip(), value.strip() if is_map else None,
            _seconds(timeout.group(1)) if timeout else None,
            _seconds(expires.group(1)) if expires else None)


def _declaration(decl: str) -> tuple[str, str | None, list[str]]:
    """(key type, map value type, flags but ``dynamic``) of a set or map declaration."""
    parts = {p.strip().partition(" ")[0]: p.strip().partition(" ")[2]
             for p in decl.split(";") if p.strip()}
    key = parts.get("type", parts.get("typeof", ""))
    key_type, _, value_type = key.partition(" : ")
    flags = [f.strip() for f in parts.get("flags", "").split(",") if f.strip()]
    return key_type.strip(), value_type.strip() or None, [f for f in flags if f != "dynamic"]


def _json_type(text: str) -> object:
    parts = [p.strip() for p in text.split(" . ")]
    return parts if len(parts) > 1 else parts[0]


def _json_value(text: str) -> object:
    parts: list[object] = [int(p) if p.isdigit() else p for p in text.split(" . ")]
    return {"concat": parts} if len(parts) > 1 else parts[0]


def _json_element(key: str, value: str | None, timeout: int | None, deadline: float | None,
                  now: float) -> object:
    shown = _json_value(key)
    if timeout is not None and deadline is not None:
        shown = {"elem": {"val": shown, "timeout": timeout,
                          "expires": max(0, math.floor(deadline - now))}}
    if value is None:
        return shown
    verdict = value.split()
    target: object = ({verdict[0]: {"target": verdict[1]}} if len(verdict) == 2
                      and verdict[0] in ("jump", "goto") else _json_value(value))
    return [shown, target]


if TYPE_CHECKING:  # FakeNft must keep answering NftReconciler's Protocol
    def _conforms(f: FakeNft) -> NftRunner:
        return f
