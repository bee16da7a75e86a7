"""BGP in a lab: the resources each ``--bgp`` mode writes, and the nodes' BIRDs.

Modes (nodes AS 64512, the ToR AS 65000, eBGP between them)::

    mesh  node-to-node mesh (iBGP); every node also peers with its rack's ToR
          address, so the ToR learns every block
    rr    no mesh; the first node of each rack is a route reflector (cluster
          244.0.0.1, label route-reflector=true); every node peers with the
          reflectors (BGPPeer peerSelector), and with the ToR
    tor   no mesh; every node peers with the ToR only, which passes each node's
          routes to the others (numAllowedLocalASNumbers: 1, as the nodes share
          one AS)

Nodes carry ``tabby.dev/rack: "<r>"``; a ToR BGPPeer per rack and family
selects them (``nodeSelector``), with the ToR's address in that rack.

The agents run BIRD (``--bgp bird``) in ``<node dir>/bgp``; ``wait_sessions``
polls each BIRD until its sessions are established, ``birds`` finds the BIRDs
running now (from their pid files, checked against /proc), so ``lab down``
stops exactly those even after an agent restarted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tabby.bgp.control import BirdError
from tabby.bgp.status import node_status
from tabby.errors import LabError
from tabby.lab import system
from tabby.lab.state import LabState, NodeRecord, Proc
from tabby.lab.topology import NodePlan, Topology
from tabby.model import BGPConfiguration, BGPPeer, Resource
from tabby.model.base import TABBY_API

TOR_AS = 65000
NODE_AS = 64512
CLUSTER_ID = "244.0.0.1"
RR_LABEL = "route-reflector"
RACK_LABEL = "tabby.dev/rack"
SESSION_TIMEOUT = 60.0

Progress = Callable[[str, int, int], None]


# -- resources (pure) --------------------------------------------------------------

def route_reflectors(t: Topology) -> tuple[str, ...]:
    """The ``rr`` mode's reflectors: the first node of each rack."""
    if t.bgp != "rr":
        return ()
    firsts: dict[int, str] = {}
    for node in t.nodes:
        firsts.setdefault(node.rack, node.name)
    return tuple(firsts.values())


def with_bgp(t: Topology, node: NodePlan, manifest: dict[str, Any]) -> dict[str, Any]:
    """The seeded Node manifest with the rack label and, on reflectors, the cluster id."""
    if t.bgp == "none":
        return manifest
    meta = manifest["metadata"]
    labels = {**meta.get("labels", {}), RACK_LABEL: str(node.rack)}
    spec = dict(manifest["spec"])
    if node.name in route_reflectors(t):
        labels[RR_LABEL] = "true"
        spec["bgp"] = {**spec.get("bgp", {}), "routeReflectorClusterID": CLUSTER_ID}
    return {**manifest, "metadata": {**meta, "labels": labels}, "spec": spec}


def resources(t: Topology) -> list[Resource]:
    """BGPConfiguration ``default`` and the BGPPeers of the lab's mode."""
    if t.bgp == "none":
        return []
    from tabby.lab.services import CLUSTER_RANGES, LB_POOLS
    # The lab's service ranges are advertised, as an operator of a BGP fabric
    # would configure: the outside client reaches ClusterIPs and LB IPs via the ToR.
    docs: list[dict[str, Any]] = [_doc("BGPConfiguration", "default", {
        "asNumber": NODE_AS, "nodeToNodeMeshEnabled": t.bgp == "mesh",
        "logSeverityScreen": "Info",
        "serviceClusterIPs": [{"cidr": str(CLUSTER_RANGES[v])} for v in t.families],
        "serviceLoadBalancerIPs": [{"cidr": str(LB_POOLS[v][1])} for v in t.families]})]
    if t.bgp == "rr":
        docs.append(_doc("BGPPeer", "peer-with-route-reflectors", {
            "nodeSelector": "all()", "peerSelector": f"{RR_LABEL} == 'true'"}))
    for rack in t.racks:
        for gateway in rack.gateways():
            spec: dict[str, Any] = {"nodeSelector": f"{RACK_LABEL} == '{rack.index}'",
                                    "peerIP": str(gateway.ip), "asNumber": TOR_AS}
            if t.bgp == "tor":
                spec["numAllowedLocalASNumbers"] = 1
            docs.append(_doc("BGPPeer", f"tor-rack-{rack.index}-ipv{gateway.version}", spec))
    kinds: dict[str, type[Resource]] = {"BGPConfiguration": BGPConfiguration,
                                        "BGPPeer": BGPPeer}
    return [kinds[d["kind"]].from_manifest(d) for d in docs]


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": TABBY_API, "kind": kind, "metadata": {"name": name}, "spec": spec}


# -- the nodes' BIRDs --------------------------------------------------------------

def bird_dir(node: NodeRecord) -> Path:
    return node.dir / "bgp"


def bird_socket(node: NodeRecord) -> Path:
    return bird_dir(node) / "bird.ctl"


def agent_flags(t: Topology, node: NodeRecord) -> list[str]:
    if t.bgp == "none":
        return []
    return ["--bgp", "bird", "--bgp-dir", str(bird_dir(node))]


def birds(state: LabState) -> list[Proc]:
    """The BIRDs running for the lab's nodes now (pid file + /proc: BIRD on that config)."""
    found = []
    for node in state.nodes:
        directory = bird_dir(node)
        try:
            pid = int((directory / "bird.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if _runs_bird(pid, directory / "bird.conf"):
            found.append(Proc(pid, system.start_time(pid) or 0, f"bird {node.name}"))
    return found


def _runs_bird(pid: int, conf: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(argv[0].decode(errors="replace")).name == "bird" and str(conf).encode() in argv


def wait_sessions(state: LabState, timeout: float, report: Progress) -> None:
    """Poll every node's BIRD until all its BGP sessions are established; LabError
    naming the sessions still down (and BIRD's answer) after ``timeout``."""
    pending = {n.name: n for n in state.nodes}
    total, deadline = len(pending), time.monotonic() + timeout
    last: dict[str, str] = {}
    while pending:
        for name, node in list(pending.items()):
            try:
                peers = node_status(bird_socket(node), timeout=2.0).peers
            except BirdError as exc:
                last[name] = str(exc)
                continue
            down = [f"{p.address} ({p.type}): {p.state} {p.info}".strip()
                    for p in peers if not p.established]
            if peers and not down:
                del pending[name]
                report("bgp sessions", total - len(pending), total)
            else:
                last[name] = "; ".join(down) or "no BGP sessions configured"
        if pending and time.monotonic() > deadline:
            raise LabError(f"BGP sessions not established after {timeout:g}s: " + "; ".join(
                f"{name}: {last.get(name, '?')}" for name in sorted(pending)))
        if pending:
            time.sleep(0.1)
