"""``FelixConfiguration``: node settings, as far as tabby reads them (failsafe ports).

Calico v3 shape. ``default`` holds the cluster's settings; ``node.<name>``
overrides them for one node, field by field. tabby reads
``failsafeInboundHostPorts`` and ``failsafeOutboundHostPorts`` (lists of
``{protocol, port, net}``; an empty list turns failsafe off) and
``natOutgoingExclusions``. Every other field of Calico's FelixConfiguration is
listed in ``tabby.model.felixfields`` with the reason tabby does not act on it:
its type is checked and it is kept as written (so Calico manifests apply
unchanged and round-trip), and ``tabby apply`` warns about it
(``tabby.model.fieldnotes``). A field Calico does not have is an unknown field.

Failsafe ports stay open on host endpoints whatever the policies say:
inbound TCP 22, 179, 2379, 2380, 5473, 6443, 6666, 6667 and UDP 68;
outbound TCP 179, 2379, 2380, 5473, 6443, 6666, 6667 and UDP 53, 67.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from tabby.model import felixfields
from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.schema import KindSchema, Schema, array, free_form, integer, obj, string, validate

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FAILSAFE_FIELDS = ("failsafeInboundHostPorts", "failsafeOutboundHostPorts")
NAT_EXCLUSIONS = ("IPPoolsOnly", "IPPoolsAndHostIPs")
_CALICO = felixfields.accepted_schemas()  # Calico's other fields: type-checked, kept, ignored


def _failsafe_schema(direction: str) -> Schema:
    return array(obj({
        "protocol": string("TCP, UDP or SCTP (default TCP).", pattern="^(?i:tcp|udp|sctp)$"),
        "port": integer("The port.", minimum=1, maximum=65535),
        "net": string("Only to or from this CIDR."),
    }, required=["port"]), f"{direction} ports open on host endpoints whatever the policies;"
       " an empty list turns failsafe off.")


@dataclass(frozen=True, slots=True)
class ProtoPort:
    protocol: str  # "TCP" | "UDP" | "SCTP"
    port: int
    net: IPNetwork | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol, "port": self.port}
        if self.net is not None:
            out["net"] = str(self.net)
        return out


def _pp(text: str) -> tuple[ProtoPort, ...]:
    out = []
    for item in text.split():
        proto, _, port = item.partition(":")
        out.append(ProtoPort(proto, int(port)))
    return tuple(out)


DEFAULT_FAILSAFE_IN = _pp("TCP:22 UDP:68 TCP:179 TCP:2379 TCP:2380 TCP:5473 TCP:6443 "
                          "TCP:6666 TCP:6667")
DEFAULT_FAILSAFE_OUT = _pp("UDP:53 UDP:67 TCP:179 TCP:2379 TCP:2380 TCP:5473 TCP:6443 "
                           "TCP:6666 TCP:6667")


@register
@dataclass(frozen=True, slots=True)
class FelixConfiguration(Resource):
    KIND = KindInfo("FelixConfiguration", TABBY_GROUP, "v1", "felixconfigurations",
                    namespaced=False, aliases=(CALICO_API,), short_names=("felixconfig",))
    # The spec keeps Calico's other Felix settings as written (raw_spec), so Calico
    # manifests round-trip whole; the schema names each (felixfields), so the API server
    # refuses a typo as the model does. Calico writes a status, which the model accepts
    # and drops: a status subresource keeps it out of the object.
    SCHEMA: ClassVar[KindSchema] = KindSchema(
        spec=obj({
            "failsafeInboundHostPorts": _failsafe_schema("Inbound"),
            "failsafeOutboundHostPorts": _failsafe_schema("Outbound"),
            "natOutgoingExclusions": string(
                "What natOutgoing leaves unmasqueraded: IPPoolsOnly (the default: traffic to"
                " pods), or IPPoolsAndHostIPs (traffic to the nodes' addresses too).",
                enum=NAT_EXCLUSIONS),
            **_CALICO,
        }, "Felix settings: the failsafe ports and natOutgoingExclusions are read; Calico's"
           " other settings are kept as written and ignored (docs/fields.md says why)."),
        status=free_form("Written by Calico; tabby neither writes nor reads it."))
    meta: ObjectMeta
    failsafe_inbound: tuple[ProtoPort, ...] | None = None  # None: not set here
    failsafe_outbound: tuple[ProtoPort, ...] | None = None
    nat_outgoing_exclusions: str | None = None  # None: not set here
    raw_spec: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        inbound = _ports(f, FAILSAFE_FIELDS[0])
        outbound = _ports(f, FAILSAFE_FIELDS[1])
        exclusions = f.str("natOutgoingExclusions") or None
        if exclusions is not None and exclusions not in NAT_EXCLUSIONS:
            f.error("natOutgoingExclusions", f"{exclusions!r} is not one of"
                    f" {', '.join(NAT_EXCLUSIONS)}")
        kept = _calico_fields(f)
        f.finish()
        top.raw("status")
        return cls(meta=meta, failsafe_inbound=inbound, failsafe_outbound=outbound,
                   nat_outgoing_exclusions=exclusions, raw_spec=kept)

    def body(self) -> dict[str, Any]:
        spec = dict(self.raw_spec)
        for key, value in zip(FAILSAFE_FIELDS, (self.failsafe_inbound, self.failsafe_outbound),
                              strict=True):
            if value is not None:
                spec[key] = [p.to_dict() for p in value]
        if self.nat_outgoing_exclusions is not None:
            spec["natOutgoingExclusions"] = self.nat_outgoing_exclusions
        return {"spec": spec}


def _calico_fields(f: Fields) -> dict[str, Any]:
    """Calico's other settings, type-checked against their schema and kept as written."""
    kept: dict[str, Any] = {}
    for name, schema in _CALICO.items():
        value = f.raw(name)  # every name read: "did you mean" draws on all of them
        if value is None:
            continue
        problems = validate(schema, value, f.at(name))
        f.errors.extend(problems)
        if not problems:
            kept[name] = value
    return kept


def _ports(f: Fields, name: str) -> tuple[ProtoPort, ...] | None:
    if not f.has(name):
        f.raw(name)
        return None
    out = []
    for path, item in f.list(name):
        p = Fields(item, path, f.errors)
        proto = p.str("protocol", "TCP").upper()
        if proto not in ("TCP", "UDP", "SCTP"):
            p.error("protocol", f"{proto!r} is not one of TCP, UDP, SCTP")
        port = p.int("port", required=True) or 0
        if not 0 < port < 65536:
            p.error("port", f"{port} is outside 1..65535")
        net_text = p.str("net")
        net = None
        if net_text:
            try:
                net = ipaddress.ip_network(net_text, strict=False)
            except ValueError:
                p.error("net", f"{net_text!r} is not a CIDR")
        p.finish()
        out.append(ProtoPort(proto, port, net))
    return tuple(out)


def failsafe_ports(configs: tuple[FelixConfiguration, ...], node: str
                   ) -> tuple[tuple[ProtoPort, ...], tuple[ProtoPort, ...]]:
    """(inbound, outbound) for ``node``: ``node.<node>`` over ``default`` over built-ins."""
    by_name = {c.meta.name: c for c in configs}
    inbound, outbound = DEFAULT_FAILSAFE_IN, DEFAULT_FAILSAFE_OUT
    for name in ("default", f"node.{node}"):
        cfg = by_name.get(name)
        if cfg is None:
            continue
        if cfg.failsafe_inbound is not None:
            inbound = cfg.failsafe_inbound
        if cfg.failsafe_outbound is not None:
            outbound = cfg.failsafe_outbound
    return inbound, outbound


def nat_outgoing_exclusions(configs: tuple[FelixConfiguration, ...], node: str) -> str:
    """``natOutgoingExclusions`` for ``node``: ``node.<node>`` over ``default`` over
    Calico's default, IPPoolsOnly."""
    by_name = {c.meta.name: c for c in configs}
    value = NAT_EXCLUSIONS[0]
    for name in ("default", f"node.{node}"):
        cfg = by_name.get(name)
        if cfg is not None and cfg.nat_outgoing_exclusions is not None:
            value = cfg.nat_outgoing_exclusions
    return value
