"""Kubernetes' own ``v1`` Node, read-only, as far as tabby reads one.

The kubelet registers it; tabby only reads it: its name (a tabby ``Node`` of the
same name belongs to it, and goes when it goes: ``tabby.kube.nodecleanup``) and
its ``status.addresses`` (``kubernetes-internal-ip`` autodetection). ``spec`` and
``status`` are kept as served, so rendering it back loses nothing.

Not in the kind registry, on purpose: ``tabby get node`` and ``tabby delete node``
name tabby's Node (the bare name would otherwise prefer Kubernetes' kind), and the
agent's cache, which follows every registered kind, has no use for core Nodes.
Whoever reads it teaches its store the resource (``KubernetesStore.resources``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Self

from tabby.model.base import KindInfo, ObjectMeta, Resource
from tabby.model.fields import Fields

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class KubeNode(Resource):
    KIND = KindInfo("Node", "", "v1", "nodes", namespaced=False)
    meta: ObjectMeta
    addresses: tuple[tuple[str, str], ...] = ()  # (type, address) as status.addresses lists them
    raw_spec: dict[str, Any] = field(default_factory=dict)
    raw_status: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        spec, status = top.raw("spec"), top.raw("status")
        f = top.map("status")
        addresses = []
        for path, item in f.list("addresses"):
            a = Fields(item, path, f.errors)
            addresses.append((a.str("type"), a.str("address", required=True)))
            a.finish(ignore_unknown=True)
        f.finish(ignore_unknown=True)
        return cls(meta=meta, addresses=tuple(addresses),
                   raw_spec=dict(spec) if isinstance(spec, dict) else {},
                   raw_status=dict(status) if isinstance(status, dict) else {})

    def body(self) -> dict[str, Any]:
        return {"spec": dict(self.raw_spec), "status": dict(self.raw_status)}

    @property
    def internal_ips(self) -> tuple[IPAddress, ...]:
        """The InternalIP addresses, in the order listed (ones that do not parse skipped)."""
        out = []
        for kind, text in self.addresses:
            if kind != "InternalIP":
                continue
            try:
                out.append(ipaddress.ip_address(text))
            except ValueError:
                continue
        return tuple(out)
