"""BGPPeer: who peers with whom, beyond (or instead of) the node-to-node mesh.

Field names follow Calico's ``projectcalico.org/v3`` BGPPeer:

- which nodes peer: ``node`` (one node, by name) or ``nodeSelector``; neither
  means every node (a *global* peer);
- with whom: ``peerIP`` (an outside router: ``198.18.0.1``, ``198.18.0.1:1790``,
  ``fd7a:bb1e::1`` or ``[fd7a:bb1e::1]:1790``) with its ``asNumber``, or
  ``peerSelector`` (other tabby nodes, at their ``spec.bgp`` addresses and AS
  numbers; this is how route reflectors are wired);
- ``password`` (TCP-MD5; see ``tabby.model.bgpfields`` for the two forms),
  ``keepOriginalNextHop``, ``sourceAddress`` (``UseNodeIP`` or ``None``),
  ``maxRestartTime`` (graceful restart, a duration) and
  ``numAllowedLocalASNumbers`` (accept routes whose AS path holds our own AS
  that many times: a ToR that sends every node's routes to nodes of one AS);
- ``filters``: BGPFilter names, applied in order to this peer's sessions
  (``tabby.model.bgpfilter``); a name with no BGPFilter is skipped with a note;
- ``bfd`` (a tabby extension, Calico has none): ``{enabled, minRxInterval,
  minTxInterval, multiplier}``, BFD on the sessions so a dead link takes them
  down in well under a second (``tabby.model.bgpfields.BFD``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby import selector
from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.bgpfields import (
    BFD,
    Password,
    as_number_schema,
    bfd_schema,
    duration_schema,
    format_duration,
    parse_as_number,
    parse_bfd,
    parse_duration,
    parse_password,
    password_schema,
)
from tabby.model.fields import Fields
from tabby.model.names import DNS_SUBDOMAIN, MAX_NAME
from tabby.model.schema import Column, KindSchema, array, boolean, integer, obj, string

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SOURCE_ADDRESSES = ("UseNodeIP", "None")
MAX_LOCAL_AS = 10


@dataclass(frozen=True, slots=True)
class BGPPeerSpec:
    node: str = ""
    node_selector: str = ""
    peer_ip: IPAddress | None = None
    peer_port: int | None = None
    peer_selector: str = ""
    as_number: int | None = None
    password: Password | None = None
    keep_original_next_hop: bool = False
    source_address: str = "UseNodeIP"
    max_restart_time: int | None = None  # seconds
    num_allowed_local_as: int = 0
    filters: tuple[str, ...] = ()  # BGPFilter names, in order
    bfd: BFD | None = None


@register
@dataclass(frozen=True, slots=True)
class BGPPeer(Resource):
    KIND = KindInfo("BGPPeer", TABBY_GROUP, "v1", "bgppeers", namespaced=False,
                    aliases=(CALICO_API,), short_names=("bgppeer",))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        "node": string("The one node that peers (by name)."),
        "nodeSelector": string("The nodes that peer (a selector)."),
        "peerIP": string("An outside router: ip, v4:port or [v6]:port."),
        "peerSelector": string("Other tabby nodes to peer with (a selector)."),
        "asNumber": as_number_schema("The peer's AS number (with peerIP)."),
        "password": password_schema("TCP-MD5 password."),
        "keepOriginalNextHop": boolean("Do not rewrite the next hop."),
        "sourceAddress": string("The session's source address.", enum=SOURCE_ADDRESSES),
        "maxRestartTime": duration_schema("Graceful-restart time."),
        "numAllowedLocalASNumbers": integer("Accept routes holding our AS this many times.",
                                            minimum=0, maximum=MAX_LOCAL_AS),
        "filters": array(string("A BGPFilter's name."), "BGPFilters applied in order."),
        "bfd": bfd_schema("BFD on this peer's sessions."),
    }), columns=(Column("Peer IP", ".spec.peerIP"), Column("ASN", ".spec.asNumber", "integer"),
                 Column("Peer selector", ".spec.peerSelector"), Column("Node", ".spec.node"),
                 Column("Node selector", ".spec.nodeSelector", priority=1)))
    meta: ObjectMeta
    spec: BGPPeerSpec

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        node = f.str("node")
        node_selector = _selector(f, "nodeSelector")
        if node and node_selector:
            f.error("nodeSelector", "set either node or nodeSelector, not both")
        peer_ip, port = _peer_ip(f)
        peer_selector = _selector(f, "peerSelector")
        asn = parse_as_number(f, "asNumber")
        # An empty peerIP or peerSelector names nothing and is not written back: unset.
        has_ip, has_selector = _given(f.raw("peerIP")), _given(f.raw("peerSelector"))
        if has_ip and has_selector:
            f.error("peerSelector", "set either peerIP or peerSelector, not both")
        elif not has_ip and not has_selector:
            f.error("", "needs peerIP (an outside router) or peerSelector (other nodes)")
        elif has_selector and f.has("asNumber"):
            f.error("asNumber", "is taken from the selected nodes with peerSelector;"
                    " leave it out")
        elif has_ip and not f.has("asNumber"):
            f.error("asNumber", "is required with peerIP")
        local_as = f.int("numAllowedLocalASNumbers", 0) or 0
        if not 0 <= local_as <= MAX_LOCAL_AS:
            f.error("numAllowedLocalASNumbers", f"{local_as} is outside 0..{MAX_LOCAL_AS}")
        spec = BGPPeerSpec(
            node=node, node_selector=node_selector, peer_ip=peer_ip, peer_port=port,
            peer_selector=peer_selector, as_number=asn,
            password=parse_password(f, "password"),
            keep_original_next_hop=f.bool("keepOriginalNextHop"),
            source_address=f.choice("sourceAddress", SOURCE_ADDRESSES, "UseNodeIP"),
            max_restart_time=parse_duration(f, "maxRestartTime"),
            num_allowed_local_as=local_as, filters=_filters(f),
            bfd=parse_bfd(f, "bfd"))
        f.finish()
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        s = self.spec
        spec: dict[str, Any] = {}
        if s.node:
            spec["node"] = s.node
        if s.node_selector:
            spec["nodeSelector"] = s.node_selector
        if s.peer_ip is not None:
            spec["peerIP"] = format_peer_ip(s.peer_ip, s.peer_port)
        if s.peer_selector:
            spec["peerSelector"] = s.peer_selector
        if s.as_number is not None:
            spec["asNumber"] = s.as_number
        if s.password is not None:
            spec["password"] = s.password.to_dict()
        if s.keep_original_next_hop:
            spec["keepOriginalNextHop"] = True
        spec["sourceAddress"] = s.source_address
        if s.max_restart_time is not None:
            spec["maxRestartTime"] = format_duration(s.max_restart_time)
        if s.num_allowed_local_as:
            spec["numAllowedLocalASNumbers"] = s.num_allowed_local_as
        if s.filters:
            spec["filters"] = list(s.filters)
        if s.bfd is not None:
            spec["bfd"] = s.bfd.to_dict()
        return {"spec": spec}

    @property
    def is_global(self) -> bool:
        """Applies to every node (neither ``node`` nor ``nodeSelector``)."""
        return not self.spec.node and not self.spec.node_selector

    def applies_to(self, node: str, labels: dict[str, str]) -> bool:
        s = self.spec
        if s.node:
            return s.node == node
        if s.node_selector:
            return selector.parse(s.node_selector).matches(labels)
        return True


def format_peer_ip(ip: IPAddress, port: int | None) -> str:
    if port is None:
        return str(ip)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_peer_ip(text: str) -> tuple[IPAddress, int | None] | str:
    """``ip``, ``v4:port`` or ``[v6]:port``; the problem as text if it is none of those."""
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return f"{text!r} is not an address ([v6]:port needs the closing bracket)"
        port_text = rest[1:]
        if rest and not port_text:
            return f"{text!r}: the port after ':' is missing"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text:
            return f"{text!r}: the port after ':' is missing"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{text!r} is not an IP address (optionally with :port, [v6]:port)"
    if text.startswith("[") and ip.version != 6:
        return f"{text!r}: brackets are for IPv6 addresses"
    if not port_text:
        return ip, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return f"{text!r}: port {port_text!r} is outside 1..65535"
    return ip, int(port_text)


def _peer_ip(f: Fields) -> tuple[IPAddress | None, int | None]:
    text = f.str("peerIP")
    if not text:
        return None, None
    parsed = parse_peer_ip(text)
    if isinstance(parsed, str):
        f.error("peerIP", parsed)
        return None, None
    return parsed


def _filters(f: Fields) -> tuple[str, ...]:
    names = f.str_list("filters")
    for i, name in enumerate(names):
        if len(name) > MAX_NAME or not DNS_SUBDOMAIN.fullmatch(name):
            f.error(f"filters[{i}]", f"{name!r} is not a BGPFilter name"
                    " (lower-case letters, digits, '-', '.')")
    return tuple(names)


def _given(raw: object) -> bool:
    return raw is not None and not (isinstance(raw, str) and not raw.strip())


def _selector(f: Fields, name: str) -> str:
    text = f.str(name).strip()
    if not text:
        return ""
    try:
        selector.parse(text)
    except selector.SelectorError as exc:
        f.error(name, str(exc))
        return ""
    return text
