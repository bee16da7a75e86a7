"""Node: one machine of the cluster, with the addresses BGP and routing use.

Fields follow Calico's v3 Node: ``spec.bgp.ipv4Address`` / ``ipv6Address``
(interface address with prefix, e.g. ``198.18.0.11/24``), ``asNumber``,
``routeReflectorClusterID``, and ``spec.addresses``; the VXLAN tunnel endpoint
the node's agent allocated and publishes (``ipv4VXLANTunnelAddr``,
``vxlanTunnelMACAddr``, ``ipv6VXLANTunnelAddr``, ``vxlanTunnelMACAddrV6``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.schema import Column, KindSchema, array, free_form, integer, obj, string

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True, slots=True)
class NodeBGP:
    ipv4_address: ipaddress.IPv4Interface | None = None
    ipv6_address: ipaddress.IPv6Interface | None = None
    as_number: int | None = None
    route_reflector_cluster_id: str = ""


@dataclass(frozen=True, slots=True)
class NodeVXLAN:
    """The node's VXLAN tunnel endpoint per family (written by its agent)."""

    ipv4_address: ipaddress.IPv4Address | None = None
    mac: str = ""
    ipv6_address: ipaddress.IPv6Address | None = None
    mac_v6: str = ""

    def address(self, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return self.ipv4_address if version == 4 else self.ipv6_address

    def mac_of(self, version: int) -> str:
        return self.mac if version == 4 else self.mac_v6

    def with_family(self, version: int, address: ipaddress.IPv4Address | ipaddress.IPv6Address
                    | None, mac: str) -> NodeVXLAN:
        """These values with the VTEP of ``version`` set (None and "": cleared)."""
        if version == 4:
            v4 = address if isinstance(address, ipaddress.IPv4Address) else None
            return dataclasses.replace(self, ipv4_address=v4, mac=mac)
        v6 = address if isinstance(address, ipaddress.IPv6Address) else None
        return dataclasses.replace(self, ipv6_address=v6, mac_v6=mac)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    bgp: NodeBGP = NodeBGP()
    addresses: tuple[tuple[str, str], ...] = ()  # (address, type)
    vxlan: NodeVXLAN = NodeVXLAN()


@register
@dataclass(frozen=True, slots=True)
class Node(Resource):
    KIND = KindInfo("Node", TABBY_GROUP, "v1", "nodes", namespaced=False,
                    aliases=(CALICO_API,), short_names=("no",))
    SCHEMA: ClassVar[KindSchema] = KindSchema(
        spec=obj({
            "bgp": obj({
                "ipv4Address": string("IPv4 address with prefix (198.18.0.11/24)."),
                "ipv6Address": string("IPv6 address with prefix."),
                "asNumber": integer("The node's own AS number.", minimum=1,
                                    maximum=4294967295),
                "routeReflectorClusterID": string("Set on route reflectors (an IPv4 address)."),
            }, "The node's BGP speaker."),
            "addresses": array(obj({
                "address": string("An address of the node."),
                "type": string("InternalIP (default), ExternalIP, ..."),
            }, required=["address"]), "The node's addresses."),
            "ipv4VXLANTunnelAddr": string("IPv4 VXLAN tunnel endpoint (agent-written)."),
            "vxlanTunnelMACAddr": string("Its MAC address."),
            "ipv6VXLANTunnelAddr": string("IPv6 VXLAN tunnel endpoint (agent-written)."),
            "vxlanTunnelMACAddrV6": string("Its MAC address."),
            "orchRefs": array(obj({"nodeName": string(), "orchestrator": string()}),
                              "Accepted for Calico compatibility; not kept."),
        }),
        # Calico writes a status; the model accepts and drops it (a status subresource).
        status=free_form("Written by Calico; tabby neither writes nor reads it."),
        columns=(Column("IPv4", ".spec.bgp.ipv4Address"), Column("IPv6", ".spec.bgp.ipv6Address"),
                 Column("ASN", ".spec.bgp.asNumber", "integer")))
    meta: ObjectMeta
    spec: NodeSpec = NodeSpec()

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        b = f.map("bgp")
        v4 = _interface(b, "ipv4Address", 4)
        v6 = _interface(b, "ipv6Address", 6)
        asn = b.int("asNumber")
        if asn is not None and not 1 <= asn <= 4294967295:
            b.error("asNumber", f"{asn} is outside 1..4294967295")
        rr = b.str("routeReflectorClusterID")
        if rr:
            try:
                ipaddress.IPv4Address(rr)
            except ValueError:
                b.error("routeReflectorClusterID", f"{rr!r} must be an IPv4 address")
        b.finish()
        addresses = []
        for path, item in f.list("addresses"):
            a = Fields(item, path, f.errors)
            addr = a.str("address", required=True)
            addresses.append((addr, a.str("type", "InternalIP")))
            a.finish()
        vxlan = _vxlan(f)
        f.raw("orchRefs")
        f.finish()  # Calico's other Node fields are rejected with reasons (kindnotes)
        top.raw("status")
        spec = NodeSpec(NodeBGP(v4, v6, asn, rr), tuple(addresses), vxlan)  # type: ignore[arg-type]
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        bgp: dict[str, Any] = {}
        b = self.spec.bgp
        if b.ipv4_address:
            bgp["ipv4Address"] = str(b.ipv4_address)
        if b.ipv6_address:
            bgp["ipv6Address"] = str(b.ipv6_address)
        if b.as_number is not None:
            bgp["asNumber"] = b.as_number
        if b.route_reflector_cluster_id:
            bgp["routeReflectorClusterID"] = b.route_reflector_cluster_id
        spec: dict[str, Any] = {}
        if bgp:
            spec["bgp"] = bgp
        if self.spec.addresses:
            spec["addresses"] = [{"address": a, "type": t} for a, t in self.spec.addresses]
        x = self.spec.vxlan
        for key, value in (("ipv4VXLANTunnelAddr", x.ipv4_address), ("vxlanTunnelMACAddr", x.mac),
                           ("ipv6VXLANTunnelAddr", x.ipv6_address),
                           ("vxlanTunnelMACAddrV6", x.mac_v6)):
            if value:
                spec[key] = str(value)
        return {"spec": spec}

    def address(self, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        iface = self.spec.bgp.ipv4_address if version == 4 else self.spec.bgp.ipv6_address
        return iface.ip if iface else None


def _vxlan(f: Fields) -> NodeVXLAN:
    v4 = _tunnel_address(f, "ipv4VXLANTunnelAddr", 4)
    v6 = _tunnel_address(f, "ipv6VXLANTunnelAddr", 6)
    macs = []
    for name in ("vxlanTunnelMACAddr", "vxlanTunnelMACAddrV6"):
        text = f.str(name).lower()
        if text and not _MAC.match(text):
            f.error(name, f"{text!r} is not a MAC address (e.g. 66:0b:8d:2f:1e:01)")
            text = ""
        macs.append(text)
    return NodeVXLAN(v4, macs[0], v6, macs[1])  # type: ignore[arg-type]


def _tunnel_address(f: Fields, name: str, version: int
                    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = f.str(name)
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        f.error(name, f"{text!r} is not an address")
        return None
    if address.version != version:
        f.error(name, f"{text!r} is not an IPv{version} address")
        return None
    return address


def _interface(f: Fields, name: str, version: int) -> IPInterface | None:
    text = f.str(name)
    if not text:
        return None
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        f.error(name, f"{text!r} is not an address with prefix (e.g. 198.18.0.11/24)")
        return None
    if iface.version != version:
        f.error(name, f"{text!r} is not an IPv{version} address")
        return None
    return iface
