"""tabby's ``NetworkPolicy`` (namespaced) and ``GlobalNetworkPolicy``, Calico v3 shaped.

apiVersion ``tabby.dev/v1`` (``projectcalico.org/v3`` accepted). The spec:
``tier`` (``tabby.model.tier``; absent = ``default``), ``order`` (lower first
within the tier; absent = last), ``selector`` (which endpoints the
policy applies to), ``types`` (Ingress, Egress; defaults as Calico: Ingress
when there are no egress rules, Egress when there are only egress rules,
both when there are both), ``ingress`` / ``egress`` rules
(``tabby.model.policyrules``), ``serviceAccountSelector``; the global kind
adds ``namespaceSelector``, ``doNotTrack``, ``preDNAT`` and
``applyOnForward``.

Names as Calico 3.32+ takes them: the name is the name, with or without a
tier-like prefix (``security.allow-dns`` and ``allow-dns`` are both fine in tier
``security``), and only ``spec.tier`` places the policy. (Calico up to 3.31
required the ``<tier>.`` prefix outside the default tier; those manifests carry
``spec.tier`` too, so they apply unchanged.) The tier must exist when the policy
is written (``tabby.store.client``, as Calico's client checks).

The Kubernetes ``networking.k8s.io/v1`` NetworkPolicy is another kind
(``tabby.model.k8spolicy``); both meet in ``tabby.policy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.policyrules import RULE_SCHEMA, Rule, check_selector, parse_rules
from tabby.model.schema import (
    Column,
    KindSchema,
    Schema,
    array,
    boolean,
    number,
    obj,
    string,
)
from tabby.model.tier import DEFAULT_TIER, check_tier_name

TYPES = ("Ingress", "Egress")


@dataclass(frozen=True, slots=True)
class PolicySpec:
    order: float | None = None
    tier: str = DEFAULT_TIER
    selector: str = ""
    types: tuple[str, ...] = ("Ingress",)
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    service_account_selector: str = ""
    namespace_selector: str = ""  # GlobalNetworkPolicy only
    do_not_track: bool = False
    pre_dnat: bool = False
    apply_on_forward: bool = False

    def to_dict(self, *, global_: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"tier": self.tier}
        if self.order is not None:
            out["order"] = int(self.order) if self.order == int(self.order) else self.order
        out["selector"] = self.selector or "all()"
        if self.service_account_selector:
            out["serviceAccountSelector"] = self.service_account_selector
        if global_ and self.namespace_selector:
            out["namespaceSelector"] = self.namespace_selector
        out["types"] = list(self.types)
        if self.ingress:
            out["ingress"] = [r.to_dict() for r in self.ingress]
        if self.egress:
            out["egress"] = [r.to_dict() for r in self.egress]
        if global_:
            for key, value in (("doNotTrack", self.do_not_track), ("preDNAT", self.pre_dnat),
                               ("applyOnForward", self.apply_on_forward)):
                if value:
                    out[key] = True
        return out


def policy_schema(*, global_: bool) -> KindSchema:
    """The spec as ``parse_spec(global_=...)`` reads it."""
    fields: dict[str, Schema] = {
        "tier": string("The tier the policy belongs to (default: default); it must exist."),
        "order": number("Lower orders apply first within the tier; absent means last."),
        "selector": string("The endpoints this policy applies to (a selector)."),
        "serviceAccountSelector": string("Endpoints by service account labels (a selector)."),
        "types": array(string(enum=TYPES), "Ingress, Egress (default from the rules)."),
        "ingress": array(RULE_SCHEMA, "Rules for traffic into the endpoints."),
        "egress": array(RULE_SCHEMA, "Rules for traffic out of the endpoints."),
        "performanceHints": array(string(), "Accepted for Calico compatibility; not used."),
    }
    if global_:
        fields |= {
            "namespaceSelector": string("The namespaces whose endpoints apply (a selector)."),
            "doNotTrack": boolean("Apply before connection tracking (needs applyOnForward)."),
            "preDNAT": boolean("Apply before DNAT (needs applyOnForward)."),
            "applyOnForward": boolean("Apply to forwarded traffic of host endpoints."),
        }
    return KindSchema(spec=obj(fields), columns=(
        Column("Order", ".spec.order", "number"), Column("Selector", ".spec.selector"),
        Column("Types", ".spec.types", priority=1)))


def default_types(ingress: tuple[Rule, ...], egress: tuple[Rule, ...]) -> tuple[str, ...]:
    """Calico's defaults when ``types`` is absent."""
    if egress and ingress:
        return ("Ingress", "Egress")
    if egress:
        return ("Egress",)
    return ("Ingress",)


def parse_spec(f: Fields, *, global_: bool) -> PolicySpec:
    tier = f.str("tier", DEFAULT_TIER) or DEFAULT_TIER
    check_tier_name(f, "tier", tier)
    order = _order(f)
    sel = f.str("selector").strip() or "all()"  # empty: every endpoint, as written back
    check_selector(f, "selector", sel)
    sa_sel = f.str("serviceAccountSelector").strip()
    if sa_sel:
        check_selector(f, "serviceAccountSelector", sa_sel)
    ns_sel = ""
    if global_:
        ns_sel = f.str("namespaceSelector").strip()
        if ns_sel:
            check_selector(f, "namespaceSelector", ns_sel)
    ingress = parse_rules(f, "ingress")
    egress = parse_rules(f, "egress")
    types = _types(f, ingress, egress)
    dnt = pre = forward = False
    if global_:
        dnt = f.bool("doNotTrack")
        pre = f.bool("preDNAT")
        forward = f.bool("applyOnForward")
        if dnt and pre:
            f.error("preDNAT", "cannot be combined with doNotTrack")
        if (dnt or pre) and not forward:
            f.error("applyOnForward", "must be true for doNotTrack and preDNAT policies")
        if pre and (egress or "Egress" in types):
            f.error("egress", "preDNAT policies have ingress rules only")
    f.raw("performanceHints")
    f.finish()
    return PolicySpec(order=order, tier=tier, selector=sel, types=types, ingress=ingress,
                      egress=egress,
                      service_account_selector=sa_sel, namespace_selector=ns_sel,
                      do_not_track=dnt, pre_dnat=pre, apply_on_forward=forward)


def _order(f: Fields) -> float | None:
    value = f.raw("order")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        f.error("order", f"must be a number, not {type(value).__name__}")
        return None
    return float(value)


def _types(f: Fields, ingress: tuple[Rule, ...], egress: tuple[Rule, ...]) -> tuple[str, ...]:
    if not f.has("types"):
        f.raw("types")
        return default_types(ingress, egress)
    types = f.str_list("types")
    for t in types:
        if t not in TYPES:
            f.error("types", f"{t!r} is not one of Ingress, Egress")
    if len(set(types)) != len(types):
        f.error("types", "lists a type twice")
    if ingress and "Ingress" not in types:
        f.error("ingress", "has rules but types does not list Ingress")
    if egress and "Egress" not in types:
        f.error("egress", "has rules but types does not list Egress")
    return tuple(t for t in TYPES if t in types)


@register
@dataclass(frozen=True, slots=True)
class NetworkPolicy(Resource):
    """tabby's (Calico's) namespaced policy: ``networkpolicy.tabby.dev``."""

    KIND = KindInfo("NetworkPolicy", TABBY_GROUP, "v1", "networkpolicies", namespaced=True,
                    aliases=(CALICO_API,), short_names=("tnp",))
    SCHEMA: ClassVar[KindSchema] = policy_schema(global_=False)
    meta: ObjectMeta
    spec: PolicySpec = PolicySpec()

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        return cls(meta=meta, spec=parse_spec(top.map("spec"), global_=False))

    def body(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(global_=False)}


@register
@dataclass(frozen=True, slots=True)
class GlobalNetworkPolicy(Resource):
    KIND = KindInfo("GlobalNetworkPolicy", TABBY_GROUP, "v1", "globalnetworkpolicies",
                    namespaced=False, aliases=(CALICO_API,), short_names=("gnp",))
    SCHEMA: ClassVar[KindSchema] = policy_schema(global_=True)
    meta: ObjectMeta
    spec: PolicySpec = PolicySpec()

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        return cls(meta=meta, spec=parse_spec(top.map("spec"), global_=True))

    def body(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(global_=True)}
