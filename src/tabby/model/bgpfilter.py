"""BGPFilter: import and export rules that BGPPeers apply to their sessions.

Field names follow Calico's ``projectcalico.org/v3`` BGPFilter (cluster-scoped).
``spec.exportV4``, ``importV4``, ``exportV6`` and ``importV6`` are ordered
lists of rules; the first rule whose every criterion matches decides
(``action: Accept`` or ``Reject``); a route no rule matches falls through to
the next filter the peer names, and then to tabby's default (import: accept;
export: what the node originates). A rule's criteria, all optional:

- ``cidr`` with ``matchOperator`` (``Equal``, ``NotEqual``, ``In``,
  ``NotIn``; both or neither), narrowed by ``prefixLength: {min, max}``
  (default: the CIDR's own length up to /32 or /128);
- ``source: RemotePeers`` (routes learned over BGP, not our own),
  ``interface`` (the route's outgoing interface, ``*`` wildcards),
  ``peerType`` (``iBGP``: a peer of our own AS; ``eBGP``: another),
  ``communities: {values: [one value]}``, ``asPathPrefix`` (the AS path
  starts with these), ``priority`` (Calico's route priority, carried as
  ``bgp_local_pref = 2^31-1 - priority``);
- ``operations`` (Accept only, applied in order): ``addCommunity: {value}``,
  ``prependASPath: {prefix: [AS...]}``, ``setPriority: {value}``.

Filters apply only to sessions from BGPPeers (``spec.filters``, in order),
never to the node-to-node mesh, as in Calico.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby.errors import FieldError
from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.bgpfields import Community, parse_community
from tabby.model.fields import Fields
from tabby.model.schema import (
    KindSchema,
    Schema,
    array,
    int_or_string,
    integer,
    obj,
    string,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ACTIONS = ("Accept", "Reject")
OPERATORS = ("Equal", "NotEqual", "In", "NotIn")
SOURCES = ("RemotePeers",)
PEER_TYPES = ("eBGP", "iBGP")
LISTS = {"exportV4": (4, "export"), "importV4": (4, "import"),
         "exportV6": (6, "export"), "importV6": (6, "import")}
MAX_PRIORITY = 2147483646
MAX_OPERATIONS = 10
_INTERFACE = re.compile(r"^[a-zA-Z0-9_.*-]{1,15}$")
_COMMUNITY = r"^[0-9]+:[0-9]+(:[0-9]+)?$"


@dataclass(frozen=True, slots=True)
class Operation:
    """One route modification: exactly one of the three is set."""

    add_community: Community | None = None
    prepend_as_path: tuple[int, ...] = ()
    set_priority: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.add_community is not None:
            return {"addCommunity": {"value": str(self.add_community)}}
        if self.prepend_as_path:
            return {"prependASPath": {"prefix": list(self.prepend_as_path)}}
        return {"setPriority": {"value": self.set_priority}}


@dataclass(frozen=True, slots=True)
class FilterRule:
    action: str
    cidr: IPNetwork | None = None
    match_operator: str = ""
    prefix_min: int | None = None
    prefix_max: int | None = None
    source: str = ""
    interface: str = ""
    peer_type: str = ""
    community: Community | None = None
    as_path_prefix: tuple[int, ...] = ()
    priority: int | None = None
    operations: tuple[Operation, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.cidr is not None:
            out["cidr"] = str(self.cidr)
            out["matchOperator"] = self.match_operator
        if self.prefix_min is not None or self.prefix_max is not None:
            out["prefixLength"] = {k: v for k, v in (("min", self.prefix_min),
                                                     ("max", self.prefix_max)) if v is not None}
        for key, value in (("source", self.source), ("interface", self.interface),
                           ("peerType", self.peer_type)):
            if value:
                out[key] = value
        if self.community is not None:
            out["communities"] = {"values": [str(self.community)]}
        if self.as_path_prefix:
            out["asPathPrefix"] = list(self.as_path_prefix)
        if self.priority is not None:
            out["priority"] = self.priority
        if self.operations:
            out["operations"] = [o.to_dict() for o in self.operations]
        return out


@dataclass(frozen=True, slots=True)
class BGPFilterSpec:
    export_v4: tuple[FilterRule, ...] = ()
    import_v4: tuple[FilterRule, ...] = ()
    export_v6: tuple[FilterRule, ...] = ()
    import_v6: tuple[FilterRule, ...] = ()

    def rules(self, direction: str, version: int) -> tuple[FilterRule, ...]:
        """The rules of ``direction`` (import or export) for IP ``version``."""
        out: tuple[FilterRule, ...] = getattr(self, f"{direction}_v{version}")
        return out


def _rule_schema(version: int) -> Schema:
    bits = 32 if version == 4 else 128
    asn = int_or_string("An AS number.")
    community = string("aa:nn or aa:nn:mm.", pattern=_COMMUNITY)
    return obj({
        "action": string("What a matching route gets.", enum=ACTIONS),
        "cidr": string(f"An IPv{version} CIDR the route is compared with."),
        "matchOperator": string("How the route compares with cidr.", enum=OPERATORS),
        "prefixLength": obj({"min": integer("Shortest prefix length.", minimum=0, maximum=bits),
                             "max": integer("Longest prefix length.", minimum=0, maximum=bits)},
                            "Prefix lengths matched within cidr."),
        "source": string("Only routes learned from BGP peers.", enum=SOURCES),
        "interface": string("The route's outgoing interface (* wildcards).",
                            pattern=_INTERFACE.pattern),
        "peerType": string("Only sessions of this type.", enum=PEER_TYPES),
        "communities": obj({"values": array(community, "Exactly one community.")},
                           "Routes carrying this community.", required=["values"]),
        "asPathPrefix": array(asn, "Routes whose AS path starts with these."),
        "priority": integer("Routes of this priority.", minimum=1, maximum=MAX_PRIORITY),
        "operations": array(obj({
            "addCommunity": obj({"value": community}, "Add a community.", required=["value"]),
            "prependASPath": obj({"prefix": array(asn, "AS numbers, first ends first.")},
                                 "Prepend to the AS path.", required=["prefix"]),
            "setPriority": obj({"value": integer("The priority.", minimum=1,
                                                 maximum=MAX_PRIORITY)},
                               "Set the route's priority.", required=["value"]),
        }), "Changes to accepted routes, in order (Accept only)."),
    }, required=["action"])


@register
@dataclass(frozen=True, slots=True)
class BGPFilter(Resource):
    KIND = KindInfo("BGPFilter", TABBY_GROUP, "v1", "bgpfilters", namespaced=False,
                    aliases=(CALICO_API,), short_names=("bgpfilter",))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        name: array(_rule_schema(v), f"Ordered IPv{v} rules for routes {d}ed.")
        for name, (v, d) in LISTS.items()}), columns=())
    meta: ObjectMeta
    spec: BGPFilterSpec = BGPFilterSpec()

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        lists = {name: tuple(r for path, item in f.list(name)
                             if (r := _rule(Fields(item, path, f.errors), version)) is not None)
                 for name, (version, _) in LISTS.items()}
        f.finish()
        return cls(meta=meta, spec=BGPFilterSpec(
            export_v4=lists["exportV4"], import_v4=lists["importV4"],
            export_v6=lists["exportV6"], import_v6=lists["importV6"]))

    def body(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        for name, (version, direction) in LISTS.items():
            rules = self.spec.rules(direction, version)
            if rules:
                spec[name] = [r.to_dict() for r in rules]
        return {"spec": spec}


def _rule(r: Fields, version: int) -> FilterRule | None:
    action = r.choice("action", ACTIONS, "Accept") if r.has("action") else ""
    if not action:
        r.error("action", "is required (Accept or Reject)")
    cidr = _cidr(r, version)
    operator = r.str("matchOperator")
    if operator and operator not in OPERATORS:
        r.error("matchOperator", f"{operator!r} is not one of {', '.join(OPERATORS)}")
    if bool(operator) != r.has("cidr"):
        r.error("matchOperator" if r.has("cidr") else "cidr",
                "cidr and matchOperator must both be set or both be empty")
    low, high = _prefix_length(r, version, cidr)
    interface = r.str("interface")
    if interface and not _INTERFACE.match(interface):
        r.error("interface", f"{interface!r}: up to 15 of letters, digits, '_.-' and '*'")
    operations = _operations(r)
    if r.has("operations") and action == "Reject":
        r.error("operations", "may only be used with action Accept")
    rule = FilterRule(
        action=action, cidr=cidr, match_operator=operator, prefix_min=low, prefix_max=high,
        source=_choice(r, "source", SOURCES), interface=interface,
        peer_type=_choice(r, "peerType", PEER_TYPES), community=_community_match(r),
        as_path_prefix=_as_numbers(r, "asPathPrefix"), priority=_priority(r, "priority"),
        operations=operations)
    r.finish()
    return rule if action else None


def _choice(f: Fields, name: str, choices: tuple[str, ...]) -> str:
    value = f.str(name)
    if value and value not in choices:
        f.error(name, f"{value!r} is not one of {', '.join(choices)}")
        return ""
    return value


def _cidr(r: Fields, version: int) -> IPNetwork | None:
    text = r.str("cidr")
    if not text:
        return None
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        r.error("cidr", f"{text!r} is not a CIDR (without host bits)")
        return None
    if net.version != version:
        r.error("cidr", f"{text!r} is not an IPv{version} CIDR (IPv{net.version} rules go in"
                f" the V{net.version} lists)")
        return None
    return net


def _prefix_length(r: Fields, version: int, cidr: IPNetwork | None
                   ) -> tuple[int | None, int | None]:
    if not r.has("prefixLength"):
        r.raw("prefixLength")
        return None, None
    if not r.has("cidr"):
        r.error("prefixLength", "needs cidr")
    p = r.map("prefixLength")
    bits = 32 if version == 4 else 128
    low, high = p.int("min"), p.int("max")
    p.finish()
    for name, value in (("min", low), ("max", high)):
        if value is not None and not 0 <= value <= bits:
            p.error(name, f"{value} is outside 0..{bits}")
            return None, None
    if low is not None and high is not None and low > high:
        p.error("", f"min {low} is greater than max {high}")
    elif cidr is not None and high is not None and high < cidr.prefixlen:
        p.error("max", f"{high} is shorter than {cidr}'s own length: the rule matches nothing")
    return low, high


def _community_match(r: Fields) -> Community | None:
    if not r.has("communities"):
        r.raw("communities")
        return None
    c = r.map("communities")
    values = c.str_list("values")
    if not c.has("values"):
        c.error("values", "is required")
    c.finish()
    if len(values) != 1:
        c.error("values", f"holds {len(values)} values; exactly one is supported (as in Calico)")
        return None
    value = parse_community(values[0])
    if isinstance(value, str):
        c.error("values[0]", value)
        return None
    return value


def _as_numbers(f: Fields, name: str) -> tuple[int, ...]:
    out = []
    for path, item in f.list(name):
        text = str(item) if isinstance(item, int | str) and not isinstance(item, bool) else ""
        if not text.isdigit() or not 0 <= int(text) <= 4294967295:
            f.errors.append(FieldError(path, f"{item!r} is not an AS number (0..4294967295)"))
            continue
        out.append(int(text))
    return tuple(out)


def _priority(f: Fields, name: str) -> int | None:
    value = f.int(name)
    if value is not None and not 1 <= value <= MAX_PRIORITY:
        f.error(name, f"{value} is outside 1..{MAX_PRIORITY}")
        return None
    return value


def _operations(r: Fields) -> tuple[Operation, ...]:
    items = r.list("operations")
    if len(items) > MAX_OPERATIONS:
        r.error("operations", f"holds {len(items)} operations; at most {MAX_OPERATIONS}")
    out = []
    for path, item in items:
        o = Fields(item, path, r.errors)
        given = [k for k in ("addCommunity", "prependASPath", "setPriority") if o.has(k)]
        if len(given) != 1:
            o.error("", "set exactly one of addCommunity, prependASPath, setPriority")
        op = Operation(add_community=_add_community(o), prepend_as_path=_prepend(o),
                       set_priority=_set_priority(o))
        o.finish()
        if len(given) == 1 and op != Operation():
            out.append(op)
    return tuple(out)


def _set_priority(o: Fields) -> int | None:
    if not o.has("setPriority"):
        o.raw("setPriority")
        return None
    s = o.map("setPriority")
    if not s.has("value"):
        s.error("value", "is required")
    value = _priority(s, "value")
    s.finish()
    return value


def _add_community(o: Fields) -> Community | None:
    if not o.has("addCommunity"):
        o.raw("addCommunity")
        return None
    a = o.map("addCommunity")
    text = a.str("value", required=True)
    a.finish()
    value = parse_community(text) if text else None
    if isinstance(value, str):
        a.error("value", value)
        return None
    return value


def _prepend(o: Fields) -> tuple[int, ...]:
    if not o.has("prependASPath"):
        o.raw("prependASPath")
        return ()
    p = o.map("prependASPath")
    if not p.has("prefix"):
        p.error("prefix", "is required")
    prefix = _as_numbers(p, "prefix")
    if not 1 <= len(p.list("prefix")) <= MAX_OPERATIONS and p.has("prefix"):
        p.error("prefix", f"needs 1..{MAX_OPERATIONS} AS numbers")
    p.finish()
    return prefix
