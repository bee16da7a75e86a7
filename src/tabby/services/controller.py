"""The endpoints controller's logic, and the API server's allocations for Services.

    allocate(svc, others, ranges, lb_pools) -> Service     families, clusterIPs,
                                                           nodePorts, LB ingress
    carry_over(new, old) -> Service                        keep what was allocated
    desired_slices(svc, pods) -> tuple[EndpointSlice, ...]  pods behind a selector

All pure. Allocation is deterministic: each service starts its search at a
point hashed from its namespace and name and takes the first free address
(or port) from there, so two runs over the same inputs agree and ten thousand
services do not all probe from the start of a range. Addresses a user wrote
(``clusterIP``, ``nodePort``, ``loadBalancerIP``) are kept if free and in range,
refused with the field named otherwise. A LoadBalancer whose pools are full
stays pending (no ingress), as in Kubernetes.

Slices: one per address family and per distinct resolution of the ports (a
named ``targetPort`` may resolve differently per pod), named
``<service>-<ipv4|ipv6>-<hash of the ports>``, labelled with the service name
and ``endpointslice.kubernetes.io/managed-by``; a pod's endpoint is ready when
the pod is Running (the lab marks it Running once its listener is up).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tabby.errors import FieldError, ValidationError
from tabby.model import IPPool, ObjectMeta, Pod
from tabby.model.service import (
    MANAGED_BY_LABEL,
    MAX_SLICE_ENDPOINTS,
    NODE_PORTS,
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    family_name,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MANAGER = "endpointslice-controller.tabby.dev"


@dataclass(frozen=True, slots=True)
class Ranges:
    """Where a cluster's services take their addresses and ports from."""

    cluster: Mapping[int, IPNetwork]  # family -> the ClusterIP range
    node_ports: tuple[int, int] = NODE_PORTS

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(sorted(self.cluster))


def needs_allocation(svc: Service) -> bool:
    s = svc.spec
    if s.type == "ExternalName":
        return False
    if not s.ip_families or (not s.headless and len(s.cluster_ips) != len(s.ip_families)):
        return True
    if s.type == "LoadBalancer" and len(svc.ingress) < len(s.ip_families):
        return True  # pending: a pool may have room now
    return s.has_node_ports and any(p.node_port is None for p in s.ports)


def allocate(svc: Service, others: Iterable[Service], ranges: Ranges,
             lb_pools: Sequence[IPPool] = ()) -> Service:
    """``svc`` with every field the API server and controllers fill in; ValidationError
    naming the field when a request cannot be met."""
    others = [o for o in others if (o.meta.namespace, o.meta.name)
              != (svc.meta.namespace, svc.meta.name)]
    errors: list[FieldError] = []
    families = _families(svc, ranges, errors)
    spec = dataclasses.replace(svc.spec, ip_families=families,
                               ip_family_policy=svc.spec.ip_family_policy or "SingleStack")
    if svc.spec.type != "ExternalName" and not svc.spec.headless:
        ips = [_cluster_ip(svc, v, others, ranges, errors) for v in families]
        spec = dataclasses.replace(spec, cluster_ips=tuple(ip for ip in ips if ip is not None))
    if spec.has_node_ports:
        spec = dataclasses.replace(spec, ports=_node_ports(svc, others, ranges, errors))
    out = dataclasses.replace(svc, spec=spec)
    if spec.type == "LoadBalancer":
        out = dataclasses.replace(out, ingress=ingress_for(out, others, lb_pools, errors))
    else:
        out = dataclasses.replace(out, ingress=())
    if errors:
        raise ValidationError(svc.ref, errors)
    return out


def carry_over(new: Service, old: Service | None) -> Service:
    """``new`` as applied, keeping what was allocated for ``old`` where ``new`` is
    silent (kubectl apply merges; tabby's apply replaces). ValidationError if ``new``
    changes a ClusterIP, which is immutable."""
    if old is None:
        return new
    spec = new.spec
    if spec.cluster_ips and old.spec.cluster_ips and spec.cluster_ips[0] != \
            old.spec.cluster_ips[0]:
        raise ValidationError(new.ref, [FieldError(
            "spec.clusterIP", f"is immutable (is {old.spec.cluster_ips[0]}); delete the"
            " service and create it again to change it")])
    same_families = not spec.ip_families or spec.ip_families == old.spec.ip_families
    if not spec.cluster_ips and not spec.headless and not old.spec.headless and same_families:
        spec = dataclasses.replace(spec, cluster_ips=old.spec.cluster_ips,
                                   ip_families=old.spec.ip_families)
    if spec.has_node_ports:
        kept = {(p.port, p.protocol): p.node_port for p in old.spec.ports}
        spec = dataclasses.replace(spec, ports=tuple(
            p if p.node_port is not None else
            dataclasses.replace(p, node_port=kept.get((p.port, p.protocol)))
            for p in spec.ports))
    ingress = new.ingress or (old.ingress if spec.type == "LoadBalancer" else ())
    return dataclasses.replace(new, spec=spec, ingress=ingress)


# -- allocation ------------------------------------------------------------------------

def _families(svc: Service, ranges: Ranges, errors: list[FieldError]) -> tuple[int, ...]:
    spec = svc.spec
    policy = spec.ip_family_policy or "SingleStack"
    asked = spec.ip_families or tuple(ip.version for ip in spec.cluster_ips)
    served = ranges.families
    for v in asked:
        if v not in served:
            errors.append(FieldError("spec.ipFamilies", f"{family_name(v)} is not served by"
                                     f" this cluster (it serves {_names(served)})"))
    asked = tuple(v for v in asked if v in served)
    if policy == "SingleStack":
        if len(asked) > 1:
            errors.append(FieldError("spec.ipFamilyPolicy",
                                     "SingleStack allows one family; use PreferDualStack"))
        return asked[:1] or served[:1]
    if policy == "RequireDualStack" and len(served) < 2:
        errors.append(FieldError("spec.ipFamilyPolicy",
                                 f"RequireDualStack, but this cluster serves {_names(served)}"))
    return asked + tuple(v for v in served if v not in asked)


def _names(families: Iterable[int]) -> str:
    return " and ".join(family_name(v) for v in families) or "no family"


def _cluster_ip(svc: Service, version: int, others: Sequence[Service], ranges: Ranges,
                errors: list[FieldError]) -> IPAddress | None:
    net = ranges.cluster[version]
    taken = {ip for o in others for ip in o.spec.cluster_ips if ip.version == version}
    wanted = svc.cluster_ip(version)
    if wanted is not None:
        if wanted not in net:
            errors.append(FieldError("spec.clusterIPs", f"{wanted} is outside the service"
                                     f" range {net}"))
        elif wanted in taken:
            errors.append(FieldError("spec.clusterIPs", f"{wanted} is already allocated"))
        return wanted
    found = first_free(net, taken, _seed(svc))
    if found is None:
        errors.append(FieldError("spec.clusterIPs", f"the service range {net} is full"))
    return found


def first_free(net: IPNetwork, taken: set[IPAddress], seed: int) -> IPAddress | None:
    """The first address of ``net`` not in ``taken``, searching from a seeded offset;
    never the network's first or last address."""
    size = net.num_addresses - 2
    if size <= 0:
        return None
    start = seed % size
    for step in range(size):
        address = net.network_address + 1 + (start + step) % size
        if address not in taken:
            return address
    return None


def _node_ports(svc: Service, others: Sequence[Service], ranges: Ranges,
                errors: list[FieldError]) -> tuple[ServicePort, ...]:
    taken = {p.node_port for o in others for p in o.spec.ports if p.node_port is not None}
    low, high = ranges.node_ports
    for i, p in enumerate(svc.spec.ports):
        if p.node_port is not None and p.node_port in taken:
            errors.append(FieldError(f"spec.ports[{i}].nodePort",
                                     f"{p.node_port} is already allocated"))
    mine = {p.node_port for p in svc.spec.ports if p.node_port is not None}
    out = []
    seed = _seed(svc)
    for p in svc.spec.ports:
        if p.node_port is None:
            span = high - low + 1
            number = next((low + (seed + step) % span for step in range(span)
                           if low + (seed + step) % span not in taken | mine), None)
            if number is None:
                errors.append(FieldError("spec.ports", f"no free nodePort in {low}-{high}"))
            else:
                mine.add(number)
                p = dataclasses.replace(p, node_port=number)
        out.append(p)
    return tuple(out)


def ingress_for(svc: Service, others: Sequence[Service], pools: Sequence[IPPool],
             errors: list[FieldError]) -> tuple[IPAddress, ...]:
    taken = {ip for o in others for ip in (*o.ingress, *o.spec.external_ips)}
    taken |= {o.spec.load_balancer_ip for o in others if o.spec.load_balancer_ip is not None}
    out: list[IPAddress] = []
    for version in svc.spec.ip_families:
        wanted = svc.spec.load_balancer_ip
        kept = next((ip for ip in svc.ingress if ip.version == version), None)
        if wanted is not None and wanted.version == version:
            if wanted in taken:
                errors.append(FieldError("spec.loadBalancerIP", f"{wanted} is already in use"))
                continue
            out.append(wanted)
        elif kept is not None and kept not in taken:
            out.append(kept)
        else:
            usable = [p for p in pools if p.version == version and p.usable_for("LoadBalancer")]
            for pool in sorted(usable, key=lambda p: p.meta.name):
                found = first_free(pool.spec.cidr, taken, _seed(svc))
                if found is not None:
                    out.append(found)
                    break
    return tuple(out)


def _seed(svc: Service) -> int:
    digest = hashlib.sha256(f"{svc.meta.namespace}/{svc.meta.name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# -- endpoint slices ------------------------------------------------------------------

def selects(svc: Service, pod: Pod) -> bool:
    selector = svc.spec.selector
    return bool(selector) and pod.meta.namespace == svc.meta.namespace and all(
        pod.meta.labels.get(k) == v for k, v in selector.items())


def resolve_port(port: ServicePort, pod: Pod) -> int | None:
    """The pod's port for ``port``: its number, or the container port so named."""
    target = port.target
    if isinstance(target, int):
        return target
    for cp in pod.ports():
        if cp.name == target and cp.protocol == port.protocol:
            return cp.container_port
    return None


def desired_slices(svc: Service, pods: Iterable[Pod]) -> tuple[EndpointSlice, ...]:
    """The slices the controller keeps for ``svc`` (none without a selector)."""
    if not svc.spec.selector or svc.spec.type == "ExternalName":
        return ()
    groups: dict[tuple[EndpointPort, ...], list[Pod]] = {}
    for pod in sorted(pods, key=lambda p: p.meta.name):
        if pod.host_network or not pod.status.pod_ips or not selects(svc, pod):
            continue
        ports = tuple(EndpointPort(number, p.protocol, p.name) for p in svc.spec.ports
                      if (number := resolve_port(p, pod)) is not None)
        if ports or not svc.spec.ports:
            groups.setdefault(ports, []).append(pod)
    out: list[EndpointSlice] = []
    for version in svc.spec.ip_families or svc.families():
        for ports, members in sorted(groups.items(), key=lambda g: repr(g[0])):
            endpoints = [_endpoint(pod, version) for pod in members]
            present = [e for e in endpoints if e is not None]
            for chunk in range(0, max(len(present), 1), MAX_SLICE_ENDPOINTS):
                out.append(_slice(svc, version, ports, chunk // MAX_SLICE_ENDPOINTS,
                                  tuple(present[chunk:chunk + MAX_SLICE_ENDPOINTS])))
    return tuple(out)


def _endpoint(pod: Pod, version: int) -> Endpoint | None:
    address = next((ip for ip in pod.status.pod_ips if ip.version == version), None)
    if address is None:
        return None
    ready = pod.status.phase == "Running"
    return Endpoint((address,), ready, ready, False, pod.node_name,
                    f"Pod/{pod.meta.namespace}/{pod.meta.name}")


def _slice(svc: Service, version: int, ports: tuple[EndpointPort, ...], chunk: int,
           endpoints: tuple[Endpoint, ...]) -> EndpointSlice:
    tag = hashlib.sha256(repr(ports).encode()).hexdigest()[:6]
    family = "ipv4" if version == 4 else "ipv6"
    name = f"{svc.meta.name[:200]}-{family}-{tag}" + (f"-{chunk}" if chunk else "")
    meta = ObjectMeta(name=name, namespace=svc.meta.namespace,
                      labels={SERVICE_NAME_LABEL: svc.meta.name, MANAGED_BY_LABEL: MANAGER})
    return EndpointSlice(meta=meta, address_type=version, endpoints=endpoints, ports=ports)
