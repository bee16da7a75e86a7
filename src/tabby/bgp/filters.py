"""BGPFilters in BIRD's language: one function per filter, direction and family.

    functions(c, v)            the definitions, for the filters c's peers name
    import_lines(c, peer)      the body of the peer's ``import filter { ... }``
    export_lines(c, peer, ...) the body of its ``export filter { ... }``

The shapes follow Calico's confd, so a BGPFilter behaves here as it does there::

    function 'bgp_<name>_importFilterV4'() {            (bool is_same_as) when a
      if ((net ~ 198.19.0.0/16)) then { accept; }        rule has a peerType
      if (is_same_as) then { if (...) then { reject; } }
    }

Each rule is ``if (<criteria, and-ed>) then { <operations> accept|reject; }``
(a bare action when it has no criteria); ``accept`` and ``reject`` end the
whole filter, so the first matching rule of the first filter that has one
decides. A peer's import filter calls its filters in order and then accepts
(Calico's default); its export filter tags our origins with their
communities, calls its filters, then exports what tabby exports without
filters (our origins; on a route reflector also pool routes) and rejects the
rest. Priorities are Calico's: ``bgp_local_pref = 2^31-1 - priority``; a peer
whose export filters match on priority gets our origins at the normal
priority (1024) first, as Calico gives every local route.
"""

from __future__ import annotations

import hashlib

from tabby.calc.bird import BirdConfig, Peer
from tabby.model.bgpfields import Community
from tabby.model.bgpfilter import BGPFilter, FilterRule, Operation

BIRD_INT_MAX = 2147483647  # priority <-> bgp_local_pref, as Calico converts them
NORMAL_PRIORITY = 1024
MAX_SYMBOL = 64  # BIRD's longest symbol
_OPERATORS = {"Equal": "=", "NotEqual": "!=", "In": "~", "NotIn": "!~"}
DIRECTIONS = ("import", "export")

__all__ = ["export_lines", "function_name", "functions", "import_lines"]


def function_name(name: str, direction: str, version: int) -> str:
    """``'bgp_<name>_<direction>FilterV<v>'``, the name cut and hashed to fit 64 characters."""
    fixed = f"bgp__{direction}FilterV{version}"
    room = MAX_SYMBOL - len(fixed)
    if len(name) > room:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:room - 9]}-{digest}"
    return f"'bgp_{name}_{direction}FilterV{version}'"


def functions(c: BirdConfig, v: int) -> list[str]:
    lines: list[str] = []
    for f in c.filters:
        for direction in DIRECTIONS:
            rules = f.spec.rules(direction, v)
            if not rules:
                continue
            param = "bool is_same_as" if _has_peer_type(rules) else ""
            lines += [f"# BGPFilter {f.meta.name}: IPv{v} {direction}",
                      f"function {function_name(f.meta.name, direction, v)}({param}) {{",
                      *(f"  {_rule(r)}" for r in rules), "}"]
    return [*lines, ""] if lines else []


def import_lines(c: BirdConfig, p: Peer) -> list[str]:
    return [*_calls(c, p, "import"), "accept;"]


def export_lines(c: BirdConfig, p: Peer, tag: str, defaults: list[str]) -> list[str]:
    """Tag our origins, call the filters, then the default export (``defaults``) and reject."""
    origin = f'proto = "tabby_origin{p.version}"'
    lines = [f"if {origin} then {tag}();"]
    if any(r.priority is not None for f in _named(c, p) for r in f.spec.rules("export", p.version)):
        lines.append(f"if {origin} then bgp_local_pref = {BIRD_INT_MAX - NORMAL_PRIORITY};")
    return [*lines, *_calls(c, p, "export"), *defaults, "reject;"]


def _calls(c: BirdConfig, p: Peer, direction: str) -> list[str]:
    same_as = "true" if p.as_number == c.as_number else "false"
    out = []
    for f in _named(c, p):
        rules = f.spec.rules(direction, p.version)
        if rules:
            arg = same_as if _has_peer_type(rules) else ""
            out.append(f"{function_name(f.meta.name, direction, p.version)}({arg});")
    return out


def _named(c: BirdConfig, p: Peer) -> list[BGPFilter]:
    by_name = {f.meta.name: f for f in c.filters}
    return [by_name[n] for n in p.filters if n in by_name]


def _has_peer_type(rules: tuple[FilterRule, ...]) -> bool:
    return any(r.peer_type for r in rules)


def _rule(r: FilterRule) -> str:
    body = " ".join([*(_operation(o) for o in r.operations), f"{r.action.lower()};"])
    conditions = _conditions(r)
    text = f"if ({'&&'.join(conditions)}) then {{ {body} }}" if conditions else body
    if r.peer_type:
        guard = "is_same_as" if r.peer_type == "iBGP" else "!is_same_as"
        text = f"if ({guard}) then {{ {text} }}"
    return text


def _conditions(r: FilterRule) -> list[str]:
    out = []
    if r.cidr is not None:
        target = str(r.cidr)
        if r.prefix_min is not None or r.prefix_max is not None:
            low = max(r.cidr.prefixlen, r.prefix_min or 0)
            high = min(r.cidr.max_prefixlen, r.cidr.max_prefixlen
                       if r.prefix_max is None else r.prefix_max)
            target = f"[ {r.cidr}{{{low},{high}}} ]"
        out.append(f"(net {_OPERATORS[r.match_operator]} {target})")
    if r.source:
        out.append("((defined(source))&&(source ~ [ RTS_BGP ]))")
    if r.interface:
        out.append(f'((defined(ifname))&&(ifname ~ "{r.interface}"))')
    if r.community is not None:
        out.append(f"({_pair(r.community)} ~ {_attribute(r.community)})")
    if r.as_path_prefix:
        out.append(f"(bgp_path ~ [= {' '.join(str(a) for a in r.as_path_prefix)} * =])")
    if r.priority is not None:
        out.append(f"(defined(bgp_local_pref)&&(bgp_local_pref = {BIRD_INT_MAX - r.priority}))")
    return out


def _operation(o: Operation) -> str:
    if o.add_community is not None:
        return f"{_attribute(o.add_community)}.add({_pair(o.add_community)});"
    if o.prepend_as_path:  # each prepend goes first: the last one written ends first
        return " ".join(f"bgp_path.prepend({a});" for a in reversed(o.prepend_as_path))
    assert o.set_priority is not None
    return f"bgp_local_pref = {BIRD_INT_MAX - o.set_priority};"


def _attribute(x: Community) -> str:
    return "bgp_large_community" if x.large else "bgp_community"


def _pair(x: Community) -> str:
    return f"({', '.join(str(p) for p in x.parts)})"
