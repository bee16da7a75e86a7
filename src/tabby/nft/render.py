"""Rendering a Ruleset as nft script text: whole, or as the change from another.

``render_full(new)`` replaces tabby's table in one transaction (create it
empty if absent, delete it, declare it afresh): the first sync of an agent
and every resync after an error, so leftovers vanish. ``render_delta(old,
new)`` touches only what differs: set and map elements added or removed,
chains whose rules changed flushed and refilled, new objects declared,
removed ones deleted last. Both outputs are meant for ``nft -f -``, which
applies a file as one atomic transaction.

Ordering inside a delta keeps every reference valid at every step: declare
new counters, sets, maps and chains; refill changed chains; add elements; delete
elements; flush and delete removed chains; delete removed sets, maps and counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tabby.nft.model import BASE_CHAINS, FAMILY, TABLE, Chain, NftMap, NftSet, Rule, Ruleset

T = f"{FAMILY} {TABLE}"


def quote(text: str) -> str:
    return '"' + text.replace("\\", "").replace('"', "'") + '"'


def rule_text(rule: Rule) -> str:
    return f"{rule.body} comment {quote(rule.comment)}" if rule.comment else rule.body


def _set_decl(s: NftSet) -> str:
    parts = [f"type {s.type};"]
    if s.flags:
        parts.append(f"flags {', '.join(s.flags)};")
    if s.comment:
        parts.append(f"comment {quote(s.comment)};")
    return " ".join(parts)


def _map_decl(m: NftMap) -> str:
    # A key given as "typeof EXPR" (e.g. one holding a numgen value) is declared as such.
    key = m.type if m.type.startswith("typeof ") else f"type {m.type}"
    parts = [f"{key} : {m.value};"]
    if m.flags:
        parts.append(f"flags {', '.join(m.flags)};")
    if m.comment:
        parts.append(f"comment {quote(m.comment)};")
    return " ".join(parts)


def _chain_decl(name: str) -> str:
    hook = BASE_CHAINS.get(name)
    if hook is None:
        return ""
    return (f"type {hook.type} hook {hook.hook} priority {hook.priority};"
            f" policy {hook.policy};")


def _elements(items: Iterable[str], chunk: int = 2000) -> list[str]:
    ordered = sorted(items)
    return [", ".join(ordered[i:i + chunk]) for i in range(0, len(ordered), chunk)]


def render_full(new: Ruleset, counts: Mapping[str, tuple[int, int]] | None = None) -> str:
    """The whole table; ``counts`` gives named counters their values back (packets,
    bytes), so that replacing the table does not reset what they counted."""
    lines = [f"add table {T}", f"delete table {T}", f"add table {T}"]
    have = counts or {}
    lines += [f"add counter {T} {n}" + (f" {{ packets {have[n][0]} bytes {have[n][1]} }}"
                                        if n in have else "") for n in sorted(new.counters)]
    lines += _declare(new.sets.values(), new.maps.values(), new.all_chains().keys())
    for chain in new.all_chains().values():
        lines += _fill(chain)
    lines += _add_elements(new.sets.values(), new.maps.values())
    return "\n".join(lines) + "\n"


def render_delta(old: Ruleset, new: Ruleset) -> str:
    """The script turning ``old`` into ``new``; empty when they are equal."""
    lines: list[str] = []
    old_chains, new_chains = old.all_chains(), new.all_chains()
    # A set or map whose declaration changed is replaced (a full render is simpler
    # for the caller to reason about, so say so by raising).
    for name, s in new.sets.items():
        if name in old.sets and _set_decl(old.sets[name]) != _set_decl(s):
            raise TypeChanged(f"set {name}")
    for name, m in new.maps.items():
        if name in old.maps and _map_decl(old.maps[name]) != _map_decl(m):
            raise TypeChanged(f"map {name}")
    lines += [f"add counter {T} {n}" for n in sorted(new.counters - old.counters)]
    lines += _declare([s for n, s in new.sets.items() if n not in old.sets],
                      [m for n, m in new.maps.items() if n not in old.maps],
                      [n for n in new_chains if n not in old_chains])
    for name, chain in new_chains.items():
        before = old_chains.get(name)
        if before is None:
            lines += _fill(chain)
        elif before.rules != chain.rules:
            lines.append(f"flush chain {T} {name}")
            lines += _fill(chain)
    for name, s in new.sets.items():
        have = old.sets[name].elements if name in old.sets else frozenset()
        if s.elements is not have:  # the same object: nothing to compare (a big set)
            lines += [f"add element {T} {name} {{ {e} }}" for e in _elements(s.elements - have)]
    for name, m in new.maps.items():
        have_m = old.maps[name].elements if name in old.maps else frozenset()
        if m.elements is have_m:
            continue
        changed = m.elements - have_m
        # Keys are unique in a map, so only the pairs that differ need looking at
        # (big maps of which one element changed stay cheap).
        new_keys = {k for k, _ in changed}
        removed_keys = {k for k, _ in have_m - m.elements}
        gone = removed_keys - new_keys
        # A key whose value changed is deleted and re-added in the same transaction.
        rekeyed = removed_keys & new_keys
        lines += [f"delete element {T} {name} {{ {e} }}" for e in _elements(rekeyed)]
        lines += [f"add element {T} {name} {{ {e} }}"
                  for e in _elements(f"{k} : {v}" for k, v in changed)]
        lines += [f"delete element {T} {name} {{ {e} }}" for e in _elements(gone)]
    for name, s in new.sets.items():
        if name in old.sets and old.sets[name].elements is not s.elements:
            lines += [f"delete element {T} {name} {{ {e} }}"
                      for e in _elements(old.sets[name].elements - s.elements)]
    removed = [n for n in old_chains if n not in new_chains]
    lines += [f"flush chain {T} {n}" for n in removed]
    lines += [f"delete chain {T} {n}" for n in removed]
    lines += [f"delete set {T} {n}" for n in old.sets if n not in new.sets]
    lines += [f"delete map {T} {n}" for n in old.maps if n not in new.maps]
    lines += [f"delete counter {T} {n}" for n in sorted(old.counters - new.counters)]
    return "\n".join(lines) + ("\n" if lines else "")


class TypeChanged(Exception):
    """A set or map changed its declaration: render the whole table instead."""


def _declare(sets: Iterable[NftSet], maps: Iterable[NftMap], chains: Iterable[str]
             ) -> list[str]:
    lines = [f"add set {T} {s.name} {{ {_set_decl(s)} }}" for s in sets]
    lines += [f"add map {T} {m.name} {{ {_map_decl(m)} }}" for m in maps]
    # Regular chains first, so base chains' jumps find their targets declared.
    for name in sorted(chains, key=lambda n: n in BASE_CHAINS):
        decl = _chain_decl(name)
        lines.append(f"add chain {T} {name} {{ {decl} }}" if decl else f"add chain {T} {name}")
    return lines


def _fill(chain: Chain) -> list[str]:
    return [f"add rule {T} {chain.name} {rule_text(r)}" for r in chain.rules]


def _add_elements(sets: Iterable[NftSet], maps: Iterable[NftMap]) -> list[str]:
    lines = []
    for s in sets:
        lines += [f"add element {T} {s.name} {{ {e} }}" for e in _elements(s.elements)]
    for m in maps:
        lines += [f"add element {T} {m.name} {{ {e} }}"
                  for e in _elements(f"{k} : {v}" for k, v in m.elements)]
    return lines
