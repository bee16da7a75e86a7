"""``Tier``: an ordered group of policies with a default action, Calico v3 shaped.

apiVersion ``tabby.dev/v1`` (``projectcalico.org/v3`` accepted), cluster-scoped.
``spec.order``: lower tiers apply first; Calico's client fills an absent order with
1000000 (the default tier's, ``DefaultTierFields``), and so does tabby, so ties
with ``default`` break by name. ``spec.defaultAction``: ``Deny`` (the default) or
``Pass``: what happens to traffic of an endpoint that at least one of the tier's
policies selects when no rule of the tier decided.

The built-in tiers (``BUILTIN_TIERS``) always exist, stored or not, exactly as
Calico 3.30+ has them (``api/pkg/apis/projectcalico/v3/tier.go``)::

    kube-admin      order 1000      Pass   ClusterNetworkPolicy, tier Admin
    default         order 1000000   Deny   NetworkPolicy, GlobalNetworkPolicy,
                                           Kubernetes NetworkPolicy (order 1000)
    kube-baseline   order 10000000  Pass   ClusterNetworkPolicy, tier Baseline

A stored Tier of a built-in name must say what the built-in says (Calico's CEL
rules); none of them can be deleted, nor can a tier that still holds policies
(``tabby.store.client``). Names are one DNS label (no dots: Calico puts tier
names inside other names).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Self

from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.schema import Column, KindSchema, free_form, number, obj, string

DEFAULT_TIER = "default"
KUBE_ADMIN_TIER = "kube-admin"
KUBE_BASELINE_TIER = "kube-baseline"
DEFAULT_TIER_ORDER = 1_000_000.0
ACTIONS = ("Deny", "Pass")
TIER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
TIER_NAME_MAX = 63


@dataclass(frozen=True, slots=True)
class TierSpec:
    order: float = DEFAULT_TIER_ORDER
    default_action: str = "Deny"  # Deny | Pass

    def to_dict(self) -> dict[str, Any]:
        order = int(self.order) if self.order == int(self.order) else self.order
        return {"order": order, "defaultAction": self.default_action}


BUILTIN_TIERS: Mapping[str, TierSpec] = MappingProxyType({
    KUBE_ADMIN_TIER: TierSpec(1_000.0, "Pass"),
    DEFAULT_TIER: TierSpec(DEFAULT_TIER_ORDER, "Deny"),
    KUBE_BASELINE_TIER: TierSpec(10_000_000.0, "Pass"),
})


def check_tier_name(f: Fields, field: str, name: str) -> None:
    """A tier name: one DNS label of at most 63 characters."""
    if len(name) > TIER_NAME_MAX or not TIER_NAME.fullmatch(name):
        f.error(field, f"{name!r} is not a valid tier name (one DNS label: lower-case"
                       " letters, digits and '-', at most 63, no dots)")


@register
@dataclass(frozen=True, slots=True)
class Tier(Resource):
    KIND = KindInfo("Tier", TABBY_GROUP, "v1", "tiers", namespaced=False,
                    aliases=(CALICO_API,))
    SCHEMA: ClassVar[KindSchema] = KindSchema(
        spec=obj({
            "order": number("Lower tiers apply first (default 1000000, the default tier's;"
                            " ties by name)."),
            "defaultAction": string("What happens when the tier's policies select an endpoint"
                                    " and none decides: Deny (default) or Pass.",
                                    enum=ACTIONS),
        }),
        # Calico writes a status (conditions); the model accepts and drops it.
        status=free_form("Written by Calico; tabby neither writes nor reads it."),
        columns=(Column("Order", ".spec.order", "number"),
                 Column("DefaultAction", ".spec.defaultAction")),
    )
    meta: ObjectMeta
    spec: TierSpec = TierSpec()

    @classmethod
    def name_pattern(cls) -> re.Pattern[str] | None:
        return TIER_NAME

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        order = DEFAULT_TIER_ORDER
        value = f.raw("order")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                f.error("order", f"must be a number, not {type(value).__name__}")
            else:
                order = float(value)
        action = f.choice("defaultAction", ACTIONS, "Deny")
        f.finish()
        top.raw("status")
        spec = TierSpec(order, action)
        if meta.name and len(meta.name) > TIER_NAME_MAX:
            top.error("metadata.name", f"is longer than {TIER_NAME_MAX} characters")
        builtin = BUILTIN_TIERS.get(meta.name)
        if builtin is not None and spec != builtin:
            top.error("spec", f"the built-in tier {meta.name!r} has order"
                              f" {builtin.to_dict()['order']} and defaultAction"
                              f" {builtin.default_action}; it cannot be changed")
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict()}


def builtin_tiers() -> tuple[Tier, ...]:
    """The built-in tiers as objects (what ``tabby get tiers`` shows when not stored)."""
    return tuple(Tier(ObjectMeta(name=name), spec) for name, spec in BUILTIN_TIERS.items())


def tier_specs(stored: Iterable[Tier]) -> dict[str, TierSpec]:
    """Every tier that exists: the built-ins, and the stored ones (which win)."""
    out = dict(BUILTIN_TIERS)
    for tier in stored:
        out[tier.meta.name] = tier.spec
    return out
