"""``tabby ipam show | check | release --ip IP``: what IPAM holds and repairs."""

from __future__ import annotations

import argparse
import ipaddress
import json
from typing import Any

from tabby.cli.context import open_client
from tabby.cli.usage import UsageError
from tabby.ipam import IPAM
from tabby.ipam import report as rpt
from tabby.model import IPAMBlock, IPPool
from tabby.store.client import Client

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ipam", help="IP address management: show, check, release")
    verbs = p.add_subparsers(dest="ipam_command", metavar="VERB", required=True)
    show = verbs.add_parser("show", help="pools and utilisation; --show-blocks: blocks and"
                            " affinities too; --ip IP: who holds one address")
    show.add_argument("-o", "--output", choices=("table", "json"), default="table")
    show.add_argument("--show-blocks", action="store_true",
                      help="the table shows every block and affinity too (json always has them)")
    show.add_argument("--ip", metavar="IP", help="one address: its pool, block and holder")
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
    if args.ip is not None:
        if args.show_blocks:
            raise UsageError("--ip shows one address; drop --show-blocks")
        return show_ip(args)
    report = rpt.show(open_client(args))
    if args.output == "json":
        print(json.dumps(rpt.report_to_dict(report), indent=2))
    elif args.show_blocks:
        print(rpt.render_report(report))
    else:  # calicoctl's default: the pools alone
        print(rpt.render_report(rpt.IPAMReport(report.pools, (), ())).split("\n\nBLOCKS")[0])
    return 0


def ip_info(client: Client, ip: IPAddress) -> dict[str, Any]:
    """Where ``ip`` stands: its pool, its block and node, and its holder if allocated."""
    pools = [p for p in client.list(IPPool) if p.spec.cidr.version == ip.version
             and ip in p.spec.cidr]
    out: dict[str, Any] = {"ip": str(ip), "pool": pools[0].meta.name if pools else None,
                           "block": None, "node": None, "allocated": False}
    for block in client.list(IPAMBlock):
        cidr = block.spec.cidr
        if cidr.version != ip.version or ip not in cidr:
            continue
        out["block"], out["node"] = str(cidr), block.node
        slot = block.spec.allocations[int(ip) - int(cidr.network_address)]
        if slot is not None:
            attr = block.spec.attributes[slot]
            out.update(allocated=True, handle=attr.handle_id, attributes=dict(attr.secondary))
    return out


def show_ip(args: argparse.Namespace) -> int:
    try:
        ip = ipaddress.ip_address(args.ip)
    except ValueError:
        raise UsageError(f"--ip {args.ip!r} is not an IPv4 or IPv6 address") from None
    info = ip_info(open_client(args), ip)
    if args.output == "json":
        print(json.dumps(info, indent=2))
        return 0
    if info["pool"] is None and info["block"] is None:
        print(f"{ip} is not in any IP pool")
        return 0
    where = f"pool {info['pool'] or '<none>'}, block {info['block'] or '<none (not claimed yet)>'}"
    if info["block"]:
        where += f" (node {info['node'] or '<none>'})"
    if not info["allocated"]:
        print(f"{ip} is not allocated: {where}")
        return 0
    attrs = ", ".join(f"{k}={v}" for k, v in sorted(info["attributes"].items()))
    print(f"{ip} is allocated: {where}, handle {info['handle']}"
          + (f", {attrs}" if attrs else ""))
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
