"""Which service addresses a node announces on its own, for externalTrafficPolicy Local.

    local_service_routes(snapshot, node) -> tuple[(host network, why), ...]

Every node announces the service ranges of BGPConfiguration ``default``
(``serviceClusterIPs``, ``serviceExternalIPs``, ``serviceLoadBalancerIPs``; see
``tabby.calc.bird``). A service with ``externalTrafficPolicy: Local`` must only
draw traffic to nodes that can answer without leaving the node, so those
nodes, and only those, also announce its addresses as a /32 (/128): the
longest prefix wins at the router, which spreads the traffic over them (ECMP).
An address counts when it lies within an announced range of its kind (a
ClusterIP within serviceClusterIPs, an externalIP within serviceExternalIPs, a
load-balancer ingress IP within serviceLoadBalancerIPs), as Calico does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from tabby.model import BGPConfiguration
from tabby.model.bgpconfiguration import BGPConfigurationSpec
from tabby.model.service import EndpointSlice, Service
from tabby.services.view import service_inputs, service_views
from tabby.snapshot import Snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def local_service_routes(snapshot: Snapshot, node: str) -> tuple[tuple[IPNetwork, str], ...]:
    config = next((c for c in snapshot.of(BGPConfiguration) if c.meta.name == "default"), None)
    if config is None:
        return ()
    spec = config.spec
    if not (spec.service_cluster_ips or spec.service_external_ips
            or spec.service_load_balancer_ips):
        return ()
    out: dict[IPNetwork, str] = {}
    for svc, slices in service_inputs(snapshot):
        if svc.spec.external_traffic_policy == "Local":  # few are: skip the rest cheaply
            _announce(out, svc, slices, node, spec)
    return tuple(sorted(out.items(), key=lambda x: (x[0].version, int(x[0].network_address))))


def _announce(out: dict[IPNetwork, str], svc: Service, slices: tuple[EndpointSlice, ...],
              node: str, spec: BGPConfigurationSpec) -> None:
    lb = set(svc.ingress)
    why = f"service {svc.meta.namespace}/{svc.meta.name} (externalTrafficPolicy Local)"
    for view in service_views(svc, slices):
        if not view.local_backends(node):
            continue
        candidates: list[tuple[IPAddress, Iterable[IPNetwork]]] = []
        if view.cluster_ip is not None:
            candidates.append((view.cluster_ip, spec.service_cluster_ips))
        candidates += [(ip, spec.service_load_balancer_ips if ip in lb
                        else spec.service_external_ips) for ip in view.external_ips]
        for ip, ranges in candidates:
            if any(ip in net for net in ranges):
                out.setdefault(ipaddress.ip_network(ip), why)
