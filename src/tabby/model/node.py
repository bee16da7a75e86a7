"""Node: one machine of the cluster, with the addresses BGP and routing use.

Fields follow Calico's v3 Node: ``spec.bgp.ipv4Address`` / ``ipv6Address``
(interface address with prefix, e.g. ``198.18.0.11/24``), ``asNumber``,
``routeReflectorClusterID``, and ``spec.addresses``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Self

from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class NodeBGP:
    ipv4_address: ipaddress.IPv4Interface | None = None
    ipv6_address: ipaddress.IPv6Interface | None = None
    as_number: int | None = None
    route_reflector_cluster_id: str = ""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    bgp: NodeBGP = NodeBGP()
    addresses: tuple[tuple[str, str], ...] = ()  # (address, type)


@register
@dataclass(frozen=True, slots=True)
class Node(Resource):
    KIND = KindInfo("Node", TABBY_GROUP, "v1", "nodes", namespaced=False,
                    aliases=(CALICO_API,), short_names=("no",))
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
        f.raw("orchRefs")
        f.finish(ignore_unknown=True)
        top.raw("status")
        spec = NodeSpec(NodeBGP(v4, v6, asn, rr), tuple(addresses))  # type: ignore[arg-type]
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
        return {"spec": spec}

    def address(self, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        iface = self.spec.bgp.ipv4_address if version == 4 else self.spec.bgp.ipv6_address
        return iface.ip if iface else None


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
