"""``NetworkSet`` (namespaced) and ``GlobalNetworkSet``: labelled lists of CIDRs.

Calico v3 shape: ``metadata.labels`` and ``spec.nets``. Policy rule selectors
match them like endpoints: a selector's address set holds the nets of every
matching network set beside the addresses of matching endpoints.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby.errors import FieldError
from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.schema import KindSchema, array, obj, string

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_net_list(f: Fields, name: str) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for path, item in f.list(name):
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            f.errors.append(FieldError(path, f"{item!r} is not a CIDR"))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Nets(Resource):
    """What NetworkSet and GlobalNetworkSet share: a list of nets (their scope differs)."""

    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        "nets": array(string(), "CIDRs (or addresses) in this set."),
        "allowedEgressDomains": array(string(), "Accepted for Calico compatibility; not used."),
    }))
    meta: ObjectMeta
    nets: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        nets = parse_net_list(f, "nets")
        f.raw("allowedEgressDomains")
        f.finish()
        return cls(meta=meta, nets=nets)

    def body(self) -> dict[str, Any]:
        return {"spec": {"nets": [str(n) for n in self.nets]}}


@register
@dataclass(frozen=True, slots=True)
class NetworkSet(_Nets):
    KIND = KindInfo("NetworkSet", TABBY_GROUP, "v1", "networksets", namespaced=True,
                    aliases=(CALICO_API,), short_names=("netset",))


@register
@dataclass(frozen=True, slots=True)
class GlobalNetworkSet(_Nets):
    KIND = KindInfo("GlobalNetworkSet", TABBY_GROUP, "v1", "globalnetworksets",
                    namespaced=False, aliases=(CALICO_API,), short_names=("gnetset",))
