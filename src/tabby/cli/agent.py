"""``tabby agent --node NAME``: run the node daemon in the foreground until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from tabby.cni.wire import DEFAULT_SOCKET
from tabby.errors import ConfigError

DEFAULT_METRICS_ADDR = "127.0.0.1:9099"
DEFAULT_BGP_DIR = "/run/tabby/bird"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="the node daemon: CNI socket, routes, health and metrics",
                       description="Run tabby's node agent in the foreground. It serves the "
                       "CNI socket tabby-cni talks to, keeps the node's routes in step with the "
                       "datastore, and serves /healthz and /metrics. SIGTERM stops it and "
                       "leaves the dataplane as it is.")
    p.add_argument("--node", required=True, help="this node's name (its Node object)")
    p.add_argument("--cni-socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"unix socket for tabby-cni (default: {DEFAULT_SOCKET})")
    p.add_argument("--metrics-addr", default=DEFAULT_METRICS_ADDR, metavar="HOST:PORT",
                   help=f"where /healthz and /metrics listen (default: {DEFAULT_METRICS_ADDR};"
                        " port 0 picks a free one)")
    p.add_argument("--mtu", type=int, default=1500,
                   help="pod interface MTU unless the CNI config sets one (default: 1500)")
    p.add_argument("--resync-interval", type=float, default=30.0, metavar="SECONDS",
                   help="force a full reconcile pass this often (default: 30; 0: never)")
    p.add_argument("--bgp", choices=("none", "bird"), default="none",
                   help="how routes to other nodes' pods arrive: none (the agent writes them"
                        " from the datastore) or bird (BIRD learns them over BGP; the agent"
                        " runs BIRD); default: none")
    p.add_argument("--bgp-dir", default=DEFAULT_BGP_DIR, metavar="PATH",
                   help="BIRD's directory: bird.conf, the control socket bird.ctl, bird.pid,"
                        f" bird.log (default: {DEFAULT_BGP_DIR})")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="default: info")
    p.set_defaults(func=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    from tabby.agent.daemon import Agent, AgentConfig
    from tabby.agent.http import parse_addr
    from tabby.store import open_store, store_url

    if not 68 <= args.mtu <= 65535:
        raise ConfigError(f"--mtu {args.mtu}: must be within 68..65535")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {args.node} %(levelname)s %(name)s: %(message)s")
    config = AgentConfig(node=args.node, cni_socket=args.cni_socket,
                         metrics_addr=parse_addr(args.metrics_addr), mtu=args.mtu,
                         resync_interval=args.resync_interval, bgp=args.bgp,
                         bgp_dir=args.bgp_dir)
    store = open_store(store_url(args.datastore))
    try:
        agent = Agent(config, store)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            agent.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        agent.run()
    finally:
        store.close()
    return 0
