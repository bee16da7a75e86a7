"""``tabby controllers``: the cluster-wide controllers (one per cluster, not per node)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("controllers",
                       help="cluster-wide controllers (LoadBalancer addresses, node cleanup)",
                       description="Run tabby's cluster-wide controllers in the foreground, as"
                       " Calico's kube-controllers: Services of type LoadBalancer get addresses"
                       " from IP pools with allowedUses [LoadBalancer] (status.loadBalancer),"
                       " and a deleted Kubernetes Node's endpoints, addresses, IPAM blocks and"
                       " tabby Node are cleaned up (also, at start, those of nodes deleted"
                       " while it was not running), and Kubernetes Nodes' labels are copied"
                       " onto tabby's Nodes. Use with the kubernetes datastore;"
                       " SIGTERM stops it.")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="default: info")
    p.set_defaults(func=cmd_controllers)


def cmd_controllers(args: argparse.Namespace) -> int:
    from tabby.cli.context import datastore_url
    from tabby.kube.lbipam import LoadBalancerController
    from tabby.kube.nodecleanup import NodeCleanupController
    from tabby.store import open_store

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s controllers %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = datastore_url(args)
    with open_store(url) as store:
        runs: list[Callable[[threading.Event], None]] = [LoadBalancerController(store).run]
        if url.startswith("kubernetes:"):  # other datastores have no Kubernetes Nodes
            runs.append(NodeCleanupController(store).run)
        threads = [threading.Thread(target=run, args=(stop,), name=run.__qualname__,
                                    daemon=True) for run in runs]
        for thread in threads:
            thread.start()
        print("ready", flush=True)
        died = False
        while not stop.wait(1.0):
            died = not all(t.is_alive() for t in threads)
            if died:  # a bug (threading printed its traceback): end the rest, exit non-zero
                stop.set()
        for thread in threads:
            thread.join()
    return 1 if died else 0
