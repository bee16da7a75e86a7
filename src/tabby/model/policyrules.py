"""Calico v3 policy rules as typed values: ``Rule``, ``EntityRule``, ``PortSpec``.

Shared by tabby's ``NetworkPolicy`` and ``GlobalNetworkPolicy`` (and by the
Kubernetes converter in ``tabby.policy.convert``, which produces the same
values). Field names are Calico's: ``action``, ``ipVersion``, ``protocol``,
``notProtocol``, ``icmp``, ``notICMP``, ``source`` / ``destination`` with
``nets``, ``notNets``, ``selector``, ``notSelector``, ``namespaceSelector``,
``ports``, ``notPorts``, ``serviceAccounts``.

Checks follow Calico's validation: ports only with TCP, UDP, SCTP or UDPLite
(and only then); ICMP matches only with ICMP/ICMPv6; nets of the rule's
``ipVersion``; selectors parse (errors name the position).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from tabby import selector
from tabby.errors import FieldError
from tabby.model.fields import Fields, type_name
from tabby.model.schema import (
    Schema,
    array,
    int_or_string,
    integer,
    obj,
    string,
    string_map,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ACTIONS = ("Allow", "Deny", "Log", "Pass")
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOL_NUMBERS.items()}
PORT_PROTOCOLS = frozenset({6, 17, 132, 136})
ICMP_PROTOCOLS = {1: 4, 58: 6}  # protocol -> the IP version it implies
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Names case-insensitively, or a number 1..255 (as a number or as digits).
PROTOCOL_PATTERN = "^((?i:" + "|".join(PROTOCOL_NUMBERS) + ")|[0-9]+)$"


def _protocol_schema(description: str) -> Schema:
    return int_or_string(f"{description}: {', '.join(PROTOCOL_NUMBERS)} or a number 1..255.",
                         pattern=PROTOCOL_PATTERN)


def _icmp_schema(description: str) -> Schema:
    return obj({"type": integer("ICMP type.", minimum=0, maximum=254),
                "code": integer("ICMP code (needs type).", minimum=0, maximum=255)},
               description)


def _entity_schema(description: str) -> Schema:
    ports = array(int_or_string(), "Port numbers, ranges low:high or named ports.")
    return obj({
        "nets": array(string(), "CIDRs."),
        "notNets": array(string(), "CIDRs not matched."),
        "selector": string("Endpoints and network sets (a selector)."),
        "notSelector": string("Endpoints and network sets not matched (a selector)."),
        "namespaceSelector": string("Namespaces of the selected endpoints (a selector)."),
        "ports": ports,
        "notPorts": {**ports, "description": "Ports not matched."},
        "serviceAccounts": obj({
            "names": array(string(), "Service account names."),
            "selector": string("Service accounts by label (a selector)."),
        }, "Endpoints running as these service accounts."),
    }, description)


RULE_SCHEMA = obj({
    "action": string("What a matching packet gets.", enum=ACTIONS),
    "ipVersion": integer("4 or 6.", enum=(4, 6)),
    "protocol": _protocol_schema("The protocol"),
    "notProtocol": _protocol_schema("Any protocol but"),
    "icmp": _icmp_schema("ICMP match (protocol ICMP or ICMPv6)."),
    "notICMP": _icmp_schema("ICMP negative match (protocol ICMP or ICMPv6)."),
    "source": _entity_schema("Where packets come from."),
    "destination": _entity_schema("Where packets go."),
    "metadata": obj({"annotations": string_map("Free annotations.")},
                    "Accepted for Calico compatibility; not kept."),
}, "One Calico policy rule.", required=["action"])


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One ``ports`` entry: a number, a range ``low:high``, or a named port."""

    low: int = 0
    high: int = 0
    name: str = ""

    def to_data(self) -> int | str:
        if self.name:
            return self.name
        return self.low if self.low == self.high else f"{self.low}:{self.high}"


@dataclass(frozen=True, slots=True)
class ICMPMatch:
    type: int | None = None
    code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.type is not None:
            out["type"] = self.type
        if self.code is not None:
            out["code"] = self.code
        return out


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    names: tuple[str, ...] = ()
    selector: str = ""


@dataclass(frozen=True, slots=True)
class EntityRule:
    nets: tuple[IPNetwork, ...] = ()
    not_nets: tuple[IPNetwork, ...] = ()
    selector: str = ""
    not_selector: str = ""
    namespace_selector: str = ""
    ports: tuple[PortSpec, ...] = ()
    not_ports: tuple[PortSpec, ...] = ()
    service_accounts: ServiceAccountMatch | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nets:
            out["nets"] = [str(n) for n in self.nets]
        if self.not_nets:
            out["notNets"] = [str(n) for n in self.not_nets]
        for key, value in (("selector", self.selector), ("notSelector", self.not_selector),
                           ("namespaceSelector", self.namespace_selector)):
            if value:
                out[key] = value
        if self.ports:
            out["ports"] = [p.to_data() for p in self.ports]
        if self.not_ports:
            out["notPorts"] = [p.to_data() for p in self.not_ports]
        if self.service_accounts is not None:
            sa: dict[str, Any] = {}
            if self.service_accounts.names:
                sa["names"] = list(self.service_accounts.names)
            if self.service_accounts.selector:
                sa["selector"] = self.service_accounts.selector
            out["serviceAccounts"] = sa
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    action: str
    protocol: int | None = None
    not_protocol: int | None = None
    ip_version: int | None = None
    icmp: ICMPMatch | None = None
    not_icmp: ICMPMatch | None = None
    source: EntityRule = EntityRule()
    destination: EntityRule = EntityRule()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.ip_version is not None:
            out["ipVersion"] = self.ip_version
        if self.protocol is not None:
            out["protocol"] = protocol_text(self.protocol)
        if self.not_protocol is not None:
            out["notProtocol"] = protocol_text(self.not_protocol)
        if self.icmp is not None:
            out["icmp"] = self.icmp.to_dict()
        if self.not_icmp is not None:
            out["notICMP"] = self.not_icmp.to_dict()
        src, dst = self.source.to_dict(), self.destination.to_dict()
        if src:
            out["source"] = src
        if dst:
            out["destination"] = dst
        return out


def protocol_text(number: int) -> int | str:
    return PROTOCOL_NAMES.get(number, number)


# -- parsing ------------------------------------------------------------------------------

def check_selector(f: Fields, name: str, text: str) -> None:
    try:
        selector.parse(text)
    except selector.SelectorError as exc:
        f.error(name, str(exc))


def parse_rules(f: Fields, name: str) -> tuple[Rule, ...]:
    return tuple(parse_rule(Fields(item, path, f.errors)) for path, item in f.list(name))


def parse_rule(f: Fields) -> Rule:
    action = f.str("action", required=True)
    if action and action not in ACTIONS:
        f.error("action", f"{action!r} is not one of {', '.join(ACTIONS)}")
    version = f.int("ipVersion")
    if version is not None and version not in (4, 6):
        f.error("ipVersion", f"{version} must be 4 or 6")
        version = None
    protocol = _protocol(f, "protocol")
    not_protocol = _protocol(f, "notProtocol")
    icmp = _icmp(f, "icmp")
    not_icmp = _icmp(f, "notICMP")
    for key, match in (("icmp", icmp), ("notICMP", not_icmp)):
        if match is not None and protocol not in ICMP_PROTOCOLS:
            f.error(key, "needs protocol ICMP or ICMPv6")
    implied = ICMP_PROTOCOLS.get(protocol or 0)
    if implied and version is not None and implied != version:
        f.error("ipVersion", f"{version} contradicts protocol {protocol_text(protocol or 0)}")
    source = parse_entity(f.map("source"), protocol, version)
    destination = parse_entity(f.map("destination"), protocol, version)
    f.raw("metadata")
    if f.has("http"):
        f.error("http", "HTTP match rules need an application-layer proxy; tabby has none")
    f.finish()
    return Rule(action=action, protocol=protocol, not_protocol=not_protocol,
                ip_version=version or implied, icmp=icmp, not_icmp=not_icmp,
                source=source, destination=destination)


def _protocol(f: Fields, name: str) -> int | None:
    value = f.raw(name)
    if value is None:
        return None
    if isinstance(value, bool):
        f.error(name, "must be a protocol name or number")
        return None
    if isinstance(value, int):
        if not 1 <= value <= 255:
            f.error(name, f"{value} is outside 1..255")
            return None
        return value
    if isinstance(value, str):
        by_name = {k.lower(): v for k, v in PROTOCOL_NUMBERS.items()}
        if value.lower() in by_name:
            return by_name[value.lower()]
        if value.isdigit() and 1 <= int(value) <= 255:
            return int(value)
    f.error(name, f"{value!r} is not one of {', '.join(PROTOCOL_NUMBERS)} or 1..255")
    return None


def _icmp(f: Fields, name: str) -> ICMPMatch | None:
    if not f.has(name):
        f.raw(name)
        return None
    m = f.map(name)
    icmp_type = m.int("type")
    code = m.int("code")
    if icmp_type is not None and not 0 <= icmp_type <= 254:
        m.error("type", f"{icmp_type} is outside 0..254")
    if code is not None and not 0 <= code <= 255:
        m.error("code", f"{code} is outside 0..255")
    if code is not None and icmp_type is None:
        m.error("code", "needs a type")
    m.finish()
    return ICMPMatch(icmp_type, code)


def parse_entity(f: Fields, protocol: int | None, version: int | None) -> EntityRule:
    nets = parse_nets(f, "nets", version)
    not_nets = parse_nets(f, "notNets", version)
    texts = {}
    for key in ("selector", "notSelector", "namespaceSelector"):
        texts[key] = f.str(key).strip()
        if texts[key]:
            check_selector(f, key, texts[key])
    ports = parse_ports(f, "ports", protocol)
    not_ports = parse_ports(f, "notPorts", protocol)
    accounts = None
    if f.has("serviceAccounts"):
        sa = f.map("serviceAccounts")
        sel = sa.str("selector").strip()
        if sel:
            check_selector(sa, "selector", sel)
        accounts = ServiceAccountMatch(tuple(sa.str_list("names")), sel)
        sa.finish()
    else:
        f.raw("serviceAccounts")
    if f.has("services"):
        f.error("services", "service matches in rules are not supported; select the pods")
    f.finish()
    return EntityRule(nets=nets, not_nets=not_nets, selector=texts["selector"],
                      not_selector=texts["notSelector"],
                      namespace_selector=texts["namespaceSelector"], ports=ports,
                      not_ports=not_ports, service_accounts=accounts)


def parse_nets(f: Fields, name: str, version: int | None) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for path, item in f.list(name):
        try:
            net = ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            f.errors.append(FieldError(path, f"{item!r} is not a CIDR"))
            continue
        if version is not None and net.version != version:
            f.errors.append(FieldError(path, f"{net} is not IPv{version} (ipVersion)"))
            continue
        out.append(net)
    return tuple(out)


def parse_ports(f: Fields, name: str, protocol: int | None) -> tuple[PortSpec, ...]:
    items = f.list(name)
    if items and protocol not in PORT_PROTOCOLS:
        f.error(name, "ports need protocol TCP, UDP, SCTP or UDPLite")
    out = []
    for path, item in items:
        port = parse_port(item)
        if isinstance(port, str):
            f.errors.append(FieldError(path, port))
        else:
            out.append(port)
    return tuple(out)


def parse_port(item: object) -> PortSpec | str:
    """A PortSpec, or the problem as text."""
    if isinstance(item, bool) or not isinstance(item, int | str):
        return f"must be a port number, range or name, not {type_name(item)}"
    if isinstance(item, int):
        return PortSpec(item, item) if 0 <= item <= 65535 else f"{item} is outside 0..65535"
    text = item.strip()
    if text.isdigit():
        return parse_port(int(text))
    low, sep, high = text.partition(":")
    if sep:
        if not (low.isdigit() and high.isdigit()):
            return f"{text!r} is not a range low:high"
        lo, hi = int(low), int(high)
        if not 0 <= lo <= hi <= 65535:
            return f"{text!r} must satisfy 0 <= low <= high <= 65535"
        return PortSpec(lo, hi)
    if len(text) > 15 or not _PORT_NAME.match(text) or not any(c.isalpha() for c in text):
        return f"{text!r} is not a port name (at most 15 lower-case letters, digits and '-')"
    return PortSpec(name=text)
