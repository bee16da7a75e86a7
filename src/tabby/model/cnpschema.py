"""The CRD schema of ``ClusterNetworkPolicy`` (``tabby.model.clusternetworkpolicy``).

Upstream's CRD (network-policy-api, config/crd/experimental) in shape: the same fields,
bounds, exactly-one-of objects (``minProperties``/``maxProperties``) and CEL rules
(``isCIDR``, ``start < end``, no named ports towards nodes or networks), built with
``tabby.model.schema``'s helpers plus those keywords. ``domainNames`` is left out: the
model refuses it, so the API server prunes or (strict) refuses it too.
"""

from __future__ import annotations

from tabby.model.schema import Column, KindSchema, Schema, array, integer, obj, string

TIERS = ("Admin", "Baseline")
ACTIONS = ("Accept", "Deny", "Pass")
MAX_ITEMS = 25


def _exactly_one(schema: Schema) -> Schema:
    return {**schema, "minProperties": 1, "maxProperties": 1}


def _bounded(schema: Schema, low: int = 1) -> Schema:
    return {**schema, "minItems": low, "maxItems": MAX_ITEMS}


def _label_selector() -> Schema:
    requirement = obj({"key": string(), "operator": string(),
                       "values": {**array(string()), "x-kubernetes-list-type": "atomic"}},
                      required=("key", "operator"))
    return {**obj({"matchExpressions": {**array(requirement), "x-kubernetes-list-type": "atomic"},
                   "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                  "A label selector (matchLabels AND matchExpressions; empty: everything)."),
            "x-kubernetes-map-type": "atomic"}


def _port_schema() -> Schema:
    number = integer("A port number.", minimum=1, maximum=65535)
    span = {**obj({"start": number, "end": number}, "An inclusive port range.",
                  required=("start", "end")),
            "x-kubernetes-validations": [{"rule": "self.start < self.end",
                                          "message": "Start port must be less than End port"}]}
    port = _exactly_one(obj({"number": number, "range": span}, "A port or a range."))
    return {**obj({"destinationPort": port}), "minProperties": 1}


def _protocols() -> Schema:
    entry = _exactly_one(obj({
        "tcp": _port_schema(), "udp": _port_schema(), "sctp": _port_schema(),
        "destinationNamedPort": string("A container port's name (pods peers only)."),
    }, "One protocol match: exactly one field."))
    return _bounded(array(entry, "Protocol and port matches (absent: everything)."))


def _peer(egress: bool) -> Schema:
    pods = obj({"namespaceSelector": _label_selector(), "podSelector": _label_selector()},
               "Pods matching podSelector in namespaces matching namespaceSelector.",
               required=("podSelector",))
    fields: dict[str, Schema] = {"namespaces": _label_selector(), "pods": pods}
    if egress:
        cidr = {**string(max_length=43), "x-kubernetes-validations": [
            {"rule": "isCIDR(self)", "message": "Invalid CIDR format provided"}]}
        fields |= {"nodes": _label_selector(),
                   "networks": {**_bounded(array(cidr, "CIDRs.")),
                                "x-kubernetes-list-type": "set"}}
    return _exactly_one(obj(fields, "A peer: exactly one field."))


def _rule(egress: bool) -> Schema:
    key = "to" if egress else "from"
    out = obj({"name": string("A name for observability.", max_length=100),
               "action": string("Accept, Deny or Pass.", enum=ACTIONS),
               key: _bounded(array(_peer(egress))),
               "protocols": _protocols()}, required=("action", key))
    if egress:
        out["x-kubernetes-validations"] = [{
            "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes)) &&"
                    " has(self.protocols) &&"
                    " self.protocols.exists(protocol, has(protocol.destinationNamedPort)))",
            "message": "networks/nodes peer cannot be set with namedPorts since there are"
                       " no namedPorts for networks/nodes"}]
    return out


def _status() -> Schema:
    condition = obj({"type": string(), "status": string(), "reason": string(),
                     "message": string(), "lastTransitionTime": string(),
                     "observedGeneration": integer(minimum=0, maximum=2**63 - 1)},
                    required=("type", "status"))
    return obj({"conditions": {**array(condition), "x-kubernetes-list-type": "map",
                               "x-kubernetes-list-map-keys": ["type"]}},
               "Written by implementations; tabby neither writes nor reads it.")


def cnp_schema() -> KindSchema:
    subject = _exactly_one(obj({
        "namespaces": _label_selector(),
        "pods": obj({"namespaceSelector": _label_selector(), "podSelector": _label_selector()},
                    required=("podSelector",)),
    }, "The pods the policy applies to: exactly one field."))
    spec = obj({
        "tier": string("Admin (before NetworkPolicy) or Baseline (after).", enum=TIERS),
        "priority": integer("0..1000; lower first within the tier.", minimum=0, maximum=1000),
        "subject": subject,
        "ingress": {**array(_rule(False), "Rules for traffic into the subject."),
                    "maxItems": MAX_ITEMS},
        "egress": {**array(_rule(True), "Rules for traffic out of the subject."),
                   "maxItems": MAX_ITEMS},
    }, "ClusterNetworkPolicySpec.", required=("tier", "priority", "subject"))
    return KindSchema(spec=spec, status=_status(), columns=(
        Column("Tier", ".spec.tier"), Column("Priority", ".spec.priority")))
