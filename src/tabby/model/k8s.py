"""Kubernetes ``v1`` Namespace and Pod, as far as networking reads them.

A Pod keeps the fields tabby uses typed (nodeName, containers' ports,
serviceAccountName, hostNetwork) and the rest of its spec untouched, so a
manifest written for a real cluster applies as it is. ``status`` (podIP,
podIPs, hostIP, phase) is written by whoever wires the pod (the lab), like the
kubelet does; the status as served (``raw_status``: conditions,
containerStatuses, qosClass, startTime, ...) stays underneath, so writing the
typed part back clobbers nothing else. ``hostIPs`` follows ``hostIP``: kept as
served while its first entry is still hostIP, else ``[hostIP]`` (the API server
wants ``hostIPs[0] == hostIP``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Self

from tabby.model.base import KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields

PROTOCOLS = ("TCP", "UDP", "SCTP")
# status keys rendered from PodStatus; everything else in raw_status is kept
_TYPED_STATUS = frozenset({"phase", "podIP", "podIPs", "hostIP", "hostIPs"})


@register
@dataclass(frozen=True, slots=True)
class Namespace(Resource):
    KIND = KindInfo("Namespace", "", "v1", "namespaces", namespaced=False, short_names=("ns",))
    meta: ObjectMeta
    phase: str = "Active"

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        top.raw("spec")
        status = top.map("status")
        phase = status.str("phase", "Active")
        status.finish(ignore_unknown=True)
        labels = dict(meta.labels)
        # Kubernetes sets this label on every namespace; policies select on it.
        labels.setdefault("kubernetes.io/metadata.name", meta.name)
        return cls(meta=_replace_labels(meta, labels), phase=phase)

    def body(self) -> dict[str, Any]:
        return {"spec": {}, "status": {"phase": self.phase}}


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str = ""
    host_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"containerPort": self.container_port, "protocol": self.protocol}
        if self.name:
            out["name"] = self.name
        if self.host_port is not None:
            out["hostPort"] = self.host_port
        return out


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    image: str = ""
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True, slots=True)
class PodStatus:
    phase: str = "Pending"
    pod_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    host_ip: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase}
        if self.host_ip:
            out["hostIP"] = self.host_ip
        if self.pod_ips:
            out["podIP"] = str(self.pod_ips[0])
            out["podIPs"] = [{"ip": str(ip)} for ip in self.pod_ips]
        return out


@register
@dataclass(frozen=True, slots=True)
class Pod(Resource):
    KIND = KindInfo("Pod", "", "v1", "pods", namespaced=True, short_names=("po",))
    meta: ObjectMeta
    node_name: str = ""
    containers: tuple[Container, ...] = ()
    service_account_name: str = "default"
    host_network: bool = False
    raw_spec: dict[str, Any] = field(default_factory=dict)
    status: PodStatus = PodStatus()
    # status fields not typed in PodStatus (and hostIPs when it says more than hostIP)
    raw_status: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        raw = top.raw("spec")
        f = top.map("spec")
        containers = []
        for path, item in f.list("containers"):
            c = Fields(item, path, f.errors)
            ports = []
            seen_names: set[str] = set()
            for ppath, pitem in c.list("ports"):
                ports.append(_port(Fields(pitem, ppath, f.errors), seen_names))
            containers.append(Container(c.str("name", required=True), c.str("image"),
                                        tuple(ports)))
            c.finish(ignore_unknown=True)
        if not containers and not f.errors:
            f.error("containers", "a pod needs at least one container")
        node_name = f.str("nodeName")
        sa = f.str("serviceAccountName", "default") or "default"
        host_network = f.bool("hostNetwork")
        f.finish(ignore_unknown=True)
        raw_status = top.raw("status")
        status = _status(top.map("status"))
        rest: dict[str, Any] = {}
        if isinstance(raw_status, dict):
            # Keep only what is not typed, so equal statuses compare equal however made.
            rest = {k: v for k, v in raw_status.items() if k not in _TYPED_STATUS}
            host_ips = raw_status.get("hostIPs")
            if host_ips and host_ips != [{"ip": status.host_ip}]:
                rest["hostIPs"] = host_ips
        return cls(meta=meta, node_name=node_name, containers=tuple(containers),
                   service_account_name=sa, host_network=host_network,
                   raw_spec=dict(raw) if isinstance(raw, dict) else {}, status=status,
                   raw_status=rest)

    def body(self) -> dict[str, Any]:
        spec = dict(self.raw_spec)
        if self.node_name:
            spec["nodeName"] = self.node_name
        return {"spec": spec, "status": self._status_dict()}

    def _status_dict(self) -> dict[str, Any]:
        typed = self.status.to_dict()
        out = {k: v for k, v in self.raw_status.items() if k not in _TYPED_STATUS}
        out.update(typed)
        host_ips = self.raw_status.get("hostIPs")
        if self.status.host_ip:
            first = host_ips[0] if isinstance(host_ips, list) and host_ips else None
            if isinstance(first, dict) and first.get("ip") == self.status.host_ip:
                out["hostIPs"] = host_ips
            else:
                out["hostIPs"] = [{"ip": self.status.host_ip}]
        return out

    def ports(self) -> list[ContainerPort]:
        return [p for c in self.containers for p in c.ports]


def _port(p: Fields, seen: set[str]) -> ContainerPort:
    number = p.int("containerPort", required=True) or 0
    if not 0 < number < 65536:
        p.error("containerPort", f"{number} is outside 1..65535")
    protocol = p.choice("protocol", PROTOCOLS, "TCP")
    name = p.str("name")
    if name:
        if len(name) > 15 or not name.replace("-", "").isalnum() or name != name.lower():
            p.error("name", f"{name!r} must be at most 15 lower-case letters, digits and '-'")
        if name in seen:
            p.error("name", f"{name!r} is used twice")
        seen.add(name)
    host_port = p.int("hostPort")
    p.finish(ignore_unknown=True)
    return ContainerPort(number, protocol, name, host_port)


def _status(f: Fields) -> PodStatus:
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for path, item in f.list("podIPs"):
        entry = Fields(item, path, f.errors)
        text = entry.str("ip")
        try:
            ips.append(ipaddress.ip_address(text))
        except ValueError:
            entry.error("ip", f"{text!r} is not an IP address")
        entry.finish()
    first = f.str("podIP")
    if first and not ips:
        try:
            ips.append(ipaddress.ip_address(first))
        except ValueError:
            f.error("podIP", f"{first!r} is not an IP address")
    status = PodStatus(phase=f.str("phase", "Pending"), pod_ips=tuple(ips),
                       host_ip=f.str("hostIP"))
    f.finish(ignore_unknown=True)
    return status


def _replace_labels(meta: ObjectMeta, labels: dict[str, str]) -> ObjectMeta:
    import dataclasses
    return dataclasses.replace(meta, labels=labels)
