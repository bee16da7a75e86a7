"""``tabby node status [--node N] [-o table|json]``: the node's BGP peers, as BIRD sees them.

Like ``calicoctl node status``: one table per address family with the peer's
address, type (node-to-node mesh, global, node specific, route reflector
client), BIRD's state, since when, and info (``Established``, or why not).
BIRD is asked over its control socket: ``--socket``, else in a lab (``--lab``
/ ``$TABBY_LAB``, when that lab is up) the socket of node ``--node``, else
this machine's agent's (``/run/tabby/bird/bird.ctl``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tabby.cli.context import DEFAULT_BIRD_SOCKET, lab_name
from tabby.cli.output import table
from tabby.errors import ConfigError

DEFAULT_SOCKET = DEFAULT_BIRD_SOCKET


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="this node's state: BGP peers, diagnostics")
    node = p.add_subparsers(dest="node_command", metavar="NODE_COMMAND", required=True)
    st = node.add_parser("status", help="BGP peers of this node (in a lab: of node N),"
                         " as BIRD sees them")
    st.add_argument("--node", metavar="N", help="in a lab: the node to ask (e.g. node-1)")
    st.add_argument("--socket", type=Path, metavar="PATH",
                    help=f"BIRD's control socket (default: the lab node's, else {DEFAULT_SOCKET})")
    st.add_argument("-o", "--output", choices=("table", "json"), default="table")
    st.set_defaults(func=cmd_status)
    from tabby.cli import diags
    diags.register(node)


def socket_for(args: argparse.Namespace) -> tuple[str, Path]:
    """(node name for the heading, control socket path)."""
    if args.socket is not None:
        return args.node or "this node", args.socket
    from tabby.lab.state import load
    state = load(lab_name(args))
    if state is None:
        if args.node:
            raise ConfigError(f"--node {args.node}: no lab named {lab_name(args)!r} is up"
                              " (use --lab NAME, or --socket PATH outside a lab)")
        return "this node", DEFAULT_SOCKET
    if not args.node:
        names = ", ".join(n.name for n in state.nodes)
        raise ConfigError(f"lab {state.name}: which node? --node N (one of {names})")
    from tabby.lab.bgp import bird_socket
    return args.node, bird_socket(state.node(args.node))


def cmd_status(args: argparse.Namespace) -> int:
    from tabby.bgp.status import node_status
    name, socket = socket_for(args)
    status = node_status(socket)
    if args.output == "json":
        print(json.dumps({"node": name, **status.to_dict()}, indent=2))
        return 0
    print(f"BIRD {status.version} is running on {name} (router id {status.router_id},"
          f" socket {socket})")
    for family in (4, 6):
        peers = [p for p in status.peers if p.family == family]
        print(f"\nIPv{family} BGP status")
        if not peers:
            print(f"No IPv{family} peers found.")
            continue
        print(table([[p.address, p.type, p.state, p.since, p.info] for p in peers],
                    ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]))
    return 0
