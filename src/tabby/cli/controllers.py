"""``tabby controllers``: the cluster-wide controllers (one per cluster, not per node)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("controllers", help="cluster-wide controllers (LoadBalancer addresses)",
                       description="Run tabby's cluster-wide controllers in the foreground, as"
                       " Calico's kube-controllers: Services of type LoadBalancer get addresses"
                       " from IP pools with allowedUses [LoadBalancer] (status.loadBalancer)."
                       " Use with the kubernetes datastore; SIGTERM stops it.")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="default: info")
    p.set_defaults(func=cmd_controllers)


def cmd_controllers(args: argparse.Namespace) -> int:
    from tabby.cli.context import datastore_url
    from tabby.kube.lbipam import LoadBalancerController
    from tabby.store import open_store

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s controllers %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with open_store(datastore_url(args)) as store:
        print("ready", flush=True)
        LoadBalancerController(store).run(stop)
    return 0
