"""IPPool: a range pods (and tunnels, load balancers) take addresses from.

Field names and defaults follow Calico's ``projectcalico.org/v3`` IPPool.
Rules that need other pools (no overlap) or the old object (blockSize,
cidr immutable) live in ``check_pools`` and ``validate_update``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby import selector
from tabby.errors import FieldError, ValidationError
from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.schema import (
    Column,
    KindSchema,
    array,
    boolean,
    free_form,
    integer,
    obj,
    string,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ENCAP_MODES = ("Never", "Always", "CrossSubnet")
USES = ("Workload", "Tunnel", "LoadBalancer")
BLOCK_RANGE = {4: (20, 32), 6: (116, 128)}
DEFAULT_BLOCK = {4: 26, 6: 122}
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


@dataclass(frozen=True, slots=True)
class IPPoolSpec:
    cidr: IPNetwork
    block_size: int
    vxlan_mode: str = "Never"
    ipip_mode: str = "Never"
    nat_outgoing: bool = False
    disabled: bool = False
    disable_bgp_export: bool = False
    node_selector: str = "all()"
    allowed_uses: tuple[str, ...] = ("Workload", "Tunnel")


@register
@dataclass(frozen=True, slots=True)
class IPPool(Resource):
    KIND = KindInfo("IPPool", TABBY_GROUP, "v1", "ippools", namespaced=False,
                    aliases=(CALICO_API,), short_names=("ippool", "pool", "pools"))
    SCHEMA: ClassVar[KindSchema] = KindSchema(
        spec=obj({
            "cidr": string("The pool's range, without host bits (198.19.0.0/16)."),
            "blockSize": integer("Prefix length of the blocks handed to nodes"
                                 " (IPv4 20..32, IPv6 116..128).", minimum=20, maximum=128),
            "vxlanMode": string("VXLAN encapsulation.", enum=ENCAP_MODES),
            "ipipMode": string("IP-in-IP encapsulation (IPv4 only).", enum=ENCAP_MODES),
            "natOutgoing": boolean("Masquerade traffic leaving the pool's range."),
            "disabled": boolean("No new addresses from this pool."),
            "disableBGPExport": boolean("Do not advertise the pool's routes over BGP."),
            "nodeSelector": string("Which nodes take blocks from this pool (a selector)."),
            "allowedUses": array(string(enum=USES), "Workload, Tunnel or LoadBalancer."),
            "assignmentMode": string("Accepted for Calico compatibility; not used."),
        }, required=["cidr"]),
        # Calico writes a status; the model accepts and drops it, so the API server keeps it
        # out of the object (a status subresource) and does not check its shape.
        status=free_form("Written by Calico; tabby neither writes nor reads it."),
        columns=(Column("CIDR", ".spec.cidr"), Column("Block", ".spec.blockSize", "integer"),
                 Column("VXLAN", ".spec.vxlanMode"), Column("IPIP", ".spec.ipipMode"),
                 Column("NAT", ".spec.natOutgoing", "boolean"),
                 Column("Disabled", ".spec.disabled", "boolean"),
                 Column("Selector", ".spec.nodeSelector", priority=1)),
    )
    meta: ObjectMeta
    spec: IPPoolSpec

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        cidr_text = f.str("cidr", required=True)
        cidr = parse_cidr(f, "cidr", cidr_text) if cidr_text else None
        version = cidr.version if cidr else 4
        low, high = BLOCK_RANGE[version]
        block_size = f.int("blockSize", DEFAULT_BLOCK[version])
        assert block_size is not None
        if not low <= block_size <= high:
            f.error("blockSize", f"{block_size} is outside {low}..{high}")
        elif cidr is not None and block_size < cidr.prefixlen:
            f.error("blockSize", f"{block_size} is larger than the pool {cidr} itself")
        vxlan = f.choice("vxlanMode", ENCAP_MODES, "Never")
        ipip = f.choice("ipipMode", ENCAP_MODES, "Never")
        if vxlan != "Never" and ipip != "Never":
            f.error("ipipMode", "cannot be combined with vxlanMode on one pool")
        if version == 6 and ipip != "Never":
            f.error("ipipMode", "IP-in-IP carries IPv4 only; use vxlanMode for an IPv6 pool")
        node_selector = f.str("nodeSelector", "all()") or "all()"
        try:
            selector.parse(node_selector)
        except selector.SelectorError as exc:
            f.error("nodeSelector", str(exc))
        uses = tuple(f.str_list("allowedUses")) if f.has("allowedUses") else ("Workload", "Tunnel")
        for use in uses:
            if use not in USES:
                f.error("allowedUses", f"{use!r} is not one of {', '.join(USES)}")
        if "LoadBalancer" in uses and len(set(uses)) > 1:
            f.error("allowedUses", "LoadBalancer cannot be combined with other uses")
        if "LoadBalancer" in uses and vxlan != "Never":
            f.error("vxlanMode", "must be Never for a LoadBalancer pool")
        nat = f.bool("natOutgoing")
        disabled = f.bool("disabled")
        no_export = f.bool("disableBGPExport")
        f.raw("assignmentMode")  # accepted for Calico compatibility (Automatic)
        f.finish()
        top.raw("status")
        spec = IPPoolSpec(
            cidr=cidr or ipaddress.ip_network("0.0.0.0/32"),
            block_size=block_size,
            vxlan_mode=vxlan,
            ipip_mode=ipip,
            nat_outgoing=nat,
            disabled=disabled,
            disable_bgp_export=no_export,
            node_selector=node_selector,
            allowed_uses=uses,
        )
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        s = self.spec
        return {"spec": {
            "cidr": str(s.cidr),
            "blockSize": s.block_size,
            "vxlanMode": s.vxlan_mode,
            "ipipMode": s.ipip_mode,
            "natOutgoing": s.nat_outgoing,
            "disabled": s.disabled,
            "disableBGPExport": s.disable_bgp_export,
            "nodeSelector": s.node_selector,
            "allowedUses": list(s.allowed_uses),
        }}

    def validate_update(self, old: Self) -> None:
        errors = []
        if old.spec.cidr != self.spec.cidr:
            errors.append(FieldError("spec.cidr", f"is immutable (was {old.spec.cidr})"))
        if old.spec.block_size != self.spec.block_size:
            errors.append(FieldError(
                "spec.blockSize", f"is immutable (was {old.spec.block_size});"
                " create a new pool and disable this one to migrate"))
        if errors:
            raise ValidationError(self.ref, errors)

    @property
    def version(self) -> int:
        return self.spec.cidr.version

    def selects(self, node_labels: dict[str, str]) -> bool:
        return selector.parse(self.spec.node_selector).matches(node_labels)

    def usable_for(self, use: str) -> bool:
        return use in self.spec.allowed_uses and not self.spec.disabled


def parse_cidr(f: Fields, name: str, text: str) -> IPNetwork | None:
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            f.error(name, f"{text!r} is not a CIDR")
            return None
        f.error(name, f"{text!r} has host bits set; did you mean {loose}?")
        return None
    if net.prefixlen == 0:
        f.error(name, f"{net} covers the whole address space")
        return None
    for ll in LINK_LOCAL:
        if net.version == ll.version and net.overlaps(ll):
            f.error(name, f"{net} overlaps the link-local range {ll}")
            return None
    return net


def check_pools(pool: IPPool, others: Iterable[IPPool]) -> None:
    """Cross-pool rule: ``pool`` overlaps none of ``others``; ValidationError naming both."""
    for other in others:
        if other.meta.name == pool.meta.name or other.version != pool.version:
            continue
        if pool.spec.cidr.overlaps(other.spec.cidr):
            raise ValidationError(pool.ref, [FieldError(
                "spec.cidr", f"{pool.spec.cidr} overlaps IPPool/{other.meta.name}"
                f" ({other.spec.cidr})")])
