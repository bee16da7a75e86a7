"""Staged policies: Calico's ``StagedNetworkPolicy``, ``StagedGlobalNetworkPolicy`` and
``StagedKubernetesNetworkPolicy``, stored and evaluated but never enforced.

Each is its enforced counterpart's spec (``tabby.model.policy``, ``tabby.model.k8spolicy``)
plus ``stagedAction``:

- ``Set`` (the default): "what if this policy were in place?" The staged policy takes
  the place of the enforced policy of the same kind, namespace and name (or joins the
  policies when there is none);
- ``Delete``: "what if that enforced policy were gone?" Only the name counts; the rest
  of the spec may be empty.

Nothing renders a staged policy into nftables. The agent evaluates every flow it
records a second time, with the staged policies in place (``tabby.policy.staged``), and
the record says what they would have decided; ``tabby policy whatif`` does the same for
a proposed policy over stored flows. ``enforced()`` gives the counterpart object both
start from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.k8spolicy import K8sNetworkPolicy, K8sPolicySpec
from tabby.model.policy import (
    GlobalNetworkPolicy,
    NetworkPolicy,
    PolicySpec,
    parse_spec,
    policy_schema,
)
from tabby.model.schema import (
    Column,
    KindSchema,
    Schema,
    array,
    int_or_string,
    integer,
    obj,
    string,
    string_map,
)

STAGED_ACTIONS = ("Set", "Delete")
_ACTION = string("Set (the default): evaluate this policy in place of its enforced"
                 " counterpart; Delete: evaluate as if the counterpart were gone.",
                 enum=STAGED_ACTIONS)


def _staged_schema(base: KindSchema) -> KindSchema:
    spec = dict(base.spec)
    spec["properties"] = {"stagedAction": _ACTION, **base.spec["properties"]}
    return KindSchema(spec=spec, columns=(Column("Action", ".spec.stagedAction"),
                                          *base.columns))


def _action(f: Fields) -> str:
    return f.choice("stagedAction", STAGED_ACTIONS, "Set")


@register
@dataclass(frozen=True, slots=True)
class StagedNetworkPolicy(Resource):
    """A namespaced tabby (Calico) policy, staged: ``stagednetworkpolicy.tabby.dev``."""

    KIND = KindInfo("StagedNetworkPolicy", TABBY_GROUP, "v1", "stagednetworkpolicies",
                    namespaced=True, aliases=(CALICO_API,), short_names=("snp",))
    SCHEMA: ClassVar[KindSchema] = _staged_schema(policy_schema(global_=False))
    meta: ObjectMeta
    spec: PolicySpec = field(default_factory=PolicySpec)
    staged_action: str = "Set"

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        action = _action(f)
        return cls(meta=meta, spec=parse_spec(f, global_=False), staged_action=action)

    def body(self) -> dict[str, Any]:
        return {"spec": {"stagedAction": self.staged_action,
                         **self.spec.to_dict(global_=False)}}

    def enforced(self) -> NetworkPolicy:
        return NetworkPolicy(meta=self.meta, spec=self.spec)


@register
@dataclass(frozen=True, slots=True)
class StagedGlobalNetworkPolicy(Resource):
    KIND = KindInfo("StagedGlobalNetworkPolicy", TABBY_GROUP, "v1",
                    "stagedglobalnetworkpolicies", namespaced=False, aliases=(CALICO_API,),
                    short_names=("sgnp",))
    SCHEMA: ClassVar[KindSchema] = _staged_schema(policy_schema(global_=True))
    meta: ObjectMeta
    spec: PolicySpec = field(default_factory=PolicySpec)
    staged_action: str = "Set"

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        action = _action(f)
        return cls(meta=meta, spec=parse_spec(f, global_=True), staged_action=action)

    def body(self) -> dict[str, Any]:
        return {"spec": {"stagedAction": self.staged_action,
                         **self.spec.to_dict(global_=True)}}

    def enforced(self) -> GlobalNetworkPolicy:
        return GlobalNetworkPolicy(meta=self.meta, spec=self.spec)


# -- the staged form of Kubernetes' NetworkPolicy ---------------------------------------

def _label_selector(what: str) -> Schema:
    return obj({
        "matchLabels": string_map("Labels the object must carry."),
        "matchExpressions": array(obj({
            "key": string("A label key."),
            "operator": string("In, NotIn, Exists, DoesNotExist.",
                               enum=("In", "NotIn", "Exists", "DoesNotExist")),
            "values": array(string(), "Values for In and NotIn."),
        }, required=["key", "operator"]), "Requirements on the labels."),
    }, what)


def _peer_schema() -> Schema:
    return obj({
        "podSelector": _label_selector("Pods (of the policy's namespace, or of"
                                       " namespaceSelector's)."),
        "namespaceSelector": _label_selector("Namespaces by label."),
        "ipBlock": obj({"cidr": string("A CIDR."),
                        "except": array(string(), "CIDRs inside cidr left out.")},
                       "Addresses.", required=["cidr"]),
    }, "A peer.")


def _k8s_rule(peer_key: str) -> Schema:
    return obj({
        peer_key: array(_peer_schema(), "Peers (absent: every peer)."),
        "ports": array(obj({
            "protocol": string("TCP (default), UDP or SCTP.", enum=("TCP", "UDP", "SCTP")),
            "port": int_or_string("A port number or a container port's name."),
            "endPort": integer("The last port of a range.", minimum=1, maximum=65535),
        }), "Ports (absent: every port)."),
    })


K8S_SCHEMA = KindSchema(spec=obj({
    "stagedAction": _ACTION,
    "podSelector": _label_selector("The pods of the namespace the policy applies to."),
    "policyTypes": array(string(enum=("Ingress", "Egress")), "Ingress, Egress."),
    "ingress": array(_k8s_rule("from"), "Rules for traffic into the pods."),
    "egress": array(_k8s_rule("to"), "Rules for traffic out of the pods."),
}), columns=(Column("Action", ".spec.stagedAction"),))


@register
@dataclass(frozen=True, slots=True)
class StagedKubernetesNetworkPolicy(Resource):
    """Kubernetes' NetworkPolicy, staged (Calico's kind, served by tabby's group)."""

    KIND = KindInfo("StagedKubernetesNetworkPolicy", TABBY_GROUP, "v1",
                    "stagedkubernetesnetworkpolicies", namespaced=True, aliases=(CALICO_API,),
                    short_names=("sknp",))
    SCHEMA: ClassVar[KindSchema] = K8S_SCHEMA
    meta: ObjectMeta
    spec: K8sPolicySpec = field(default_factory=K8sPolicySpec)
    staged_action: str = "Set"

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        action = _action(f)
        rest = {k: v for k, v in f.data.items() if k != "stagedAction"}
        if action == "Delete":
            rest.setdefault("podSelector", {})  # Delete names its target; no spec needed
        inner = Fields({"spec": rest}, top.path, top.errors)
        parsed = K8sNetworkPolicy.parse_body(meta, inner)
        inner.finish()
        return cls(meta=meta, spec=parsed.spec, staged_action=action)

    def body(self) -> dict[str, Any]:
        spec = self.enforced().body()["spec"]
        return {"spec": {"stagedAction": self.staged_action, **spec}}

    def enforced(self) -> K8sNetworkPolicy:
        return K8sNetworkPolicy(meta=self.meta, spec=self.spec)


StagedPolicy = StagedNetworkPolicy | StagedGlobalNetworkPolicy | StagedKubernetesNetworkPolicy
STAGED_KINDS: tuple[type[Resource], ...] = (StagedNetworkPolicy, StagedGlobalNetworkPolicy,
                                            StagedKubernetesNetworkPolicy)
