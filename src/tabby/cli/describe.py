"""``tabby describe KIND NAME | KIND/NAME``: one object and what matters about it.

    IPPool  its spec, its usage and its blocks (which node, how full)
    Node    its addresses, the blocks affine to it, its BGP peers as BIRD sees them
            (in a lab: that node's BIRD; elsewhere this machine's, when it is that node)
    Pod     node, phase, IPs, its workload endpoint (interface, networks) and the
            policies that select it, per direction, in the order they are evaluated
    others  metadata, then spec and status

What it reads never changes anything; a part that cannot be read (BIRD down,
no endpoint yet) is printed as such, and the rest is still shown.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import yaml

from tabby.cli import kinds
from tabby.cli.context import DEFAULT_BIRD_SOCKET, lab_name, open_client
from tabby.cli.output import age, table
from tabby.cli.usage import UsageError, intermixed
from tabby.errors import NotFound, TabbyError
from tabby.model import IPPool, Node, Pod, Resource, WorkloadEndpoint
from tabby.store.client import Client

Lines = list[str]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("describe", help="show one object in detail (pool: blocks and usage;"
                       " node: BGP peers and blocks; pod: endpoint, IPs, policies)")
    p.add_argument("words", nargs="+", metavar="KIND NAME | KIND/NAME")
    p.add_argument("-n", "--namespace", help="namespace (default: default)")
    p.set_defaults(func=cmd_describe)
    intermixed(p)


def cmd_describe(args: argparse.Namespace) -> int:
    wanted = kinds.targets(args.words)
    if any(not t.names for t in wanted):
        raise UsageError("describe needs a name: KIND NAME or KIND/NAME")
    client = open_client(args)
    errors = 0
    first = True
    for t in wanted:
        ns = (args.namespace or "default") if t.cls.KIND.namespaced else ""
        for name in t.names:
            try:
                obj = client.get(t.cls, name, ns)
            except NotFound:
                print(f"error: {kinds.display(t.cls, name)} not found"
                      + (f" in namespace {ns!r}" if ns else ""), file=sys.stderr)
                errors += 1
                continue
            if not first:
                print()
            first = False
            print("\n".join(describe(client, obj, args)))
    return 1 if errors else 0


def describe(client: Client, obj: Resource, args: argparse.Namespace) -> Lines:
    lines = header(obj)
    special: dict[type[Resource], Callable[[Client, Any, argparse.Namespace], Lines]] = {
        IPPool: _pool, Node: _node, Pod: _pod}
    extra = special.get(type(obj))
    if extra is None:
        return lines + body(obj)
    return lines + extra(client, obj, args)


def header(obj: Resource) -> Lines:
    m = obj.meta
    lines = [f"Name:         {m.name}"]
    if obj.KIND.namespaced:
        lines.append(f"Namespace:    {m.namespace}")
    lines.append(f"Kind:         {obj.KIND.kind} ({obj.KIND.api_version})")
    lines.append(_map("Labels:", m.labels))
    lines.append(_map("Annotations:", m.annotations))
    lines.append(f"Created:      {m.creation_timestamp or '<unknown>'} ({age(obj)} ago)")
    return lines


def _map(title: str, values: Any) -> str:
    if not values:
        return f"{title:<14}<none>"
    items = [f"{k}={v}" for k, v in sorted(values.items())]
    return f"{title:<14}" + "\n              ".join(items)


def body(obj: Resource) -> Lines:
    data = {k: v for k, v in obj.to_manifest().items()
            if k not in ("apiVersion", "kind", "metadata")}
    if not data:
        return []
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    return [(line[:1].upper() + line[1:]) if line and not line[0].isspace() else line
            for line in text.splitlines()]


def _indent(text: str) -> Lines:
    return ["  " + line for line in text.splitlines()]


def _pool(client: Client, pool: IPPool, args: argparse.Namespace) -> Lines:
    from tabby.ipam import report as rpt
    lines = body(pool)
    report = rpt.show(client)
    usage = [p for p in report.pools if p.name == pool.meta.name]
    lines.append("Usage:")
    if usage:
        u = usage[0]
        lines.append(f"  {u.used} used, {u.reserved} reserved, {u.free} free of {u.size}"
                     f" addresses in {u.blocks} blocks")
    blocks = [b for b in report.blocks if b.pool == pool.meta.name]
    lines.append("Blocks:")
    if not blocks:
        lines.append("  <none> (no node has claimed a block yet)")
    else:
        lines += _indent(table([[str(b.cidr), b.node or "<none>", str(b.used), str(b.free)]
                                for b in blocks], ["CIDR", "NODE", "USED", "FREE"]))
    return lines


def _node(client: Client, node: Node, args: argparse.Namespace) -> Lines:
    from tabby.ipam import report as rpt
    lines = body(node)
    blocks = [b for b in rpt.show(client).blocks if b.node == node.meta.name]
    lines.append("Blocks:")
    if not blocks:
        lines.append("  <none>")
    else:
        lines += _indent(table([[str(b.cidr), b.pool or "<none>", str(b.used), str(b.free)]
                                for b in blocks], ["CIDR", "POOL", "USED", "FREE"]))
    lines.append("BGP peers:")
    try:
        peers = bgp_peers(node.meta.name, args)
    except (TabbyError, OSError) as exc:
        lines.append(f"  unavailable: {exc}")
    else:
        lines += _indent(table(peers, ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"])
                         ) if peers else ["  <none>"]
    return lines


def bgp_peers(node: str, args: argparse.Namespace) -> list[list[str]]:
    """BIRD's view of ``node``'s peers: the lab node's BIRD, else this machine's."""
    from tabby.bgp.status import node_status
    from tabby.lab.state import load
    state = load(lab_name(args))
    if state is not None and any(n.name == node for n in state.nodes):
        from tabby.lab.bgp import bird_socket
        socket = bird_socket(state.node(node))
    else:
        socket = DEFAULT_BIRD_SOCKET
    if not socket.exists():
        raise TabbyError(f"no BIRD control socket at {socket} (BGP off, or not this node)")
    status = node_status(socket)
    return [[p.address, p.type, p.state, p.since, p.info] for p in status.peers]


def _pod(client: Client, pod: Pod, args: argparse.Namespace) -> Lines:
    lines = [f"Node:         {pod.node_name or '<none>'}",
             f"Status:       {pod.status.phase}",
             "IPs:          " + (", ".join(str(ip) for ip in pod.status.pod_ips) or "<none>")]
    eps = [w for w in client.list(WorkloadEndpoint, pod.meta.namespace)
           if w.spec.pod == pod.meta.name]
    lines.append("Endpoint:")
    if not eps:
        lines.append("  <none> (not wired yet)")
    for w in eps:
        nets = ", ".join(str(n) for n in w.spec.ip_networks) or "<none>"
        lines += [f"  {w.meta.name}", f"    Node:       {w.spec.node}",
                  f"    Interface:  {w.spec.interface_name or '<none>'}",
                  f"    Networks:   {nets}"]
    lines.append("Policies:")
    lines += policies(client, pod) if eps else ["  <none> (no endpoint to select)"]
    return lines


def policies(client: Client, pod: Pod) -> Lines:
    """The policies selecting the pod's endpoint, per direction, in evaluation order."""
    from tabby.agent.cache import StoreCache
    from tabby.policy.explain import find_pod
    from tabby.policy.program import build_program
    cache = StoreCache(client.store, "")
    cache.load()
    program = build_program(cache.snapshot(), None)
    entity = find_pod(program, pod.meta.namespace, pod.meta.name)
    applied = program.endpoints.get(entity.key)
    lines: Lines = []
    for direction in ("ingress", "egress"):
        keys = applied.get("normal", direction) if applied is not None else ()
        names = [program.compiled[k].policy.ref.display for k in keys if k in program.compiled]
        lines.append(f"  {direction.capitalize() + ':':<9} "
                     + (", ".join(names) if names else "<none> (allowed: no policy selects it)"))
    return lines
