"""``tabby agent --node NAME``: run the node daemon in the foreground until SIGTERM.

As Calico's node, it takes its settings from the environment too (a DaemonSet's
``env``): ``NODENAME`` for ``--node``, ``TABBY_IP``/``TABBY_IP6`` and
``TABBY_IP_AUTODETECTION_METHOD``/``TABBY_IP6_AUTODETECTION_METHOD`` for the
address options; a flag given wins over its variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

from tabby.cni.wire import DEFAULT_SOCKET
from tabby.errors import ConfigError

if TYPE_CHECKING:
    from tabby.agent.autodetect import AddressPlan

DEFAULT_METRICS_ADDR = "127.0.0.1:9099"
DEFAULT_BGP_DIR = "/run/tabby/bird"
NODE_ENV = "NODENAME"  # Calico's
COUNTERS_ENV = "TABBY_POLICY_COUNTERS"  # on | off: per-rule counters (--policy-counters)
IP_ENV, IP6_ENV = "TABBY_IP", "TABBY_IP6"
METHOD_ENV, METHOD6_ENV = "TABBY_IP_AUTODETECTION_METHOD", "TABBY_IP6_AUTODETECTION_METHOD"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="the node daemon: CNI socket, routes, health and metrics",
                       description="Run tabby's node agent in the foreground. It serves the "
                       "CNI socket tabby-cni talks to, keeps the node's routes in step with the "
                       "datastore, and serves /healthz and /metrics. SIGTERM stops it and "
                       "leaves the dataplane as it is.")
    node_env = os.environ.get(NODE_ENV) or None  # read when the parser is built
    p.add_argument("--node", required=node_env is None, default=node_env,
                   help=f"this node's name (its Node object); required unless ${NODE_ENV}"
                        " is set")
    p.add_argument("--cni-socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"unix socket for tabby-cni (default: {DEFAULT_SOCKET})")
    p.add_argument("--metrics-addr", default=DEFAULT_METRICS_ADDR, metavar="HOST:PORT",
                   help=f"where /healthz and /metrics listen (default: {DEFAULT_METRICS_ADDR};"
                        " port 0 picks a free one)")
    p.add_argument("--mtu", type=int, default=1500,
                   help="pod interface MTU unless the CNI config sets one (default: 1500)")
    p.add_argument("--resync-interval", type=float, default=30.0, metavar="SECONDS",
                   help="force a full reconcile pass this often (default: 30; 0: never)")
    p.add_argument("--policy-setup-timeout", type=float, default=2.0, metavar="SECONDS",
                   help="CNI ADD returns once a pass has programmed the new pod's routes and"
                        " policy, or after this long (the pod stays fail-closed until then;"
                        " default: 2; 0: return at once, the next pass programs it)")
    p.add_argument("--bgp", choices=("none", "bird"), default="none",
                   help="how routes to other nodes' pods arrive: none (the agent writes them"
                        " from the datastore) or bird (BIRD learns them over BGP; the agent"
                        " runs BIRD); default: none")
    p.add_argument("--bgp-dir", default=DEFAULT_BGP_DIR, metavar="PATH",
                   help="BIRD's directory: bird.conf, the control socket bird.ctl, bird.pid,"
                        f" bird.log (default: {DEFAULT_BGP_DIR})")
    for flag, family, env in (("--ip", "IPv4", IP_ENV), ("--ip6", "IPv6", IP6_ENV)):
        p.add_argument(flag, metavar="none|autodetect|ADDRESS[/LEN]",
                       help=f"the Node's BGP {family} address: none leaves the stored one, "
                            "autodetect finds it with the method below (again every resync"
                            " interval), an address is written as given; unless none, the"
                            f" agent creates its Node if missing (default: ${env}, else none)")
    for flag, family, env in (("--ip-autodetection-method", "IPv4", METHOD_ENV),
                              ("--ip6-autodetection-method", "IPv6", METHOD6_ENV)):
        p.add_argument(flag, metavar="METHOD",
                       help=f"how {family} autodetection picks: first-found,"
                            " interface=REGEX[,..], skip-interface=REGEX[,..], can-reach=DEST,"
                            f" cidr=CIDR[,..], kubernetes-internal-ip (default: ${env}, else"
                            " first-found)")
    from tabby.cli.flows import add_agent_flags
    add_agent_flags(p)
    p.add_argument("--policy-counters", choices=("on", "off"), default=None,
                   help=f"count packets and bytes per policy rule in nft and export them in"
                        f" /metrics (default: ${COUNTERS_ENV}, else on)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="default: info")
    p.set_defaults(func=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    from tabby.agent.daemon import Agent, AgentConfig
    from tabby.agent.http import parse_addr
    from tabby.cli.flows import agent_settings
    from tabby.store import open_store, store_url

    node = str(args.node)
    if not 68 <= args.mtu <= 65535:
        raise ConfigError(f"--mtu {args.mtu}: must be within 68..65535")
    addresses = address_plans(args)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s")
    config = AgentConfig(node=node, cni_socket=args.cni_socket,
                         metrics_addr=parse_addr(args.metrics_addr), mtu=args.mtu,
                         resync_interval=args.resync_interval, bgp=args.bgp,
                         bgp_dir=args.bgp_dir, addresses=addresses,
                         policy_setup_timeout=args.policy_setup_timeout,
                         flows=agent_settings(args),
                         policy_counters=policy_counters(args))
    store = open_store(store_url(args.datastore))
    try:
        if any(p.mode == "autodetect" and p.method.kind == "kubernetes-internal-ip"
               for p in addresses):  # it reads the core Node (a Kubernetes store only)
            from tabby.kube.nodecleanup import serve_core_nodes
            serve_core_nodes(store)
        agent = Agent(config, store)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            agent.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        agent.run()
    finally:
        store.close()
    return 0


def policy_counters(args: argparse.Namespace) -> bool:
    """--policy-counters, else $TABBY_POLICY_COUNTERS, else on."""
    import os
    mode = args.policy_counters or os.environ.get(COUNTERS_ENV, "") or "on"
    if mode not in ("on", "off"):
        raise ConfigError(f"${COUNTERS_ENV}={mode!r}: expected on or off")
    return mode == "on"


def address_plans(args: argparse.Namespace) -> tuple[AddressPlan, AddressPlan]:
    """``--ip``, ``--ip6`` and their methods (each else from the environment), checked."""
    from tabby.agent.autodetect import AddressPlan

    def pick(value: str | None, env: str, default: str) -> str:
        return value or os.environ.get(env, "") or default

    return (AddressPlan.parse(4, pick(args.ip, IP_ENV, "none"),
                              pick(args.ip_autodetection_method, METHOD_ENV, "first-found"),
                              option="--ip", method_option="--ip-autodetection-method"),
            AddressPlan.parse(6, pick(args.ip6, IP6_ENV, "none"),
                              pick(args.ip6_autodetection_method, METHOD6_ENV, "first-found"),
                              option="--ip6", method_option="--ip6-autodetection-method"))
