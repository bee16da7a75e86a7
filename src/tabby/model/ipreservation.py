"""``IPReservation``: addresses IPAM must never hand out on its own.

Calico v3 shape: cluster-scoped, ``spec.reservedCIDRs`` a list of CIDRs or
single addresses, IPv4 and IPv6 mixed. ``192.168.2.3`` means
``192.168.2.3/32``; a CIDR with host bits set is taken as its network, as
Calico parses it (``192.168.2.3/24`` reserves ``192.168.2.0/24``).

What it does (``tabby.ipam.engine``, ``tabby.ipam.reserved``): automatic
assignment skips reserved addresses inside blocks and never claims or
borrows a block that is reserved whole. Addresses already held when a
reservation appears stay with their holders; ``tabby ipam check`` reports
them (``reserved-address``) so they can be moved.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby.errors import FieldError
from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.schema import Column, KindSchema, array, obj, string

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_reserved(text: str) -> IPNetwork:
    """A CIDR or a single address, as Calico reads it; ValueError with the reason."""
    text = text.strip()
    if not text:
        raise ValueError("an empty string is not a CIDR or an address")
    if "/" not in text:
        return ipaddress.ip_network(ipaddress.ip_address(text))
    return ipaddress.ip_network(text, strict=False)


@register
@dataclass(frozen=True, slots=True)
class IPReservation(Resource):
    KIND = KindInfo("IPReservation", TABBY_GROUP, "v1", "ipreservations", namespaced=False,
                    aliases=(CALICO_API,), short_names=("ipres",))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        "reservedCIDRs": array(string(), "CIDRs or single addresses (IPv4 or IPv6) that"
                               " IPAM never assigns automatically."),
    }), columns=(Column("Reserved", ".spec.reservedCIDRs"),))
    meta: ObjectMeta
    reserved_cidrs: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        cidrs: list[IPNetwork] = []
        for path, item in f.list("reservedCIDRs"):
            if not isinstance(item, str):
                f.errors.append(FieldError(path, f"{item!r} is not a string (a CIDR or an"
                                                 " address, e.g. 198.19.0.0/28)"))
                continue
            try:
                cidrs.append(parse_reserved(item))
            except ValueError:
                f.errors.append(FieldError(path, f"{item!r} is not a CIDR or an IP address"
                                                 " (e.g. 198.19.0.0/28, fd7a:bb1e::5)"))
        f.finish()
        return cls(meta=meta, reserved_cidrs=tuple(cidrs))

    def body(self) -> dict[str, Any]:
        return {"spec": {"reservedCIDRs": [str(c) for c in self.reserved_cidrs]}}
