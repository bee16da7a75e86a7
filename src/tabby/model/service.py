"""Kubernetes ``v1`` Service and ``discovery.k8s.io/v1`` EndpointSlice.

A Service keeps the fields the proxy reads typed (type, clusterIP(s),
ipFamilies, ports, selector, session affinity, traffic policies, externalIPs,
loadBalancerIP, healthCheckNodePort, ``status.loadBalancer.ingress[].ip``)
and the rest of its spec and status untouched, so a manifest written for a
real cluster applies as it is and an object a kube-apiserver served renders
back with every field it had (``loadBalancerClass``, ``trafficDistribution``,
an ingress entry's ``ipMode``, ``ports`` and ``hostname``, status
``conditions``): writing ``status.loadBalancer`` back clobbers nothing. The
allocated fields (``spec.clusterIP(s)``, ``nodePort``, the ingress IPs) are
written by whoever plays the API server's and controllers' part (the lab's
endpoints controller, ``tabby.services.controller``).

An EndpointSlice lists the endpoints of one Service (its label
``kubernetes.io/service-name``) for one address family, with their
conditions (``ready`` / ``serving`` / ``terminating``; an absent condition is
"unknown" and reads as Kubernetes reads it) and the ports they serve. The API
also serves ``FQDN`` slices (address_type 0, names in ``Endpoint.fqdns``) and
ports without a number ("not restricted"); a proxy can use neither (kube-proxy
skips them), so they are read, kept apart and never become backends.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from tabby.errors import FieldError
from tabby.model.base import KindInfo, ObjectMeta, Resource, check_label, register
from tabby.model.fields import Fields

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")
FAMILY_NAMES = {"IPv4": 4, "IPv6": 6}
FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
TRAFFIC_POLICIES = ("Cluster", "Local")
AFFINITIES = ("None", "ClientIP")
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, Kubernetes' default (3 hours)
MAX_AFFINITY_TIMEOUT = 86400
NODE_PORTS = (30000, 32767)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
FQDN = 0  # EndpointSlice.address_type of an FQDN slice
_FQDN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_SLICE_ENDPOINTS = 1000


def family_name(version: int) -> str:
    return {4: "IPv4", 6: "IPv6"}.get(version, "FQDN")


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: int | str = 0  # a number, or a container port's name; 0: same as port
    node_port: int | None = None
    app_protocol: str = ""

    @property
    def target(self) -> int | str:
        return self.target_port or self.port

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out.update({"protocol": self.protocol, "port": self.port, "targetPort": self.target})
        if self.node_port is not None:
            out["nodePort"] = self.node_port
        if self.app_protocol:
            out["appProtocol"] = self.app_protocol
        return out


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    type: str = "ClusterIP"
    cluster_ips: tuple[IPAddress, ...] = ()  # allocated; first is spec.clusterIP
    headless: bool = False  # clusterIP: None
    ip_families: tuple[int, ...] = ()  # 4 / 6, in order; () until allocated
    ip_family_policy: str = ""  # "" until allocated (SingleStack by default)
    ports: tuple[ServicePort, ...] = ()
    selector: Mapping[str, str] = field(default_factory=dict)
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ip: IPAddress | None = None
    external_name: str = ""
    health_check_node_port: int | None = None  # allocated for LoadBalancer + Local

    @property
    def has_node_ports(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")


@register
@dataclass(frozen=True, slots=True)
class Service(Resource):
    KIND = KindInfo("Service", "", "v1", "services", namespaced=True, short_names=("svc",))
    meta: ObjectMeta
    spec: ServiceSpec = ServiceSpec()
    ingress: tuple[IPAddress, ...] = ()  # status.loadBalancer.ingress[].ip
    raw_spec: dict[str, Any] = field(default_factory=dict)  # spec fields not typed here
    # status fields not typed here: conditions, loadBalancer's other fields and the
    # ingress entries that carry more than an IP (ipMode, ports, hostname-only entries);
    # body() renders ``ingress`` over it
    raw_status: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        raw = top.raw("spec")
        f = top.map("spec")
        spec = _spec(f)
        f.finish(ignore_unknown=True)
        raw_status = top.raw("status")
        status = top.map("status")
        lb = status.map("loadBalancer")
        ingress = []
        for path, item in lb.list("ingress"):
            entry = Fields(item, path, f.errors)
            text = entry.str("ip")
            if text:
                ip = _ip(entry, "ip", text)
                if ip is not None:
                    ingress.append(ip)
            entry.finish(ignore_unknown=True)  # hostname, ipMode, ports
        lb.finish(ignore_unknown=True)
        status.finish(ignore_unknown=True)
        # Keep only what is not typed, so the typed fields are the one truth.
        rest = {k: v for k, v in raw.items() if k not in f.seen} if isinstance(raw, dict) else {}
        return cls(meta=meta, spec=spec, ingress=tuple(ingress), raw_spec=rest,
                   raw_status=_status_rest(raw_status))

    def body(self) -> dict[str, Any]:
        s = self.spec
        spec = dict(self.raw_spec)
        spec["type"] = s.type
        if s.ports:  # the API server omits an empty list (headless, ExternalName)
            spec["ports"] = [p.to_dict() for p in s.ports]
        if s.selector:
            spec["selector"] = dict(s.selector)
        if s.headless:
            spec["clusterIP"] = "None"
            spec["clusterIPs"] = ["None"]
        elif s.cluster_ips:
            spec["clusterIP"] = str(s.cluster_ips[0])
            spec["clusterIPs"] = [str(ip) for ip in s.cluster_ips]
        if s.ip_families:
            spec["ipFamilies"] = [family_name(v) for v in s.ip_families]
        if s.ip_family_policy:
            spec["ipFamilyPolicy"] = s.ip_family_policy
        spec["sessionAffinity"] = s.session_affinity
        if s.session_affinity == "ClientIP":
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": s.affinity_timeout}}
        if s.has_node_ports or s.external_ips:
            spec["externalTrafficPolicy"] = s.external_traffic_policy
        if s.type != "ExternalName" or s.internal_traffic_policy != "Cluster":
            spec["internalTrafficPolicy"] = s.internal_traffic_policy
        if s.external_ips:
            spec["externalIPs"] = [str(ip) for ip in s.external_ips]
        if s.load_balancer_ip is not None:
            spec["loadBalancerIP"] = str(s.load_balancer_ip)
        if s.external_name:
            spec["externalName"] = s.external_name
        if s.health_check_node_port is not None:
            spec["healthCheckNodePort"] = s.health_check_node_port
        status = {k: v for k, v in self.raw_status.items() if k != "loadBalancer"}
        status["loadBalancer"] = self._load_balancer()
        return {"spec": spec, "status": status}

    def _load_balancer(self) -> dict[str, Any]:
        """``ingress`` over the served status.loadBalancer: an entry for an IP still in
        ``ingress`` keeps its other fields, entries without an IP are kept as they are."""
        raw = self.raw_status.get("loadBalancer")
        raw = raw if isinstance(raw, dict) else {}
        entries = [e for e in raw.get("ingress") or () if isinstance(e, dict)]
        by_ip: dict[IPAddress, dict[str, Any]] = {}
        for entry in entries:
            with contextlib.suppress(ValueError):
                by_ip.setdefault(ipaddress.ip_address(str(entry.get("ip"))), entry)
        ingress = [{**by_ip.get(ip, {}), "ip": str(ip)} for ip in self.ingress]
        ingress += [e for e in entries if not e.get("ip")]
        lb = {k: v for k, v in raw.items() if k != "ingress"}
        if ingress:
            lb["ingress"] = ingress
        return lb

    def families(self) -> tuple[int, ...]:
        """The families the service serves: its ipFamilies, else its clusterIPs'."""
        if self.spec.ip_families:
            return self.spec.ip_families
        return tuple(ip.version for ip in self.spec.cluster_ips)

    def cluster_ip(self, version: int) -> IPAddress | None:
        return next((ip for ip in self.spec.cluster_ips if ip.version == version), None)

    # kubectl's columns: TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S)
    def cluster_ip_text(self) -> str:
        if self.spec.headless:
            return "None"
        return str(self.spec.cluster_ips[0]) if self.spec.cluster_ips else "<none>"

    def external_ip_text(self) -> str:
        ips = [str(ip) for ip in (*self.ingress, *self.spec.external_ips)]
        if ips:
            return ",".join(ips)
        if self.spec.type == "ExternalName":
            return self.spec.external_name
        return "<pending>" if self.spec.type == "LoadBalancer" else "<none>"

    def ports_text(self) -> str:
        return ",".join(f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port is not None
                        else f"{p.port}/{p.protocol}" for p in self.spec.ports) or "<none>"


def _status_rest(raw: object) -> dict[str, Any]:
    """What of a served status the typed ``ingress`` does not say (empty for a status
    tabby wrote itself, so equal services compare equal however they were made)."""
    if not isinstance(raw, dict):
        return {}
    rest = {k: v for k, v in raw.items() if k != "loadBalancer"}
    lb = raw.get("loadBalancer")
    if isinstance(lb, dict):
        lb_rest = {k: v for k, v in lb.items() if k != "ingress"}
        entries = [e for e in lb.get("ingress") or () if isinstance(e, dict) and set(e) - {"ip"}]
        if entries:
            lb_rest["ingress"] = entries
        if lb_rest:
            rest["loadBalancer"] = lb_rest
    return rest


def _spec(f: Fields) -> ServiceSpec:
    kind = f.choice("type", SERVICE_TYPES, "ClusterIP")
    headless, cluster_ips = _cluster_ips(f)
    families = []
    for path, item in f.list("ipFamilies"):
        if item not in FAMILY_NAMES:
            f.errors.append(FieldError(path, f"{item!r} is not one of IPv4, IPv6"))
        elif FAMILY_NAMES[item] in families:
            f.errors.append(FieldError(path, f"{item} is listed twice"))
        else:
            families.append(FAMILY_NAMES[item])
    policy = f.str("ipFamilyPolicy")
    if policy and policy not in FAMILY_POLICIES:
        f.error("ipFamilyPolicy", f"{policy!r} is not one of {', '.join(FAMILY_POLICIES)}")
    if cluster_ips and families and [ip.version for ip in cluster_ips] != families[:len(
            cluster_ips)]:
        f.error("clusterIPs", "must follow the order of ipFamilies")
    ports = _ports(f, kind, headless)
    selector = f.str_map("selector")
    for key, value in selector.items():
        check_label(f, f"selector.{key}", key, value)
    affinity = f.choice("sessionAffinity", AFFINITIES, "None")
    timeout = _affinity_timeout(f.map("sessionAffinityConfig"))
    etp = f.choice("externalTrafficPolicy", TRAFFIC_POLICIES, "Cluster")
    itp = f.choice("internalTrafficPolicy", TRAFFIC_POLICIES, "Cluster")
    external = []
    for path, item in f.list("externalIPs"):
        try:
            external.append(ipaddress.ip_address(str(item)))
        except ValueError:
            f.errors.append(FieldError(path, f"{item!r} is not an IP address"))
    lb_text = f.str("loadBalancerIP")
    lb_ip = _ip(f, "loadBalancerIP", lb_text) if lb_text else None
    name = f.str("externalName")
    if kind == "ExternalName" and not name:
        f.error("externalName", "is required for type ExternalName")
    health = f.int("healthCheckNodePort")
    if health is not None:
        if kind != "LoadBalancer" or etp != "Local":
            f.error("healthCheckNodePort", "only a LoadBalancer service with"
                    " externalTrafficPolicy Local has one")
        elif not 0 < health < 65536:
            f.error("healthCheckNodePort", f"{health} is outside 1..65535")
    return ServiceSpec(type=kind, cluster_ips=cluster_ips, headless=headless,
                       ip_families=tuple(families), ip_family_policy=policy, ports=ports,
                       selector=selector, session_affinity=affinity, affinity_timeout=timeout,
                       external_traffic_policy=etp, internal_traffic_policy=itp,
                       external_ips=tuple(external), load_balancer_ip=lb_ip, external_name=name,
                       health_check_node_port=health)


def _cluster_ips(f: Fields) -> tuple[bool, tuple[IPAddress, ...]]:
    first = f.str("clusterIP")
    texts = f.str_list("clusterIPs")
    if first and texts and texts[0] != first:
        f.error("clusterIPs", f"its first entry must equal clusterIP ({first})")
    texts = texts or ([first] if first else [])
    if "None" in texts:
        if texts != ["None"]:
            f.error("clusterIPs", "'None' (headless) cannot be combined with addresses")
        return True, ()
    ips: list[IPAddress] = []
    for text in texts:
        ip = _ip(f, "clusterIPs", text)
        if ip is not None:
            ips.append(ip)
    if len({ip.version for ip in ips}) != len(ips):
        f.error("clusterIPs", "at most one address per family")
    return False, tuple(ips)


def _ports(f: Fields, kind: str, headless: bool) -> tuple[ServicePort, ...]:
    ports: list[ServicePort] = []
    items = f.list("ports")
    for path, item in items:
        p = Fields(item, path, f.errors)
        number = p.int("port", required=True) or 0
        if not 0 < number < 65536:
            p.error("port", f"{number} is outside 1..65535")
        protocol = p.choice("protocol", PROTOCOLS, "TCP")
        name = p.str("name")
        if len(items) > 1 and not name:
            p.error("name", "is required when a service has more than one port")
        target = _target_port(p)
        node_port = p.int("nodePort")
        if node_port is not None:
            if kind not in ("NodePort", "LoadBalancer"):
                p.error("nodePort", f"only NodePort and LoadBalancer services have one, not {kind}")
            elif not NODE_PORTS[0] <= node_port <= NODE_PORTS[1]:
                p.error("nodePort", f"{node_port} is outside {NODE_PORTS[0]}..{NODE_PORTS[1]}")
        ports.append(ServicePort(number, protocol, name, target or number, node_port,
                                 p.str("appProtocol")))
        p.finish()
    names = [p.name for p in ports if p.name]
    if len(names) != len(set(names)):
        f.error("ports", "port names must be unique")
    keys = [(p.port, p.protocol) for p in ports]
    if len(keys) != len(set(keys)):
        f.error("ports", "a port and protocol may appear only once")
    if not ports and not headless and kind != "ExternalName":
        f.error("ports", "a service needs at least one port (unless headless)")
    return tuple(ports)


def _target_port(p: Fields) -> int | str:
    raw = p.raw("targetPort")
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        p.error("targetPort", "must be a port number or a container port name")
        return 0
    if isinstance(raw, int):
        if not 0 < raw < 65536:
            p.error("targetPort", f"{raw} is outside 1..65535")
        return raw
    if raw.isdigit():
        return int(raw)
    if len(raw) > 15 or not raw.replace("-", "").isalnum() or raw != raw.lower():
        p.error("targetPort", f"{raw!r} is not a container port name")
    return raw


def _affinity_timeout(cfg: Fields) -> int:
    client = cfg.map("clientIP")
    timeout = client.int("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
    assert timeout is not None
    if not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
        client.error("timeoutSeconds", f"{timeout} is outside 1..{MAX_AFFINITY_TIMEOUT}")
        timeout = DEFAULT_AFFINITY_TIMEOUT
    client.finish()
    cfg.finish()
    return timeout


def _ip(f: Fields, name: str, text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        f.error(name, f"{text!r} is not an IP address")
        return None


# -- EndpointSlice -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[IPAddress, ...]
    ready_condition: bool | None = None  # None: unknown (reads as ready)
    serving_condition: bool | None = None  # None: same as ready
    terminating: bool = False
    node_name: str = ""
    target: str = ""  # targetRef as "Kind/namespace/name" (pods: "Pod/ns/name")
    hostname: str = ""
    fqdns: tuple[str, ...] = ()  # the addresses of an FQDN slice's endpoint (no IPs)

    @property
    def ready(self) -> bool:
        return self.ready_condition is not False

    @property
    def serving(self) -> bool:
        return self.ready if self.serving_condition is None else self.serving_condition

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"addresses": [*(str(a) for a in self.addresses), *self.fqdns]}
        conditions: dict[str, bool] = {}
        if self.ready_condition is not None:
            conditions["ready"] = self.ready_condition
        if self.serving_condition is not None:
            conditions["serving"] = self.serving_condition
        conditions["terminating"] = self.terminating
        out["conditions"] = conditions
        if self.hostname:
            out["hostname"] = self.hostname
        if self.node_name:
            out["nodeName"] = self.node_name
        if self.target:
            kind, ns, name = self.target.split("/", 2)
            out["targetRef"] = {"kind": kind, "namespace": ns, "name": name}
        return out


@dataclass(frozen=True, slots=True)
class EndpointPort:
    port: int  # 0 only in EndpointSlice.unnumbered_ports
    protocol: str = "TCP"
    name: str = ""
    app_protocol: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.port:
            out["port"] = self.port
        out["protocol"] = self.protocol
        if self.app_protocol:
            out["appProtocol"] = self.app_protocol
        return out


@register
@dataclass(frozen=True, slots=True)
class EndpointSlice(Resource):
    KIND = KindInfo("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices",
                    namespaced=True)
    meta: ObjectMeta
    address_type: int = 4  # 4: IPv4, 6: IPv6, FQDN (0): names, no backends
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    # ports without a number ("not restricted"): kube-proxy skips them, and so do
    # tabby's backends; kept apart (with port 0) so that ``ports`` are all numbered
    unnumbered_ports: tuple[EndpointPort, ...] = ()

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        kind = top.str("addressType", required=True)
        version = {"IPv4": 4, "IPv6": 6, "FQDN": FQDN}.get(kind, 4)
        if kind and kind not in ADDRESS_TYPES:
            top.error("addressType", f"{kind!r} is not one of {', '.join(ADDRESS_TYPES)}")
        items = top.list("endpoints")
        if len(items) > MAX_SLICE_ENDPOINTS:
            top.error("endpoints", f"at most {MAX_SLICE_ENDPOINTS} endpoints per slice")
        endpoints = tuple(_endpoint(Fields(item, path, top.errors), version)
                          for path, item in items)
        ports: list[EndpointPort] = []
        unnumbered: list[EndpointPort] = []
        for path, item in top.list("ports"):
            p = Fields(item, path, top.errors)
            number = p.int("port") or 0
            if p.has("port") and not 0 < number < 65536:
                p.error("port", f"{number} is outside 1..65535")
            port = EndpointPort(number, p.choice("protocol", PROTOCOLS, "TCP"), p.str("name"),
                                p.str("appProtocol"))
            (ports if p.has("port") else unnumbered).append(port)
            p.finish(ignore_unknown=True)
        return cls(meta=meta, address_type=version, endpoints=endpoints, ports=tuple(ports),
                   unnumbered_ports=tuple(unnumbered))

    def body(self) -> dict[str, Any]:
        return {"addressType": family_name(self.address_type),
                "endpoints": [e.to_dict() for e in self.endpoints],
                "ports": [p.to_dict() for p in (*self.ports, *self.unnumbered_ports)]}

    @property
    def service_name(self) -> str:
        return self.meta.labels.get(SERVICE_NAME_LABEL, "")

    # kubectl's columns: ADDRESSTYPE, PORTS, ENDPOINTS
    def ports_text(self) -> str:
        return ",".join(str(p.port) for p in self.ports) or "<unset>"

    def endpoints_text(self) -> str:
        addresses = [str((*e.addresses, *e.fqdns)[0]) for e in self.endpoints
                     if e.addresses or e.fqdns]
        more = f" + {len(addresses) - 3} more..." if len(addresses) > 3 else ""
        return ",".join(addresses[:3]) + more if addresses else "<unset>"


def _endpoint(e: Fields, version: int) -> Endpoint:
    addresses: list[IPAddress] = []
    fqdns: list[str] = []
    items = e.list("addresses")
    for path, item in items:
        if version == FQDN:
            if not isinstance(item, str) or len(item) > 253 or not _FQDN.match(item):
                e.errors.append(FieldError(path, f"{item!r} is not a DNS name"))
            else:
                fqdns.append(item)
            continue
        try:
            ip = ipaddress.ip_address(str(item))
        except ValueError:
            e.errors.append(FieldError(path, f"{item!r} is not an IP address"))
            continue
        if ip.version != version:
            e.errors.append(FieldError(path, f"{ip} is not an IPv{version} address"))
            continue
        addresses.append(ip)
    if not items:
        e.error("addresses", "an endpoint needs at least one address")
    c = e.map("conditions")
    ready = c.bool("ready") if c.has("ready") else None
    serving = c.bool("serving") if c.has("serving") else None
    terminating = c.bool("terminating")
    c.finish()
    ref = e.map("targetRef")
    target = ""
    if ref.has("name"):
        target = f"{ref.str('kind', 'Pod')}/{ref.str('namespace')}/{ref.str('name')}"
    ref.finish(ignore_unknown=True)
    out = Endpoint(tuple(addresses), ready, serving, terminating, e.str("nodeName"), target,
                   e.str("hostname"), tuple(fqdns))
    e.raw("zone")
    e.raw("hints")
    e.raw("deprecatedTopology")
    e.finish()
    return out
