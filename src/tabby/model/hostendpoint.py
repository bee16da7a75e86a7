"""``HostEndpoint``: one of a node's own interfaces (or addresses) under policy.

Calico v3 shape: ``spec.node``, ``spec.interfaceName`` and/or
``spec.expectedIPs``, ``spec.profiles``, ``spec.ports`` (named ports:
``name``, ``port``, ``protocol``), labels in ``metadata.labels``.

Once a host endpoint exists, traffic to and from the host through it is
denied unless a policy allows it, except the failsafe ports
(``tabby.model.felixconfig``). An endpoint with ``interfaceName`` is enforced
on that interface; one with only ``expectedIPs`` on traffic to and from those
addresses. ``interfaceName: "*"`` (an all-interfaces host endpoint, Calico's
``host-*``) is enforced on every interface of the node that is not a pod's
and not named by another host endpoint (``tabby.policy.hostendpoints``).
``expectedIPs`` also join the address sets of selectors that match the
endpoint's labels. The profile ``projectcalico-default-allow``
(alias ``tabby-default-allow``) turns the final deny into an allow.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby.errors import FieldError
from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.k8s import PROTOCOLS
from tabby.model.schema import Column, KindSchema, array, integer, obj, string
from tabby.model.workloadendpoint import EndpointPort

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_ALLOW_PROFILES = frozenset({"projectcalico-default-allow", "tabby-default-allow"})
ALL_INTERFACES = "*"


@dataclass(frozen=True, slots=True)
class HostEndpointSpec:
    node: str
    interface_name: str = ""
    expected_ips: tuple[IPAddress, ...] = ()
    profiles: tuple[str, ...] = ()
    ports: tuple[EndpointPort, ...] = ()

    @property
    def default_allow(self) -> bool:
        return bool(DEFAULT_ALLOW_PROFILES.intersection(self.profiles))

    @property
    def all_interfaces(self) -> bool:
        return self.interface_name == ALL_INTERFACES


@register
@dataclass(frozen=True, slots=True)
class HostEndpoint(Resource):
    KIND = KindInfo("HostEndpoint", TABBY_GROUP, "v1", "hostendpoints", namespaced=False,
                    aliases=(CALICO_API,), short_names=("hep", "heps"))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        "node": string("The node the interface belongs to."),
        "interfaceName": string("The interface under policy; \"*\": every interface of"
                                " the node except pods' and those other host endpoints"
                                " name.", max_length=15),
        "expectedIPs": array(string(), "The host's addresses on it."),
        "profiles": array(string(), "Profiles (projectcalico-default-allow: allow the rest)."),
        "ports": array(obj({
            "name": string("The port's name (for named ports in rules)."),
            "port": integer("The port number.", minimum=1, maximum=65535),
            "protocol": string("Default TCP.", enum=PROTOCOLS),
        }, required=["name", "port"]), "Named ports."),
    }, required=["node"]), columns=(Column("Node", ".spec.node"),
                                    Column("Interface", ".spec.interfaceName")))
    meta: ObjectMeta
    spec: HostEndpointSpec

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        node = f.str("node", required=True)
        iface = f.str("interfaceName")
        if iface != ALL_INTERFACES and (len(iface) > 15 or "/" in iface or " " in iface
                                        or "*" in iface):
            f.error("interfaceName", f"{iface!r} is not an interface name (or \"*\" for"
                                     " every interface)")
        ips: list[IPAddress] = []
        for path, item in f.list("expectedIPs"):
            try:
                ips.append(ipaddress.ip_address(str(item)))
            except ValueError:
                f.errors.append(FieldError(path, f"{item!r} is not an IP address"))
        if not iface and not ips and not f.errors:
            f.error("interfaceName", "a host endpoint needs interfaceName or expectedIPs")
        ports = []
        for path, item in f.list("ports"):
            p = Fields(item, path, f.errors)
            name = p.str("name", required=True)
            number = p.int("port", required=True) or 0
            if not 0 < number < 65536:
                p.error("port", f"{number} is outside 1..65535")
            protocol = p.choice("protocol", PROTOCOLS, "TCP")
            p.finish()
            ports.append(EndpointPort(name, protocol, number))
        profiles = tuple(f.str_list("profiles"))
        f.finish()
        return cls(meta=meta, spec=HostEndpointSpec(node, iface, tuple(ips), profiles,
                                                    tuple(ports)))

    def body(self) -> dict[str, Any]:
        s = self.spec
        spec: dict[str, Any] = {"node": s.node}
        if s.interface_name:
            spec["interfaceName"] = s.interface_name
        if s.expected_ips:
            spec["expectedIPs"] = [str(ip) for ip in s.expected_ips]
        if s.profiles:
            spec["profiles"] = list(s.profiles)
        if s.ports:
            spec["ports"] = [{"name": p.name, "port": p.port, "protocol": p.protocol}
                             for p in s.ports]
        return {"spec": spec}
