"""``tabby policy explain``: the verdict for a connection, and the policy and rule behind it.

    tabby policy explain --from NS/POD --to NS/POD|IP --port N [--protocol P]
                         [--family ipv4|ipv6] [-o table|json]

Pods resolve through the store's WorkloadEndpoints (in a lab: the lab's
datastore). The answer comes from the same compiled policy the agents render
into nftables (``tabby.policy.explain``). Exit code 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import ipaddress
import json

from tabby.agent.cache import StoreCache
from tabby.cli.context import open_client
from tabby.errors import TabbyError
from tabby.policy.explain import (
    Decision,
    Explanation,
    explain,
    find_pod,
    host_addresses,
    protocol_number,
)
from tabby.policy.index import Entity
from tabby.policy.program import build_program


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy", help="network policy tools")
    psub = p.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    e = psub.add_parser("explain", help="would a connection be allowed, and by which rule")
    e.add_argument("--from", dest="source", required=True, metavar="NS/POD",
                   help="the connecting pod")
    e.add_argument("--to", dest="target", required=True, metavar="NS/POD|IP",
                   help="the pod or address connected to")
    e.add_argument("--port", type=int, help="destination port (not for ICMP)")
    e.add_argument("--protocol", default="tcp", help="tcp (default), udp, sctp, icmp, ...")
    e.add_argument("--family", choices=("ipv4", "ipv6"),
                   help="address family for pod to pod (default: the first both have)")
    e.add_argument("--source-port", type=int, help="source port (default: unknown)")
    e.add_argument("-o", "--output", choices=("table", "json"), default="table")
    e.set_defaults(func=cmd_explain)
    from tabby.cli import whatif  # tabby policy whatif (its own module)
    whatif.register(psub)


def _pod_ref(text: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep:
        return "default", text
    if not ns or not name:
        raise TabbyError(f"{text!r}: expected NAMESPACE/POD")
    return ns, name


def cmd_explain(args: argparse.Namespace) -> int:
    protocol = protocol_number(args.protocol)
    if protocol not in (1, 58) and args.port is None:
        raise TabbyError("--port is required for that protocol")
    if args.port is not None and not 0 < args.port < 65536:
        raise TabbyError(f"--port {args.port} is outside 1..65535")
    client = open_client(args)
    try:
        cache = StoreCache(client.store, "")
        cache.load()
        snapshot = cache.snapshot()
    finally:
        client.store.close()
    program = build_program(snapshot, None)
    source = find_pod(program, *_pod_ref(args.source))
    target: Entity | ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        target = ipaddress.ip_address(args.target)
    except ValueError:
        target = find_pod(program, *_pod_ref(args.target))
    family = {"ipv4": 4, "ipv6": 6}.get(args.family or "")
    result = explain(program, source, target, protocol, args.port, family=family,
                     source_port=args.source_port, hosts=host_addresses(snapshot.nodes))
    if args.output == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render_table(result))
    return 0


def render_table(r: Explanation) -> str:
    p = r.packet
    proto = r.to_dict()["protocol"]
    port = f"/{p.dport}" if p.dport is not None else ""
    target = r.destination.ref if r.destination else str(p.dst)
    lines = [f"{r.source.ref} ({p.src}) -> {target} ({p.dst}) {proto}{port}:"
             f" {r.verdict.upper()}"]
    for d in (r.egress, r.ingress):
        lines.append(f"  {d.direction:<8} {_where(d)}: {d.summary()}")
        for o in d.logged:
            lines.append(f"           logged by {o.policy} {o.direction} rule {o.index}")
    return "\n".join(lines)


def _where(d: Decision) -> str:
    if d.endpoint is None:
        return "(outside)"
    return f"{d.endpoint.ref} on {d.endpoint.node}" if d.endpoint.node else d.endpoint.ref
