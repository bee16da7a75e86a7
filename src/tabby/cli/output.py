"""Rendering resources for people (tables) and scripts (json, yaml).

``-o json|yaml`` prints what kubectl prints: one object for ``get KIND NAME``
and a ``v1 List`` for lists. Tables pick a few columns per kind.
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tabby.cli import jsonpath
from tabby.errors import TabbyError
from tabby.model import (
    BGPConfiguration,
    BGPPeer,
    BlockAffinity,
    ClusterNetworkPolicy,
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    HostEndpoint,
    IPAMBlock,
    IPPool,
    IPReservation,
    K8sNetworkPolicy,
    Namespace,
    NetworkPolicy,
    NetworkSet,
    Node,
    Pod,
    Resource,
    Tier,
    WorkloadEndpoint,
)
from tabby.model.service import EndpointSlice, Service, family_name

Column = tuple[str, Callable[[Any], str]]


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")


def as_list(objs: Sequence[Resource]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": [o.to_manifest() for o in objs],
            "metadata": {"resourceVersion": ""}}


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def age(obj: Resource) -> str:
    stamp = obj.meta.creation_timestamp
    if not stamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return "<unknown>"
    secs = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _labels(obj: Resource) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(obj.meta.labels.items())) or "<none>"


def _pod_ips(pod: Pod) -> str:
    return ",".join(str(ip) for ip in pod.status.pod_ips) or "<none>"


def _ranges(nets: tuple[object, ...]) -> str:
    return ",".join(str(n) for n in nets) or "<none>"


def _order(order: float | None) -> str:
    if order is None:
        return "<none>"
    return str(int(order)) if order == int(order) else str(order)


COLUMNS: dict[type[Resource], list[Column]] = {
    K8sNetworkPolicy: [("POD-SELECTOR", lambda p: p.spec.pod_selector.to_selector())],
    NetworkPolicy: [("TIER", lambda p: p.spec.tier), ("ORDER", lambda p: _order(p.spec.order)),
                    ("SELECTOR", lambda p: p.spec.selector or "all()")],
    GlobalNetworkPolicy: [("TIER", lambda p: p.spec.tier),
                          ("ORDER", lambda p: _order(p.spec.order)),
                          ("SELECTOR", lambda p: p.spec.selector or "all()")],
    ClusterNetworkPolicy: [("TIER", lambda p: p.spec.tier),  # kubectl's columns for it
                           ("PRIORITY", lambda p: str(p.spec.priority))],
    Tier: [("ORDER", lambda t: _order(t.spec.order)),
           ("DEFAULTACTION", lambda t: t.spec.default_action)],
    HostEndpoint: [("NODE", lambda h: h.spec.node),
                   ("INTERFACE", lambda h: h.spec.interface_name or "<none>"),
                   ("IPS", lambda h: _ranges(h.spec.expected_ips))],
    NetworkSet: [("NETS", lambda n: _ranges(n.nets))],
    GlobalNetworkSet: [("NETS", lambda n: _ranges(n.nets))],
    IPReservation: [("RESERVED", lambda r: _ranges(r.reserved_cidrs))],
    BGPConfiguration: [
        ("ASN", lambda c: str(c.spec.as_number) if c.spec.as_number is not None else "64512"),
        ("MESH", lambda c: "false" if c.spec.node_to_node_mesh is False else "true"),
        ("CLUSTER-IPS", lambda c: _ranges(c.spec.service_cluster_ips)),
        ("LB-IPS", lambda c: _ranges(c.spec.service_load_balancer_ips)),
    ],
    BGPPeer: [
        ("PEER", lambda p: str(p.spec.peer_ip) if p.spec.peer_ip else p.spec.peer_selector
         or "<none>"),
        ("ASN", lambda p: str(p.spec.as_number) if p.spec.as_number is not None else "<node's>"),
        ("NODE", lambda p: p.spec.node or p.spec.node_selector or "all()"),
    ],
    IPPool: [
        ("CIDR", lambda p: str(p.spec.cidr)),
        ("BLOCKSIZE", lambda p: str(p.spec.block_size)),
        ("VXLAN", lambda p: p.spec.vxlan_mode),
        ("IPIP", lambda p: p.spec.ipip_mode),
        ("NAT", lambda p: str(p.spec.nat_outgoing).lower()),
        ("DISABLED", lambda p: str(p.spec.disabled).lower()),
        ("SELECTOR", lambda p: p.spec.node_selector),
    ],
    Node: [
        ("IPV4", lambda n: str(n.spec.bgp.ipv4_address or "")),
        ("IPV6", lambda n: str(n.spec.bgp.ipv6_address or "")),
        ("ASN", lambda n: str(n.spec.bgp.as_number or "(default)")),
    ],
    Pod: [
        ("STATUS", lambda p: p.status.phase),
        ("IP", _pod_ips),
        ("NODE", lambda p: p.node_name or "<none>"),
    ],
    Namespace: [("STATUS", lambda n: n.phase), ("LABELS", _labels)],
    WorkloadEndpoint: [
        ("POD", lambda w: w.spec.pod),
        ("NODE", lambda w: w.spec.node),
        ("INTERFACE", lambda w: w.spec.interface_name),
        ("NETWORKS", lambda w: ",".join(str(n) for n in w.spec.ip_networks)),
    ],
    IPAMBlock: [
        ("CIDR", lambda b: str(b.spec.cidr)),
        ("AFFINITY", lambda b: b.spec.affinity or "<none>"),
        ("USED", lambda b: f"{b.used()}/{b.spec.cidr.num_addresses}"),
    ],
    Service: [
        ("TYPE", lambda s: s.spec.type),
        ("CLUSTER-IP", lambda s: s.cluster_ip_text()),
        ("EXTERNAL-IP", lambda s: s.external_ip_text()),
        ("PORT(S)", lambda s: s.ports_text()),
    ],
    EndpointSlice: [
        ("ADDRESSTYPE", lambda e: family_name(e.address_type)),
        ("PORTS", lambda e: e.ports_text()),
        ("ENDPOINTS", lambda e: e.endpoints_text()),
    ],
    BlockAffinity: [
        ("NODE", lambda a: a.spec.node),
        ("CIDR", lambda a: str(a.spec.cidr)),
        ("STATE", lambda a: a.spec.state),
    ],
}


# -o wide: these columns after the plain ones (every kind without its own gets LABELS).
WIDE: dict[type[Resource], list[Column]] = {
    Pod: [("IPS", _pod_ips), ("LABELS", _labels)],
    IPPool: [("DISABLEBGPEXPORT", lambda p: str(p.spec.disable_bgp_export).lower()),
             ("ALLOWEDUSES", lambda p: ",".join(p.spec.allowed_uses) or "<none>")],
    WorkloadEndpoint: [("IPS", lambda w: ",".join(str(n) for n in w.spec.ip_networks)),
                       ("LABELS", _labels)],
}


def columns_for(cls: type[Resource], wide: bool) -> list[Column]:
    columns = list(COLUMNS.get(cls, []))
    if wide:
        columns += WIDE.get(cls, [("LABELS", _labels)])
    return columns


def resource_table(objs: Sequence[Resource], cls: type[Resource], all_namespaces: bool,
                   wide: bool = False, show_kind: bool = False, headers: bool = True) -> str:
    """kubectl's table: NAME, the kind's columns (more with ``wide``), AGE; NAMESPACE
    first across namespaces; ``kind.group/name`` names when several kinds are shown."""
    from tabby.cli.kinds import display
    columns = columns_for(cls, wide)
    head = ["NAME", *(c[0] for c in columns), "AGE"]
    with_ns = all_namespaces and cls.KIND.namespaced
    if with_ns:
        head.insert(0, "NAMESPACE")
    rows = []
    for obj in objs:
        name = display(cls, obj.meta.name) if show_kind else obj.meta.name
        row = [name, *(fn(obj) for _, fn in columns), age(obj)]
        if with_ns:
            row.insert(0, obj.meta.namespace)
        rows.append(row)
    text = table(rows, head)
    return text if headers else text.split("\n", 1)[1] if rows else ""


# -- -o name | jsonpath=... | custom-columns=... ------------------------------------

FORMATS = ("table", "wide", "yaml", "json", "name", "jsonpath=TEMPLATE",
           "custom-columns=HEADER:PATH[,...]")


@dataclass(frozen=True, slots=True)
class OutputFormat:
    kind: str  # table | wide | yaml | json | name | jsonpath | custom-columns
    template: tuple[jsonpath.Node, ...] = ()
    columns: tuple[tuple[str, tuple[jsonpath.Step, ...]], ...] = ()


def output_format(text: str) -> OutputFormat:
    """``-o``'s value, checked at parse time (a usage error names the formats)."""
    kind, sep, arg = text.partition("=")
    try:
        if not sep and kind in ("table", "wide", "yaml", "json", "name"):
            return OutputFormat(kind)
        if kind == "jsonpath" and arg:
            return OutputFormat(kind, template=jsonpath.parse_template(arg))
        if kind == "custom-columns" and arg:
            return OutputFormat(kind, columns=_columns(arg))
    except TabbyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    raise argparse.ArgumentTypeError(
        f"unknown output format {text!r}; use one of: {', '.join(FORMATS)}")


def _columns(spec: str) -> tuple[tuple[str, tuple[jsonpath.Step, ...]], ...]:
    out = []
    for part in spec.split(","):
        header, sep, path = part.partition(":")
        if not sep or not header or not path:
            raise TabbyError(f"custom-columns {spec!r}: {part!r} is not HEADER:PATH"
                             " (e.g. NAME:.metadata.name)")
        path = path.strip()
        if path.startswith("{") and path.endswith("}"):
            path = path[1:-1]
        out.append((header, jsonpath.parse_path(path, spec)))
    return tuple(out)


def custom_columns(items: Sequence[Any], fmt: OutputFormat, headers: bool = True) -> str:
    rows = [[",".join(jsonpath.text_of(v) for v in jsonpath.evaluate(path, item)) or "<none>"
             for _, path in fmt.columns] for item in items]
    text = table(rows, [h for h, _ in fmt.columns])
    return text if headers else text.split("\n", 1)[1] if rows else ""
