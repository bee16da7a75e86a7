"""WorkloadEndpoint: one pod interface on one node, as the agent wired it.

Written by the node agent on CNI ADD and removed on DEL. Field names follow
Calico's v3 WorkloadEndpoint; ``metadata.labels`` carries the pod's labels
plus ``projectcalico.org/namespace`` and ``projectcalico.org/orchestrator``,
and ``spec.namespaceLabels`` the namespace's labels at wiring time (policy
reads both).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabby.errors import FieldError
from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.names import object_name
from tabby.model.schema import Column, KindSchema, array, integer, obj, string, string_map

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class WorkloadEndpointSpec:
    node: str
    orchestrator: str = "k8s"
    workload: str = ""
    pod: str = ""
    endpoint: str = "eth0"
    container_id: str = ""
    interface_name: str = ""
    mac: str = ""
    ip_networks: tuple[IPNetwork, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    service_account_name: str = ""
    namespace_labels: tuple[tuple[str, str], ...] = ()


@register
@dataclass(frozen=True, slots=True)
class WorkloadEndpoint(Resource):
    KIND = KindInfo("WorkloadEndpoint", TABBY_GROUP, "v1", "workloadendpoints", namespaced=True,
                    aliases=(CALICO_API,), short_names=("wep", "weps"))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        "orchestrator": string("Default k8s."),
        "node": string("The node the pod runs on."),
        "workload": string("The workload (non-Kubernetes orchestrators)."),
        "pod": string("The pod's name."),
        "endpoint": string("The pod's interface (default eth0)."),
        "containerID": string("The sandbox's container id."),
        "interfaceName": string("The host side of the pod's veth."),
        "mac": string("The pod interface's MAC address."),
        "ipNetworks": array(string(), "The pod's addresses (/32, /128)."),
        "ports": array(obj({
            "name": string("The port's name."),
            "protocol": string("Default TCP."),
            "port": integer("The port number.", minimum=1, maximum=65535),
        }, required=["port"]), "The pod's named ports."),
        "serviceAccountName": string("The pod's service account."),
        "namespaceLabels": string_map("The namespace's labels at wiring time."),
        "profiles": array(string(), "Accepted for Calico compatibility; not kept."),
        "ipNATs": array(obj({"internalIP": string(), "externalIP": string()}),
                        "Accepted for Calico compatibility; not kept."),
    }, required=["node"]), columns=(Column("Node", ".spec.node"), Column("Pod", ".spec.pod"),
                                    Column("Networks", ".spec.ipNetworks"),
                                    Column("Interface", ".spec.interfaceName", priority=1)))
    meta: ObjectMeta
    spec: WorkloadEndpointSpec

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        nets: list[IPNetwork] = []
        for path, item in f.list("ipNetworks"):
            try:
                nets.append(ipaddress.ip_network(str(item)))
            except ValueError:
                f.errors.append(FieldError(path, f"{item!r} is not a CIDR"))
        ports = []
        for path, item in f.list("ports"):
            p = Fields(item, path, f.errors)
            port = p.int("port", required=True) or 0
            if not 0 < port < 65536:
                p.error("port", f"{port} is outside 1..65535")
            ports.append(EndpointPort(p.str("name"), p.str("protocol", "TCP"), port))
            p.finish()
        spec = WorkloadEndpointSpec(
            node=f.str("node", required=True),
            orchestrator=f.str("orchestrator", "k8s"),
            workload=f.str("workload"),
            pod=f.str("pod"),
            endpoint=f.str("endpoint", "eth0"),
            container_id=f.str("containerID"),
            interface_name=f.str("interfaceName"),
            mac=f.str("mac"),
            ip_networks=tuple(nets),
            ports=tuple(ports),
            service_account_name=f.str("serviceAccountName"),
            namespace_labels=tuple(sorted(f.str_map("namespaceLabels").items())),
        )
        f.raw("profiles")
        f.raw("ipNATs")
        f.finish()
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        s = self.spec
        spec: dict[str, Any] = {
            "orchestrator": s.orchestrator,
            "node": s.node,
            "pod": s.pod,
            "endpoint": s.endpoint,
            "containerID": s.container_id,
            "interfaceName": s.interface_name,
            "mac": s.mac,
            "ipNetworks": [str(n) for n in s.ip_networks],
            "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port} for p in s.ports],
            "serviceAccountName": s.service_account_name,
            "namespaceLabels": dict(s.namespace_labels),
        }
        if s.workload:
            spec["workload"] = s.workload
        return {"spec": spec}


def endpoint_name(node: str, pod: str, interface: str = "eth0") -> str:
    """Calico's naming: ``<node>-k8s-<pod>-<iface>`` with '-' doubled inside parts, while
    that is a valid Kubernetes name (at most 253 characters, lower case: ``Eth0`` is a legal
    CNI interface name) and reads back one way (no part empty or starting or ending with
    '-'); else a readable stem and the digest of the three parts (``tabby.model.names``).
    The endpoint's spec keeps node, pod and interface as they are."""
    parts = (node, "k8s", pod, interface)
    calico = "-".join(p.replace("-", "--") for p in parts)
    one_way = all(p and not p.startswith("-") and not p.endswith("-") for p in parts)
    return object_name(calico, identity=json.dumps([node, pod, interface]), keep=one_way,
                       fallback="endpoint")

