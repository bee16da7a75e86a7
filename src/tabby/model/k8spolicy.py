"""Kubernetes ``networking.k8s.io/v1`` NetworkPolicy, complete.

``spec.podSelector`` (a LabelSelector: ``matchLabels`` and ``matchExpressions``
with In, NotIn, Exists, DoesNotExist), ``policyTypes`` (absent: Ingress, plus
Egress when egress rules are present), ``ingress[].from`` / ``egress[].to``
peers (``podSelector``, ``namespaceSelector``, both, or ``ipBlock`` with
``except``) and ``ports`` (``protocol`` TCP/UDP/SCTP, default TCP; ``port``
by number or container port name; ``endPort``). Validation follows the API
server's. Semantics live in ``tabby.policy.convert``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Self

from tabby.errors import FieldError
from tabby.model.base import KindInfo, ObjectMeta, Resource, check_label, register
from tabby.model.fields import Fields
from tabby.model.k8s import PROTOCOLS

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def to_selector(self) -> str:
        """The same set of labels in Calico's selector language (empty: ``all()``)."""
        parts = [f"{k} == '{v}'" for k, v in self.match_labels]
        for r in self.match_expressions:
            values = ", ".join(f"'{v}'" for v in sorted(r.values))
            parts.append({"In": f"{r.key} in {{{values}}}",
                          "NotIn": f"{r.key} not in {{{values}}}",
                          "Exists": f"has({r.key})",
                          "DoesNotExist": f"!has({r.key})"}[r.operator])
        return " && ".join(parts) or "all()"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {"key": r.key, "operator": r.operator, **({"values": list(r.values)}
                                                          if r.values else {})}
                for r in self.match_expressions]
        return out


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: IPNetwork
    except_: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class Peer:
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pod_selector is not None:
            out["podSelector"] = self.pod_selector.to_dict()
        if self.namespace_selector is not None:
            out["namespaceSelector"] = self.namespace_selector.to_dict()
        if self.ip_block is not None:
            block: dict[str, Any] = {"cidr": str(self.ip_block.cidr)}
            if self.ip_block.except_:
                block["except"] = [str(n) for n in self.ip_block.except_]
            out["ipBlock"] = block
        return out


@dataclass(frozen=True, slots=True)
class K8sPort:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol
    end_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol}
        if self.port is not None:
            out["port"] = self.port
        if self.end_port is not None:
            out["endPort"] = self.end_port
        return out


@dataclass(frozen=True, slots=True)
class K8sRule:
    peers: tuple[Peer, ...] = ()  # empty: every source (ingress) / destination (egress)
    ports: tuple[K8sPort, ...] = ()  # empty: every port and protocol


@dataclass(frozen=True, slots=True)
class K8sPolicySpec:
    pod_selector: LabelSelector = LabelSelector()
    policy_types: tuple[str, ...] = ("Ingress",)
    ingress: tuple[K8sRule, ...] = ()
    egress: tuple[K8sRule, ...] = ()


@register
@dataclass(frozen=True, slots=True)
class K8sNetworkPolicy(Resource):
    KIND = KindInfo("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies",
                    namespaced=True, short_names=("netpol",))
    meta: ObjectMeta
    spec: K8sPolicySpec = K8sPolicySpec()

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        if not f.has("podSelector"):
            f.error("podSelector", "is required ({} selects every pod of the namespace)")
        pod_selector = parse_label_selector(f.map("podSelector"))
        ingress = _rules(f, "ingress", "from")
        egress = _rules(f, "egress", "to")
        types: tuple[str, ...]
        if f.has("policyTypes"):
            listed = f.str_list("policyTypes")
            for t in listed:
                if t not in ("Ingress", "Egress"):
                    f.error("policyTypes", f"{t!r} is not one of Ingress, Egress")
            types = tuple(t for t in ("Ingress", "Egress") if t in listed)
        else:
            f.raw("policyTypes")
            types = ("Ingress", "Egress") if egress else ("Ingress",)
        f.finish()
        top.raw("status")
        return cls(meta=meta, spec=K8sPolicySpec(pod_selector, types, ingress, egress))

    def body(self) -> dict[str, Any]:
        s = self.spec
        spec: dict[str, Any] = {"podSelector": s.pod_selector.to_dict(),
                                "policyTypes": list(s.policy_types)}
        for name, rules, peer_key in (("ingress", s.ingress, "from"), ("egress", s.egress, "to")):
            if rules:
                spec[name] = [_rule_dict(r, peer_key) for r in rules]
        return {"spec": spec}


def _rule_dict(rule: K8sRule, peer_key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.peers:
        out[peer_key] = [p.to_dict() for p in rule.peers]
    if rule.ports:
        out["ports"] = [p.to_dict() for p in rule.ports]
    return out


def parse_label_selector(f: Fields) -> LabelSelector:
    labels = f.str_map("matchLabels")
    for key, value in labels.items():
        check_label(f, f"matchLabels.{key}", key, value)
    reqs = []
    for path, item in f.list("matchExpressions"):
        e = Fields(item, path, f.errors)
        key = e.str("key", required=True)
        if key:
            check_label(e, "key", key, "")
        op = e.choice("operator", OPERATORS, "In")
        values = tuple(e.str_list("values"))
        if op in ("In", "NotIn") and not values:
            e.error("values", f"must not be empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            e.error("values", f"must be empty for operator {op}")
        e.finish()
        reqs.append(Requirement(key, op, values))
    f.finish()
    return LabelSelector(tuple(sorted(labels.items())), tuple(reqs))


def _rules(f: Fields, name: str, peer_key: str) -> tuple[K8sRule, ...]:
    out = []
    for path, item in f.list(name):
        r = Fields(item, path, f.errors)
        peers = tuple(_peer(Fields(p, ppath, f.errors)) for ppath, p in r.list(peer_key))
        ports = tuple(_port(Fields(p, ppath, f.errors)) for ppath, p in r.list("ports"))
        r.finish()
        out.append(K8sRule(peers, ports))
    return tuple(out)


def _peer(f: Fields) -> Peer:
    pods = parse_label_selector(f.map("podSelector")) if f.has("podSelector") else None
    nss = (parse_label_selector(f.map("namespaceSelector"))
           if f.has("namespaceSelector") else None)
    block = _ip_block(f.map("ipBlock")) if f.has("ipBlock") else None
    for key in ("podSelector", "namespaceSelector", "ipBlock"):
        f.raw(key)
    if block is not None and (pods is not None or nss is not None):
        f.error("ipBlock", "cannot be combined with podSelector or namespaceSelector")
    if block is None and pods is None and nss is None and not f.errors:
        f.error("", "a peer needs podSelector, namespaceSelector or ipBlock")
    f.finish()
    return Peer(pods, nss, block)


def _ip_block(f: Fields) -> IPBlock | None:
    text = f.str("cidr", required=True)
    try:
        cidr = ipaddress.ip_network(text, strict=False)
    except ValueError:
        f.error("cidr", f"{text!r} is not a CIDR")
        f.finish()
        return None
    excepts = []
    for path, item in f.list("except"):
        try:
            net = ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            f.errors.append(FieldError(path, f"{item!r} is not a CIDR"))
            continue
        if net.version != cidr.version or not net.subnet_of(cidr):  # type: ignore[arg-type]
            f.errors.append(FieldError(path, f"{net} is not inside {cidr}"))
            continue
        excepts.append(net)
    f.finish()
    return IPBlock(cidr, tuple(excepts))


def _port(f: Fields) -> K8sPort:
    protocol = f.choice("protocol", PROTOCOLS, "TCP")
    raw = f.raw("port")
    port: int | str | None = None
    if isinstance(raw, bool) or (raw is not None and not isinstance(raw, int | str)):
        f.error("port", "must be a number or a port name")
    elif isinstance(raw, int):
        if not 1 <= raw <= 65535:
            f.error("port", f"{raw} is outside 1..65535")
        port = raw
    elif isinstance(raw, str):
        if raw.isdigit():
            port = int(raw)
        elif not raw or len(raw) > 15 or raw != raw.lower():
            f.error("port", f"{raw!r} is not a port name (at most 15 lower-case characters)")
        else:
            port = raw
    end = f.int("endPort")
    if end is not None:
        if not isinstance(port, int):
            f.error("endPort", "needs a numeric port")
        elif not port <= end <= 65535:
            f.error("endPort", f"{end} must be between port ({port}) and 65535")
    f.finish()
    return K8sPort(protocol, port, end)
