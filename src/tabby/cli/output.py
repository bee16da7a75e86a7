"""Rendering resources for people (tables) and scripts (json, yaml).

``-o json|yaml`` prints what kubectl prints: one object for ``get KIND NAME``
and a ``v1 List`` for lists. Tables pick a few columns per kind.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from tabby.model import (
    BGPConfiguration,
    BGPPeer,
    BlockAffinity,
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    HostEndpoint,
    IPAMBlock,
    IPPool,
    K8sNetworkPolicy,
    Namespace,
    NetworkPolicy,
    NetworkSet,
    Node,
    Pod,
    Resource,
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
    NetworkPolicy: [("ORDER", lambda p: _order(p.spec.order)),
                    ("SELECTOR", lambda p: p.spec.selector or "all()")],
    GlobalNetworkPolicy: [("ORDER", lambda p: _order(p.spec.order)),
                          ("SELECTOR", lambda p: p.spec.selector or "all()")],
    HostEndpoint: [("NODE", lambda h: h.spec.node),
                   ("INTERFACE", lambda h: h.spec.interface_name or "<none>"),
                   ("IPS", lambda h: _ranges(h.spec.expected_ips))],
    NetworkSet: [("NETS", lambda n: _ranges(n.nets))],
    GlobalNetworkSet: [("NETS", lambda n: _ranges(n.nets))],
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


def resource_table(objs: Sequence[Resource], cls: type[Resource], all_namespaces: bool) -> str:
    columns = COLUMNS.get(cls, [])
    headers = ["NAME", *(c[0] for c in columns), "AGE"]
    if all_namespaces and cls.KIND.namespaced:
        headers.insert(0, "NAMESPACE")
    rows = []
    for obj in objs:
        row = [obj.meta.name, *(fn(obj) for _, fn in columns), age(obj)]
        if all_namespaces and cls.KIND.namespaced:
            row.insert(0, obj.meta.namespace)
        rows.append(row)
    return table(rows, headers)
