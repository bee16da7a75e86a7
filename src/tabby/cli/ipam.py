"""``tabby ipam show | check | release --ip IP``: what IPAM holds and repairs."""

from __future__ import annotations

import argparse
import json

from tabby.cli.context import open_client
from tabby.ipam import IPAM
from tabby.ipam import report as rpt


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ipam", help="IP address management: show, check, release")
    verbs = p.add_subparsers(dest="ipam_command", metavar="VERB", required=True)
    show = verbs.add_parser("show", help="pools, blocks, affinities and utilisation")
    show.add_argument("-o", "--output", choices=("table", "json"), default="table")
    show.set_defaults(func=cmd_show)
    check = verbs.add_parser(
        "check", help="leaked allocations, workloads without one, blocks of missing nodes")
    check.add_argument("-o", "--output", choices=("table", "json"), default="table")
    check.set_defaults(func=cmd_check)
    release = verbs.add_parser("release", help="free allocated addresses by IP")
    release.add_argument("--ip", action="append", required=True, metavar="IP",
                         help="an allocated address (repeatable)")
    release.set_defaults(func=cmd_release)


def cmd_show(args: argparse.Namespace) -> int:
    report = rpt.show(open_client(args))
    if args.output == "json":
        print(json.dumps(rpt.report_to_dict(report), indent=2))
    else:
        print(rpt.render_report(report))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    problems = rpt.check(open_client(args))
    if args.output == "json":
        print(json.dumps(rpt.problems_to_dict(problems), indent=2))
    else:
        print(rpt.render_problems(problems))
    return 1 if problems else 0


def cmd_release(args: argparse.Namespace) -> int:
    released = IPAM(open_client(args)).release_ips(args.ip)
    for ip in released:
        print(f"released {ip}")
    return 0
