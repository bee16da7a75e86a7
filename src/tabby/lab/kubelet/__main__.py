"""``python -m tabby.lab.kubelet --lab NAME --node NODE --kubeconfig PATH``.

Logs to stderr; prints ``ready`` on stdout once the Node is registered and the
first list of its pods is queued (``tabby.lab.system.spawn_ready`` waits for
that line). SIGTERM or SIGINT: stop watching, let the workers finish the pod
they hold, exit 0; pods are left as they are. Exit 1 with a message when the
lab, the node or the kubeconfig is wrong.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tabby.errors import TabbyError
from tabby.lab.kubelet.api import KubeApi
from tabby.lab.kubelet.daemon import WORKERS, Kubelet


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tabby.lab.kubelet",
        description="The tabby lab's kubelet stand-in for one node (no containers: a netns,"
                    " CNI and a listener per pod).")
    parser.add_argument("--lab", required=True, help="the lab's name (tabby lab up --name)")
    parser.add_argument("--node", required=True, help="the lab node to stand in for (node-1 ...)")
    parser.add_argument("--kubeconfig", required=True, type=Path,
                        help="a kubeconfig for system:node:<node> in group system:nodes")
    parser.add_argument("--workers", type=int, default=WORKERS, help="pods handled at once")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s {args.node} %(levelname)s %(threadName)s %(message)s")
    try:
        kubelet = Kubelet(args.lab, args.node, KubeApi(args.kubeconfig), workers=args.workers)
    except (TabbyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: kubelet.stop())
    kubelet.run(on_ready=lambda: print("ready", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
