"""BGPConfiguration: cluster-wide (``default``) and per-node (``node.<name>``) BGP settings.

Field names and defaults follow Calico's ``projectcalico.org/v3``
BGPConfiguration. Fields left out are ``None`` here, so that a per-node
configuration overrides only what it sets; ``tabby.calc.bird`` merges node
over default over built-in defaults (AS 64512, mesh on, port 179, Info).

Cluster-wide only (refused on ``node.<name>``, as Calico does):
``asNumber``, ``nodeToNodeMeshEnabled``, ``nodeMeshPassword``,
``nodeMeshMaxRestartTime`` and the three service ranges
(``serviceClusterIPs``, ``serviceExternalIPs``, ``serviceLoadBalancerIPs``:
lists of ``{cidr}``, advertised from every node).
``nodeToNodeMeshBFD`` (a tabby extension: ``{enabled, minRxInterval,
minTxInterval, multiplier}``, BFD on every mesh session) is cluster-wide too:
BFD needs both ends of a session.
Per node too: ``listenPort``, ``logSeverityScreen``, ``communities`` (named
values) and ``prefixAdvertisements`` (``{cidr, communities: [name or value]}``:
routes this node exports within ``cidr`` carry those communities).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.bgpfields import (
    BFD,
    Community,
    Password,
    as_number_schema,
    bfd_schema,
    duration_schema,
    format_duration,
    parse_as_number,
    parse_bfd,
    parse_community,
    parse_duration,
    parse_password,
    parse_port,
    password_schema,
    port_schema,
)
from tabby.model.fields import Fields
from tabby.model.schema import Column, KindSchema, Schema, array, boolean, obj, string

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_NAME = "default"
NODE_PREFIX = "node."
DEFAULT_AS = 64512
DEFAULT_PORT = 179
SEVERITIES = ("Debug", "Info", "Warning", "Error", "Fatal")
SERVICE_FIELDS = ("serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs")
GLOBAL_ONLY = ("asNumber", "nodeToNodeMeshEnabled", "nodeMeshPassword",
               "nodeMeshMaxRestartTime", "nodeToNodeMeshBFD", *SERVICE_FIELDS)
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_NAME = re.compile(rf"^(default|node\.{_SUBDOMAIN})$")


def _cidr_list(description: str) -> Schema:
    return array(obj({"cidr": string("A CIDR without host bits.")}, required=["cidr"]),
                 f"{description} (cluster-wide only).")


_SPEC_SCHEMA = obj({
    "asNumber": as_number_schema("The cluster's AS number (default 64512; cluster-wide only)."),
    "nodeToNodeMeshEnabled": boolean("Full mesh between nodes (default true)."),
    "listenPort": port_schema("BIRD's BGP port (default 179)."),
    "logSeverityScreen": string("BIRD's log level.", enum=SEVERITIES),
    "serviceClusterIPs": _cidr_list("Service cluster IP ranges to advertise"),
    "serviceExternalIPs": _cidr_list("Service external IP ranges to advertise"),
    "serviceLoadBalancerIPs": _cidr_list("Service load-balancer IP ranges to advertise"),
    "communities": array(obj({
        "name": string("The name prefixAdvertisements use."),
        "value": string("aa:nn or aa:nn:mm.", pattern=r"^[0-9]+:[0-9]+(:[0-9]+)?$"),
    }, required=["name", "value"]), "Named BGP community values."),
    "prefixAdvertisements": array(obj({
        "cidr": string("Routes within this CIDR carry the communities."),
        "communities": array(string(), "Community names or values."),
    }, required=["cidr"]), "Communities attached to exported routes."),
    "nodeMeshPassword": password_schema("TCP-MD5 password of the mesh (cluster-wide only)."),
    "nodeMeshMaxRestartTime": duration_schema("Graceful-restart time of the mesh."),
    "nodeToNodeMeshBFD": bfd_schema("BFD on every mesh session (cluster-wide only)."),
})


@dataclass(frozen=True, slots=True)
class PrefixAdvertisement:
    cidr: IPNetwork
    communities: tuple[Community, ...]  # names resolved to values
    written: tuple[str, ...]  # as written (names or values), for to_manifest


@dataclass(frozen=True, slots=True)
class BGPConfigurationSpec:
    as_number: int | None = None
    node_to_node_mesh: bool | None = None
    listen_port: int | None = None
    log_severity: str | None = None
    service_cluster_ips: tuple[IPNetwork, ...] = ()
    service_external_ips: tuple[IPNetwork, ...] = ()
    service_load_balancer_ips: tuple[IPNetwork, ...] = ()
    communities: tuple[tuple[str, Community], ...] = ()  # (name, value)
    prefix_advertisements: tuple[PrefixAdvertisement, ...] = ()
    node_mesh_password: Password | None = None
    node_mesh_max_restart_time: int | None = None  # seconds
    node_mesh_bfd: BFD | None = None


@register
@dataclass(frozen=True, slots=True)
class BGPConfiguration(Resource):
    KIND = KindInfo("BGPConfiguration", TABBY_GROUP, "v1", "bgpconfigurations",
                    namespaced=False, aliases=(CALICO_API,), short_names=("bgpconfig",))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=_SPEC_SCHEMA, columns=(
        Column("ASN", ".spec.asNumber", "integer"),
        Column("Mesh", ".spec.nodeToNodeMeshEnabled", "boolean")))
    meta: ObjectMeta
    spec: BGPConfigurationSpec = BGPConfigurationSpec()

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        if meta.name and not _NAME.match(meta.name):
            top.error("metadata.name", f"{meta.name!r}: a BGPConfiguration is named"
                      f" {DEFAULT_NAME!r} (cluster-wide) or '{NODE_PREFIX}<node name>'")
        f = top.map("spec")
        per_node = meta.name.startswith(NODE_PREFIX)
        if per_node:
            for name in GLOBAL_ONLY:
                if f.has(name):
                    f.error(name, f"is cluster-wide: set it on BGPConfiguration/{DEFAULT_NAME}")
        severity = f.str("logSeverityScreen") or None
        if severity is not None and severity not in SEVERITIES:
            f.error("logSeverityScreen", f"{severity!r} is not one of {', '.join(SEVERITIES)}")
            severity = None
        mesh = f.bool("nodeToNodeMeshEnabled") if f.has("nodeToNodeMeshEnabled") else None
        f.raw("nodeToNodeMeshEnabled")
        communities = _communities(f)
        spec = BGPConfigurationSpec(
            as_number=parse_as_number(f, "asNumber"),
            node_to_node_mesh=mesh,
            listen_port=parse_port(f, "listenPort"),
            log_severity=severity,
            service_cluster_ips=_cidrs(f, "serviceClusterIPs"),
            service_external_ips=_cidrs(f, "serviceExternalIPs"),
            service_load_balancer_ips=_cidrs(f, "serviceLoadBalancerIPs"),
            communities=communities,
            prefix_advertisements=_advertisements(f, dict(communities)),
            node_mesh_password=parse_password(f, "nodeMeshPassword"),
            node_mesh_max_restart_time=parse_duration(f, "nodeMeshMaxRestartTime"),
            node_mesh_bfd=parse_bfd(f, "nodeToNodeMeshBFD"),
        )
        f.finish()
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        s = self.spec
        spec: dict[str, Any] = {}
        for key, value in (("asNumber", s.as_number), ("nodeToNodeMeshEnabled",
                           s.node_to_node_mesh), ("listenPort", s.listen_port),
                           ("logSeverityScreen", s.log_severity)):
            if value is not None:
                spec[key] = value
        for key, nets in zip(SERVICE_FIELDS, (s.service_cluster_ips, s.service_external_ips,
                                               s.service_load_balancer_ips), strict=True):
            if nets:
                spec[key] = [{"cidr": str(n)} for n in nets]
        if s.communities:
            spec["communities"] = [{"name": n, "value": str(v)} for n, v in s.communities]
        if s.prefix_advertisements:
            spec["prefixAdvertisements"] = [{"cidr": str(a.cidr), "communities": list(a.written)}
                                            for a in s.prefix_advertisements]
        if s.node_mesh_password is not None:
            spec["nodeMeshPassword"] = s.node_mesh_password.to_dict()
        if s.node_mesh_max_restart_time is not None:
            spec["nodeMeshMaxRestartTime"] = format_duration(s.node_mesh_max_restart_time)
        if s.node_mesh_bfd is not None:
            spec["nodeToNodeMeshBFD"] = s.node_mesh_bfd.to_dict()
        return {"spec": spec}

    @property
    def node(self) -> str | None:
        """The node a ``node.<name>`` configuration is for (None for ``default``)."""
        name = self.meta.name
        return name[len(NODE_PREFIX):] if name.startswith(NODE_PREFIX) else None


def _cidrs(f: Fields, name: str) -> tuple[IPNetwork, ...]:
    out = []
    for path, item in f.list(name):
        c = Fields(item, path, f.errors)
        text = c.str("cidr", required=True)
        c.finish()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text))
        except ValueError:
            c.error("cidr", f"{text!r} is not a CIDR (without host bits)")
    return tuple(out)


def _communities(f: Fields) -> tuple[tuple[str, Community], ...]:
    out: list[tuple[str, Community]] = []
    for path, item in f.list("communities"):
        c = Fields(item, path, f.errors)
        name, text = c.str("name", required=True), c.str("value", required=True)
        c.finish()
        if not name or not text:
            continue
        if any(n == name for n, _ in out):
            c.error("name", f"{name!r} is defined twice")
            continue
        value = parse_community(text)
        if isinstance(value, str):
            c.error("value", value)
            continue
        out.append((name, value))
    return tuple(out)


def _advertisements(f: Fields, named: dict[str, Community]) -> tuple[PrefixAdvertisement, ...]:
    out = []
    for path, item in f.list("prefixAdvertisements"):
        a = Fields(item, path, f.errors)
        text = a.str("cidr", required=True)
        written = a.str_list("communities")
        a.finish()
        try:
            cidr = ipaddress.ip_network(text) if text else None
        except ValueError:
            a.error("cidr", f"{text!r} is not a CIDR (without host bits)")
            cidr = None
        values = []
        for i, word in enumerate(written):
            value = named.get(word) or parse_community(word)
            if isinstance(value, str):
                a.error(f"communities[{i}]", f"{word!r} is neither a defined community name"
                        " nor a value (aa:nn or aa:nn:mm)")
                continue
            values.append(value)
        if cidr is not None:
            out.append(PrefixAdvertisement(cidr, tuple(values), tuple(written)))
    return tuple(out)
