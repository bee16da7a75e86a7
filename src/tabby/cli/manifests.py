"""``tabby manifests``: print tabby's install for a cluster as one multi-document YAML.

    tabby manifests [--pool-cidr CIDR ...] [--encapsulation None|VXLAN|VXLANCrossSubnet]
                    [--mtu N] [--image REF] [--bgp bird|none] > tabby.yaml

What it prints is ``tabby.kube.manifests.render``; with no options it is
manifests/tabby.yaml (``make manifests``).
"""

from __future__ import annotations

import argparse
import sys

from tabby.kube.manifests import DEFAULT_POOL, ENCAPSULATIONS, Options, render


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "manifests", help="print the install for a cluster (CRDs, RBAC, DaemonSet, ...)",
        description="Print tabby's install as one multi-document YAML for kubectl apply:"
        " CRDs, the tabby-system namespace, ServiceAccounts with least-privilege roles, the"
        " tabby-config ConfigMap, the tabby-node DaemonSet, the tabby-controllers Deployment"
        " and the IP pools.")
    p.add_argument("--pool-cidr", dest="pool_cidrs", action="extend", nargs="+", default=[],
                   metavar="CIDR", help=f"an IP pool, at most one per family (default:"
                   f" {DEFAULT_POOL}); repeatable")
    p.add_argument("--encapsulation", choices=ENCAPSULATIONS, default="VXLAN",
                   help="how pod traffic crosses between nodes (default: VXLAN)")
    p.add_argument("--mtu", type=int, metavar="N",
                   help="pod interface MTU (default: 1500, or 1450 with VXLAN)")
    p.add_argument("--image", metavar="REF",
                   help="the image of the agent and controllers (default: localhost/tabby:"
                   "VERSION)")
    p.add_argument("--bgp", choices=("bird", "none"),
                   help="run BIRD on every node (default: bird with --encapsulation None,"
                   " else none)")
    p.set_defaults(func=cmd_manifests)


def cmd_manifests(args: argparse.Namespace) -> int:
    opts = Options.create(args.pool_cidrs, args.encapsulation, args.mtu, args.image or "",
                          args.bgp or "")
    sys.stdout.write(render(opts))
    return 0
