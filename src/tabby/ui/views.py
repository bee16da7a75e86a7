"""What the page shows, as JSON-ready values: pure functions of a snapshot and the lab.

- ``topology``: nodes (addresses, rack, namespace in a lab) and the pods on
  each (addresses, declared ports), from the store's Nodes and
  WorkloadEndpoints, with the lab's plan (fabric addresses, the ToR) when there
  is one.
- ``policy_matrix``: every pod against every other pod for one protocol, port
  and family, as ``tabby policy explain`` decides it (the same compiled IR the
  agents render into nftables): what policy would do, not a measurement.
- ``probe_matrix``: the same grid from the lab's live probes (real packets,
  ``tabby.lab.probe``): what the kernel did.

Each cell names its verdict and, for a denial, the side that denied and the
policy, tier and rule (or the end of the tier) that decided, in the shape flow
records use (``policy: {kind, namespace, name, tier}``, ``rule``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabby.errors import ConfigError
from tabby.lab.probe import ProbeResult
from tabby.lab.state import LabState
from tabby.policy.explain import Decision, explain, protocol_name, protocol_number
from tabby.policy.index import WEP, Entity
from tabby.policy.program import PolicyProgram
from tabby.snapshot import Snapshot

MAX_PODS = 60  # a 60 x 60 grid is 3540 evaluations: well under a second
PROTOCOLS = ("tcp", "udp", "sctp")
FAMILIES = {"ipv4": 4, "ipv6": 6}


def topology(snapshot: Snapshot, lab: LabState | None) -> dict[str, Any]:
    """Nodes and their pods; a lab's plan adds racks, namespaces and the ToR."""
    plan = lab.topology if lab is not None else None
    names = sorted({n.meta.name for n in snapshot.nodes}
                   | {e.spec.node for e in snapshot.endpoints}
                   | ({n.name for n in plan.nodes} if plan else set()), key=_natural)
    nodes = []
    for name in names:
        node: dict[str, Any] = {"name": name, "addresses": _node_addresses(snapshot, name)}
        if plan is not None and any(n.name == name for n in plan.nodes):
            p = plan.node(name)
            node.update(rack=p.rack, netns=p.netns,
                        fabric=[str(a) for a in p.addresses()])
        node["pods"] = [_pod(e) for e in sorted(
            snapshot.local_endpoints(name), key=lambda e: (e.meta.namespace, _pod_name(e)))]
        nodes.append(node)
    out: dict[str, Any] = {"lab": lab.name if lab else None, "nodes": nodes}
    if plan is not None:
        out.update(stack=plan.stack, encap=plan.encap, bgp=plan.bgp, router=plan.tor_netns,
                   families=[f"ipv{f}" for f in plan.families],
                   pools=[str(p.cidr) for p in plan.pools],
                   racks=[{"index": r.index, "gateways": [str(g) for g in r.gateways()]}
                          for r in plan.racks])
    else:
        out["families"] = sorted({f"ipv{n.version}" for e in snapshot.endpoints
                                  for n in e.spec.ip_networks})
    return out


def _natural(name: str) -> tuple[str, int, str]:
    """node-2 before node-10."""
    stem, _, tail = name.rpartition("-")
    return (stem, int(tail), "") if tail.isdigit() else (name, 0, name)


def _node_addresses(snapshot: Snapshot, name: str) -> list[str]:
    return [str(a) for a in (snapshot.node_address(name, 4), snapshot.node_address(name, 6))
            if a is not None]


def _pod_name(e: Any) -> str:
    return str(e.spec.pod or e.spec.workload or e.meta.name)


def _pod(e: Any) -> dict[str, Any]:
    return {"ref": f"{e.meta.namespace}/{_pod_name(e)}", "namespace": e.meta.namespace,
            "name": _pod_name(e), "ips": [str(n.network_address) for n in e.spec.ip_networks],
            "ports": [{"port": p.port, "protocol": p.protocol.lower(), "name": p.name}
                      for p in e.spec.ports],
            "interface": e.spec.interface_name}


# -- the matrix -------------------------------------------------------------------

def parse_matrix_query(query: dict[str, str], families: Sequence[str]
                       ) -> tuple[str, int, str]:
    """(protocol, port, family) from ``?protocol=&port=&family=``; ConfigError names the bad one."""
    unknown = set(query) - {"protocol", "port", "family", "mode"}
    if unknown:
        raise ConfigError(f"/api/matrix: unknown parameter(s) {', '.join(sorted(unknown))}")
    protocol = query.get("protocol", "tcp").lower()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    port_text = query.get("port", "80")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"port {port_text!r}: expected a port number 1..65535")
    family = query.get("family") or (families[0] if families else "ipv4")
    if family not in FAMILIES:
        raise ConfigError(f"family {family!r}: expected ipv4 or ipv6")
    return protocol, int(port_text), family


def matrix_pods(program: PolicyProgram, family: str) -> list[Entity]:
    """The pods with an address of ``family``, by namespace and name; at most MAX_PODS."""
    pods = sorted((e for e in program.index.entities if e.kind == WEP
                   and any(a.version == FAMILIES[family] for a in e.addresses)),
                  key=lambda e: (e.namespace, e.name))
    if len(pods) > MAX_PODS:
        raise ConfigError(f"{len(pods)} pods have {family} addresses: the matrix shows at most"
                          f" {MAX_PODS} (use tabby policy explain or tabby lab probe --from)")
    return pods


def policy_matrix(program: PolicyProgram, protocol: str, port: int,
                  family: str) -> dict[str, Any]:
    """Every pod to every other pod, as policy would decide a new connection."""
    pods = matrix_pods(program, family)
    number = protocol_number(protocol)
    cells = []
    for src in pods:
        for dst in pods:
            if src.key == dst.key:
                continue
            r = explain(program, src, dst, number, port, family=FAMILIES[family])
            deciding = r.ingress if r.egress.verdict == "allow" else r.egress
            cells.append({"from": src.ref, "to": dst.ref, "verdict": r.verdict,
                          **_decided(deciding)})
    return {"mode": "policy", "protocol": protocol_name(number), "port": port,
            "family": family, "pods": [p.ref for p in pods], "cells": cells}


def _decided(d: Decision) -> dict[str, Any]:
    """The side and rule behind a cell: ``policy`` in flow records' shape, ``rule``, why."""
    out: dict[str, Any] = {"direction": d.direction, "reason": d.reason,
                           "summary": d.summary(), "rule": None}
    if d.tier:
        out["tier"] = d.tier
    if d.policy is not None:
        policy = {"kind": d.policy.kind, "name": d.policy.name, "tier": d.tier}
        if d.policy.namespace:
            policy["namespace"] = d.policy.namespace
        out["policy"] = policy
    if d.rule is not None:
        out["rule"] = d.rule.index
        if d.rule.peer is not None:
            out["peer"] = d.rule.peer
    return out


def probe_matrix(results: Sequence[ProbeResult], protocol: str, port: int, family: str,
                 taken: float) -> dict[str, Any]:
    """The grid from live probes; ``taken`` is when they ran (epoch seconds)."""
    refs = sorted({r.probe.source.ref for r in results} | {r.probe.target.ref for r in results})
    cells = [{"from": r.probe.source.ref, "to": r.probe.target.ref,
              "verdict": "allow" if r.connected else "deny",
              "summary": "connected" if r.connected else (r.error or "no answer"),
              "rule": None} for r in results if r.probe.source.ref != r.probe.target.ref]
    return {"mode": "probe", "protocol": protocol, "port": port, "family": family,
            "pods": refs, "cells": cells, "taken": taken}
