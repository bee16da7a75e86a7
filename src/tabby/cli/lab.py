"""``tabby lab up|down|status|exec|probe``: a whole cluster on this machine.

The lab is chosen with the global ``--lab`` / ``$TABBY_LAB`` (default
``tabby``); ``up`` and ``down`` also take ``--name``. On a terminal, progress
is one line rewritten in place and the probe grid is coloured; on a pipe,
plain lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from tabby.cli.context import lab_name
from tabby.cli.output import table
from tabby.lab import system
from tabby.lab.bgp import bird_socket
from tabby.lab.datastore import kubeconfig
from tabby.lab.state import LabState, require
from tabby.lab.topology import BGP_MODES, DATASTORES, ENCAPS, STACKS

GREEN, RED, RESET = "\x1b[32m", "\x1b[31m", "\x1b[0m"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lab", help="a whole cluster on this machine, built from namespaces")
    lab = p.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    up = lab.add_parser("up", help="build a lab: fabric, nodes, datastore, one agent per node")
    up.add_argument("--name", help="the lab's name (default: --lab, $TABBY_LAB, 'tabby')")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--stack", choices=tuple(STACKS), default="ipv4",
                    help="address families of the fabric and the pods (default ipv4)")
    up.add_argument("--encap", choices=ENCAPS, default="none",
                    help="pod traffic between nodes: none (routed), vxlan (the pools'"
                    " vxlanMode Always) or vxlan-crosssubnet (CrossSubnet: only between racks)")
    up.add_argument("--bgp", choices=BGP_MODES, default="none",
                    help="how routes are spread: none (each agent writes them), or BIRD on"
                    " every node with FRR on the ToR: mesh (node-to-node mesh), rr (route"
                    " reflectors), tor (every node peers with the ToR only)")
    up.add_argument("--racks", type=int, default=1,
                    help="racks of nodes, one subnet each, routed by the ToR (more than 1"
                    " needs --bgp or --encap vxlan*)")
    up.add_argument("--datastore", dest="lab_datastore", choices=DATASTORES, default="sqlite",
                    help="sqlite (one file) or etcd (a real 3-member cluster)")
    up.set_defaults(func=cmd_up)

    down = lab.add_parser("down", help="stop and remove everything the lab made")
    down.add_argument("--name", help="the lab's name")
    down.set_defaults(func=cmd_down)

    status = lab.add_parser("status", help="nodes, agents, pods and the datastore of the lab")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=cmd_status)

    ex = lab.add_parser("exec", help="run a command inside a pod's network namespace")
    ex.add_argument("pod", metavar="NS/POD")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    ex.set_defaults(func=cmd_exec)

    pr = lab.add_parser("probe", help="which pods reach which: TCP/UDP to declared ports")
    pr.add_argument("--from", dest="sources", action="append", default=[], metavar="NS/POD",
                    help="probe from this pod (repeatable; default: every pod)")
    pr.add_argument("--to", dest="targets", action="append", default=[], metavar="NS/POD",
                    help="probe this pod (repeatable; default: every pod)")
    pr.add_argument("--port", type=int, help="this port (default: every declared port)")
    pr.add_argument("--protocol", choices=("tcp", "udp"),
                    help="this protocol (default: each port's declared one)")
    pr.add_argument("--family", choices=("ipv4", "ipv6"),
                    help="address family (default: the lab's first)")
    pr.add_argument("--timeout", type=float, default=1.0, metavar="S",
                    help="seconds each probe waits for its answer (default 1)")
    pr.add_argument("-o", "--output", choices=("table", "json"), default="table")
    pr.set_defaults(func=cmd_probe)


# -- progress -------------------------------------------------------------------

class ProgressPrinter:
    """Renders (stage, done, total): one rewritten line on a terminal, a line per
    finished stage on a pipe."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            end = "\n" if done >= total else ""
            self.stream.write(f"\r\x1b[K{stage}: {done}/{total} ready ({elapsed:.1f}s){end}")
            self.stream.flush()
        elif done >= total:
            self.stream.write(f"{stage}: {done}/{total} ready ({elapsed:.1f}s)\n")


# -- commands -------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from tabby.lab.builder import Lab
    from tabby.lab.topology import plan
    name = args.name or lab_name(args)
    topology = plan(name, nodes=args.nodes, stack=args.stack, encap=args.encap, bgp=args.bgp,
                    racks=args.racks, datastore=args.lab_datastore)
    started = time.monotonic()
    state = Lab(topology).up(ProgressPrinter())
    print(f"lab {name} is up: {len(state.nodes)} nodes, {args.stack}, datastore"
          f" {state.datastore} ({time.monotonic() - started:.1f}s)")
    kc = kubeconfig(state)
    if kc is not None:
        print(f"kubectl: export KUBECONFIG={kc}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from tabby.lab.builder import down
    name = args.name or lab_name(args)
    state = down(name)
    print(f"lab {name} is down: removed {len(state.all_netns())} namespaces, stopped"
          f" {len(state.all_procs())} processes")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = require(lab_name(args))
    info = describe(state)
    if args.output == "json":
        print(json.dumps(info, indent=2))
        return 0
    print(f"lab {state.name}: {state.phase}, {info['stack']}, encap {info['encap']},"
          f" bgp {info['bgp']}, datastore {state.datastore}")
    print(table([[n["name"], n["netns"], " ".join(n["addresses"]),
                  _agent_text(n), str(n["pods"])] for n in info["nodes"]],
                ["NODE", "NETNS", "ADDRESSES", "AGENT", "PODS"]))
    if info["pods"]:
        print()
        print(table([[p["namespace"], p["name"], p["node"], ",".join(p["ips"]) or "<none>",
                      ",".join(f"{n}/{proto}" for n, proto in p["ports"]) or "<none>"]
                     for p in info["pods"]], ["NAMESPACE", "POD", "NODE", "IPS", "PORTS"]))
    return 0


def _agent_text(node: dict[str, Any]) -> str:
    if node["agentPid"] is None:
        return "not started"
    return f"pid {node['agentPid']} {'running' if node['agentRunning'] else 'EXITED'}"


def describe(state: LabState) -> dict[str, Any]:
    """``lab status -o json``: at least name and nodes[] (name, netns, cniConfList,
    cniBinDir), plus what helps: datastore, agents, pods."""
    t = state.topology
    pods_on = {n.name: 0 for n in state.nodes}
    for pod in state.pods:
        pods_on[pod.node] = pods_on.get(pod.node, 0) + 1
    nodes = []
    for node in state.nodes:
        plan = t.node(node.name)
        nodes.append({
            "name": node.name, "netns": node.netns, "cniConfList": str(node.cni_conflist),
            "cniBinDir": str(node.cni_bin_dir), "cniSocket": str(node.cni_socket),
            "addresses": [str(a) for a in plan.addresses()],
            "agentPid": node.agent.pid if node.agent else None,
            "agentRunning": bool(node.agent and system.alive(node.agent)),
            "agentLog": str(node.agent_log), "pods": pods_on.get(node.name, 0),
            **({"birdSocket": str(bird_socket(node))} if t.bgp != "none" else {})})
    return {
        "name": state.name, "phase": state.phase, "stack": t.stack, "encap": t.encap,
        "bgp": t.bgp, "families": [f"ipv{v}" for v in t.families],
        "datastore": state.datastore, "dir": str(state.dir),
        "tor": {"netns": t.tor_netns,
                "addresses": [str(g) for r in t.racks for g in r.gateways()]},
        "nodes": nodes,
        "pods": [{"namespace": p.namespace, "name": p.name, "node": p.node, "netns": p.netns,
                  "containerID": p.container_id, "ips": [str(ip) for ip in p.ips],
                  "ports": [[n, proto] for n, proto in p.ports],
                  "listenerPid": p.listener.pid if p.listener else None}
                 for p in sorted(state.pods, key=lambda p: (p.namespace, p.name))],
        "processes": [{"role": p.role, "pid": p.pid} for p in state.procs],
        **({"ext": {"netns": t.ext.netns, "addresses": [str(a) for a in t.ext.addresses]}}
           if t.ext else {}),
        **({"kubeconfig": str(kc)} if (kc := kubeconfig(state)) is not None else {}),
    }


def cmd_exec(args: argparse.Namespace) -> int:
    from tabby.lab.pods import exec_in_pod
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    return exec_in_pod(require(lab_name(args)), args.pod, cmd)


def cmd_probe(args: argparse.Namespace) -> int:
    from tabby.lab.probe import probe
    state = require(lab_name(args))
    results = probe(state, args.sources, args.targets, args.port, args.protocol, args.family,
                    args.timeout)
    if args.output == "json":
        print(json.dumps({"probes": [r.to_dict() for r in results]}, indent=2))
        return 0
    print(probe_grid([r.to_dict() for r in results], color=sys.stdout.isatty()))
    return 0


def probe_grid(probes: Sequence[dict[str, Any]], *, color: bool) -> str:
    """Sources down, targets across; per cell one mark per probed port: reached
    (green on a terminal, ``+`` on a pipe) or blocked (red, ``x``)."""
    if not probes:
        return "no probes (no pods, or no declared ports; see --port)"
    pods = sorted({p["from"] for p in probes} | {p["to"] for p in probes})
    number = {ref: str(i) for i, ref in enumerate(pods, 1)}
    targets = [ref for ref in pods if any(p["to"] == ref for p in probes)]
    sources = [ref for ref in pods if any(p["from"] == ref for p in probes)]
    cells: dict[tuple[str, str], list[bool]] = {}
    ports: dict[str, list[str]] = {}
    for p in probes:
        cells.setdefault((p["from"], p["to"]), []).append(bool(p["connected"]))
        label = f"{p['protocol']}/{p['port']}"
        if label not in ports.setdefault(p["to"], []):
            ports[p["to"]].append(label)
    label_width = max(len(f"{number[r]} {r}") for r in sources)
    width = max(max(len(number[t]), len(ports[t])) for t in targets)
    lines = [" " * label_width + "  " + " ".join(number[t].rjust(width) for t in targets)]
    for s in sources:
        row = []
        for t in targets:
            marks = cells.get((s, t), [])
            text = "".join("+" if ok else "x" for ok in marks) or "."
            pad = " " * (width - len(text))
            if color and marks:
                text = "".join(f"{GREEN}■{RESET}" if ok else f"{RED}■{RESET}" for ok in marks)
            row.append(pad + text)
        lines.append(f"{number[s]} {s}".ljust(label_width) + "  " + " ".join(row))
    all_ports = {tuple(v) for v in ports.values()}
    if len(all_ports) == 1:
        lines.append(f"each cell: {' '.join(next(iter(all_ports)))}")
    else:
        lines += [f"{number[t]} {t}: {' '.join(ports[t])}" for t in targets]
    reached = sum(1 for p in probes if p["connected"])
    lines.append(f"{reached}/{len(probes)} probes connected")
    return "\n".join(lines)
