"""Kubernetes' ``ClusterNetworkPolicy`` (``policy.networking.k8s.io/v1alpha2``), as upstream has it.

The kind of github.com/kubernetes-sigs/network-policy-api (apis/v1alpha2), which
replaced AdminNetworkPolicy and BaselineAdminNetworkPolicy. Cluster-scoped;
``spec``:

- ``tier``: ``Admin`` (evaluated before the namespaced NetworkPolicies) or
  ``Baseline`` (after them); ``priority`` 0..1000, lower first within the tier;
- ``subject``: exactly one of ``namespaces`` (a LabelSelector: every pod of
  those namespaces) or ``pods`` (``namespaceSelector`` AND ``podSelector``);
- ``ingress`` / ``egress``: at most 25 rules each, in precedence order, each
  with ``action`` (``Accept``, ``Deny``, ``Pass``), an optional ``name``,
  ``from`` / ``to`` peers (1..25, each exactly one of ``namespaces``,
  ``pods``; egress also ``nodes`` (a LabelSelector over Nodes: their
  addresses) and ``networks`` (1..25 CIDRs)) and optional ``protocols`` (1..25
  entries, each exactly one of ``tcp`` / ``udp`` / ``sctp`` with a
  ``destinationPort`` (``number``, or ``range`` with ``start < end``) or
  ``destinationNamedPort``, a container port's name).

Validation follows the upstream CRD's (bounds, exactly-one-of, the CEL rules:
valid CIDRs, ``start < end``, no named ports towards nodes or networks).
``domainNames`` (experimental upstream) is refused: honouring it needs DNS
interception, which tabby has not. ``status`` is the implementation's; kept as
written. ``SCHEMA`` is the CRD's shape (``tabby.kube.crds``); the semantics live
in ``tabby.policy.clusternetworkpolicy``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from tabby.errors import FieldError
from tabby.model.base import KindInfo, ObjectMeta, Resource, register
from tabby.model.cnpschema import ACTIONS, MAX_ITEMS, TIERS, cnp_schema
from tabby.model.fields import Fields
from tabby.model.k8spolicy import LabelSelector, parse_label_selector
from tabby.model.schema import KindSchema

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

GROUP = "policy.networking.k8s.io"
VERSION = "v1alpha2"
PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class NamespacedPod:
    namespace_selector: LabelSelector = field(default_factory=LabelSelector)
    pod_selector: LabelSelector = field(default_factory=LabelSelector)

    def to_dict(self) -> dict[str, Any]:
        return {"namespaceSelector": self.namespace_selector.to_dict(),
                "podSelector": self.pod_selector.to_dict()}


@dataclass(frozen=True, slots=True)
class CNPPeer:
    """One ``from`` / ``to`` entry: exactly one field is set."""

    namespaces: LabelSelector | None = None
    pods: NamespacedPod | None = None
    nodes: LabelSelector | None = None  # egress only
    networks: tuple[IPNetwork, ...] = ()  # egress only

    def to_dict(self) -> dict[str, Any]:
        if self.namespaces is not None:
            return {"namespaces": self.namespaces.to_dict()}
        if self.pods is not None:
            return {"pods": self.pods.to_dict()}
        if self.nodes is not None:
            return {"nodes": self.nodes.to_dict()}
        return {"networks": [str(n) for n in self.networks]}


@dataclass(frozen=True, slots=True)
class CNPPort:
    """One ``protocols`` entry: a protocol's port or range, or a named port (any protocol)."""

    protocol: str = ""  # TCP | UDP | SCTP; "" for destinationNamedPort
    low: int = 0
    high: int = 0
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        if self.name:
            return {"destinationNamedPort": self.name}
        port: dict[str, Any] = ({"number": self.low} if self.low == self.high
                                else {"range": {"start": self.low, "end": self.high}})
        return {self.protocol.lower(): {"destinationPort": port}}


@dataclass(frozen=True, slots=True)
class CNPRule:
    action: str
    peers: tuple[CNPPeer, ...]
    protocols: tuple[CNPPort, ...] = ()  # empty: every protocol and port
    name: str = ""

    def to_dict(self, peer_key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out["action"] = self.action
        out[peer_key] = [p.to_dict() for p in self.peers]
        if self.protocols:
            out["protocols"] = [p.to_dict() for p in self.protocols]
        return out


@dataclass(frozen=True, slots=True)
class CNPSpec:
    tier: str = "Admin"
    priority: int = 0
    namespaces: LabelSelector | None = None  # subject: exactly one of these two
    pods: NamespacedPod | None = None
    ingress: tuple[CNPRule, ...] = ()
    egress: tuple[CNPRule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        subject = ({"namespaces": self.namespaces.to_dict()} if self.namespaces is not None
                   else {"pods": (self.pods or NamespacedPod()).to_dict()})
        out: dict[str, Any] = {"tier": self.tier, "priority": self.priority, "subject": subject}
        if self.ingress:
            out["ingress"] = [r.to_dict("from") for r in self.ingress]
        if self.egress:
            out["egress"] = [r.to_dict("to") for r in self.egress]
        return out


# -- the kind -----------------------------------------------------------------------------

@register
@dataclass(frozen=True, slots=True)
class ClusterNetworkPolicy(Resource):
    KIND = KindInfo("ClusterNetworkPolicy", GROUP, VERSION, "clusternetworkpolicies",
                    namespaced=False, short_names=("cnp",))
    SCHEMA: ClassVar[KindSchema] = cnp_schema()
    meta: ObjectMeta
    spec: CNPSpec = CNPSpec()
    status: Mapping[str, Any] = field(default_factory=dict)  # as written

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        if not top.has("spec"):
            top.error("spec", "is required (tier, priority, subject)")
        f = top.map("spec")
        tier = f.str("tier", required=True)
        if tier and tier not in TIERS:
            f.error("tier", f"{tier!r} is not one of Admin, Baseline")
        priority = f.int("priority", required=True)
        if priority is not None and not 0 <= priority <= 1000:
            f.error("priority", f"{priority} is outside 0..1000")
        namespaces, pods = _subject(f)
        ingress = _rules(f, "ingress", egress=False)
        egress = _rules(f, "egress", egress=True)
        f.finish()
        status = top.raw("status")
        if status is not None and not isinstance(status, Mapping):
            top.error("status", "must be a mapping")
        spec = CNPSpec(tier, priority or 0, namespaces, pods, ingress, egress)
        return cls(meta=meta, spec=spec, status=dict(status or {}))

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"spec": self.spec.to_dict()}
        if self.status:
            out["status"] = dict(self.status)
        return out


def _one_of(f: Fields, keys: tuple[str, ...], what: str) -> str | None:
    """The one key of ``keys`` that ``f`` sets; an error naming them when none or several."""
    present = [k for k in keys if k in f.data]
    if len(present) != 1:
        listed = ", ".join(keys)
        problem = "sets none" if not present else f"sets {', '.join(present)}"
        f.error("", f"{what} needs exactly one of {listed}; this {problem}")
        return None
    return present[0]


def _subject(spec: Fields) -> tuple[LabelSelector | None, NamespacedPod | None]:
    if not spec.has("subject"):
        spec.error("subject", "is required (namespaces or pods)")
    f = spec.map("subject")
    chosen = _one_of(f, ("namespaces", "pods"), "a subject") if spec.has("subject") else None
    namespaces = parse_label_selector(f.map("namespaces")) if chosen == "namespaces" else None
    pods = _namespaced_pod(f.map("pods")) if chosen == "pods" else None
    f.raw("namespaces")
    f.raw("pods")
    f.finish()
    if chosen is None:
        return None, NamespacedPod()
    return namespaces, pods


def _namespaced_pod(f: Fields) -> NamespacedPod:
    if not f.has("podSelector"):
        f.error("podSelector", "is required ({} selects every pod)")
    out = NamespacedPod(parse_label_selector(f.map("namespaceSelector")),
                        parse_label_selector(f.map("podSelector")))
    f.finish()
    return out


def _rules(spec: Fields, name: str, *, egress: bool) -> tuple[CNPRule, ...]:
    items = spec.list(name)
    if len(items) > MAX_ITEMS:
        spec.error(name, f"has {len(items)} rules; at most {MAX_ITEMS}")
    return tuple(_rule_of(Fields(item, path, spec.errors), egress) for path, item in items)


def _rule_of(f: Fields, egress: bool) -> CNPRule:
    rule_name = f.str("name")
    if len(rule_name) > 100:
        f.error("name", f"is {len(rule_name)} characters long; at most 100")
    action = f.str("action", required=True)
    if action and action not in ACTIONS:
        f.error("action", f"{action!r} is not one of Accept, Deny, Pass")
    key = "to" if egress else "from"
    items = f.list(key)
    if not items:
        f.error(key, "needs at least one peer")
    elif len(items) > MAX_ITEMS:
        f.error(key, f"has {len(items)} peers; at most {MAX_ITEMS}")
    peers = tuple(_peer_of(Fields(item, path, f.errors), egress) for path, item in items)
    protocols = _protocols_of(f)
    if any(p.name for p in protocols) and any(p.nodes is not None or p.networks for p in peers):
        f.error("protocols", "destinationNamedPort cannot be used with nodes or networks"
                " peers (they have no named ports)")
    f.finish()
    return CNPRule(action, peers, protocols, rule_name)


def _peer_of(f: Fields, egress: bool) -> CNPPeer:
    if "domainNames" in f.data:
        f.raw("domainNames")
        f.error("domainNames", "is not supported by tabby (it needs DNS interception);"
                " use networks with the addresses instead")
        f.finish()
        return CNPPeer(networks=())
    keys = ("namespaces", "pods", "nodes", "networks") if egress else ("namespaces", "pods")
    chosen = _one_of(f, keys, "an egress peer" if egress else "an ingress peer")
    if not egress:
        for k in ("nodes", "networks"):
            if k in f.data:
                f.raw(k)
                f.error(k, "is an egress peer only")
    peer = CNPPeer()
    if chosen == "namespaces":
        peer = CNPPeer(namespaces=parse_label_selector(f.map("namespaces")))
    elif chosen == "pods":
        peer = CNPPeer(pods=_namespaced_pod(f.map("pods")))
    elif chosen == "nodes":
        peer = CNPPeer(nodes=parse_label_selector(f.map("nodes")))
    elif chosen == "networks":
        peer = CNPPeer(networks=_networks(f))
    for k in keys:
        f.raw(k)
    f.finish()
    return peer


def _networks(f: Fields) -> tuple[IPNetwork, ...]:
    items = f.list("networks")
    if not items:
        f.error("networks", "needs at least one CIDR")
    elif len(items) > MAX_ITEMS:
        f.error("networks", f"has {len(items)} CIDRs; at most {MAX_ITEMS}")
    out: list[IPNetwork] = []
    for path, item in items:
        try:
            if not isinstance(item, str) or "/" not in item:
                raise ValueError
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            f.errors.append(FieldError(path, f"{item!r} is not a CIDR"))
            continue
        if net not in out:
            out.append(net)
    return tuple(out)


def _protocols_of(f: Fields) -> tuple[CNPPort, ...]:
    if "protocols" in f.data and not f.list("protocols"):
        f.error("protocols", "must not be empty (leave it out to match everything)")
    items = f.list("protocols")
    if len(items) > MAX_ITEMS:
        f.error("protocols", f"has {len(items)} entries; at most {MAX_ITEMS}")
    out: list[CNPPort] = []
    for path, item in items:
        p = Fields(item, path, f.errors)
        chosen = _one_of(p, ("tcp", "udp", "sctp", "destinationNamedPort"), "a protocol")
        if chosen == "destinationNamedPort":
            port_name = p.str("destinationNamedPort")
            if not (len(port_name) <= 15 and _PORT_NAME.match(port_name)
                    and any(c.isalpha() for c in port_name)):
                p.error("destinationNamedPort", f"{port_name!r} is not a port name (at most 15"
                        " lower-case letters, digits and '-', with a letter)")
            out.append(CNPPort(name=port_name))
        elif chosen is not None:
            low, high = _destination_port(p.map(chosen))
            out.append(CNPPort(PROTOCOLS[chosen], low, high))
        for k in ("tcp", "udp", "sctp", "destinationNamedPort"):
            p.raw(k)
        p.finish()
    return tuple(out)


def _destination_port(f: Fields) -> tuple[int, int]:
    if not f.has("destinationPort"):
        f.error("destinationPort", "is required (number or range)")
    d = f.map("destinationPort")
    chosen = _one_of(d, ("number", "range"), "a destinationPort") \
        if f.has("destinationPort") else None
    low = high = 0
    if chosen == "number":
        low = high = _port_number(d, "number")
    elif chosen == "range":
        r = d.map("range")
        low, high = _port_number(r, "start"), _port_number(r, "end")
        if low and high and not low < high:
            r.error("end", f"{high} must be greater than start ({low})")
        r.finish()
    d.raw("number")
    d.raw("range")
    d.finish()
    f.finish()
    return low, high


def _port_number(f: Fields, name: str) -> int:
    value = f.int(name, required=True)
    if value is not None and not 1 <= value <= 65535:
        f.error(name, f"{value} is outside 1..65535")
        return 0
    return value or 0
