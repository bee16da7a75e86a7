"""``tabby node diags [--node N] [--dir DIR]``: one tarball with what a bug report needs.

    agent.log          the node agent's log (a lab node's, or --agent-log PATH)
    bird-*.txt         BIRD's state through birdc: status, protocols, routes
    nft.txt            the ``inet tabby`` table as the kernel has it
    ip-*.txt           links, addresses, routes (every table, both families), rules, neighbours
    store.yaml         the store's view of the node: Node, its endpoints, blocks, affinities,
                       and the cluster's BGP configuration and peers
    errors.txt         every part that could not be collected, and why

In a lab (``--lab``/``$TABBY_LAB``) the commands run in node N's namespace and
read its BIRD socket; elsewhere they run here, for this machine's node. A part
that fails is recorded in errors.txt and the rest is still collected.
``plan`` (which commands, which files) is separate from running them.
"""

from __future__ import annotations

import argparse
import datetime
import io
import socket
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tabby.cli.context import DEFAULT_BIRD_SOCKET, lab_name, open_client
from tabby.errors import ConfigError, TabbyError

TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class Where:
    node: str
    netns: str | None  # None: this machine's namespace
    bird_socket: Path
    agent_log: Path | None


@dataclass(frozen=True, slots=True)
class Command:
    filename: str
    argv: tuple[str, ...]


def register(node_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = node_sub.add_parser("diags", help="collect a tarball for a bug report: agent log, BIRD,"
                            " nft table, routes, the store's view of the node")
    d.add_argument("--node", metavar="N", help="the node (in a lab: e.g. node-1; default:"
                   " this machine's hostname)")
    d.add_argument("--dir", type=Path, default=Path("."), metavar="DIR",
                   help="where to write the tarball (default: the current directory)")
    d.add_argument("--agent-log", type=Path, metavar="PATH",
                   help="the agent's log file (default: a lab node's)")
    d.add_argument("--socket", type=Path, metavar="PATH", help="BIRD's control socket")
    d.set_defaults(func=cmd_diags)


def locate(args: argparse.Namespace) -> Where:
    from tabby.lab.state import load
    state = load(lab_name(args))
    if state is not None:
        names = [n.name for n in state.nodes]
        if not args.node:
            raise ConfigError(f"lab {state.name}: which node? --node N (one of"
                              f" {', '.join(names)})")
        if args.node not in names:
            raise ConfigError(f"lab {state.name} has no node {args.node!r} (one of"
                              f" {', '.join(names)})")
        from tabby.lab.bgp import bird_socket
        record = state.node(args.node)
        return Where(args.node, record.netns, args.socket or bird_socket(record),
                     args.agent_log or record.agent_log)
    return Where(args.node or socket.gethostname(), None, args.socket or DEFAULT_BIRD_SOCKET,
                 args.agent_log)


def plan(where: Where) -> list[Command]:
    """The commands to run and the file each one's output goes to."""
    prefix: tuple[str, ...] = ("ip", "netns", "exec", where.netns) if where.netns else ()
    sock = str(where.bird_socket)
    commands = [
        ("ip-links.txt", ("ip", "-d", "link", "show")),
        ("ip-addresses.txt", ("ip", "addr", "show")),
        ("ip-routes-v4.txt", ("ip", "-4", "route", "show", "table", "all")),
        ("ip-routes-v6.txt", ("ip", "-6", "route", "show", "table", "all")),
        ("ip-rules.txt", ("ip", "rule", "show")),
        ("ip-neighbours.txt", ("ip", "neigh", "show")),
        ("nft.txt", ("nft", "list", "table", "inet", "tabby")),
        ("bird-status.txt", ("birdc", "-s", sock, "show", "status")),
        ("bird-protocols.txt", ("birdc", "-s", sock, "show", "protocols", "all")),
        ("bird-routes.txt", ("birdc", "-s", sock, "show", "route", "all")),
    ]
    return [Command(name, (*prefix, *argv)) for name, argv in commands]


def store_view(args: argparse.Namespace, node: str) -> dict[str, Any]:
    from tabby.model import (
        BGPConfiguration,
        BGPPeer,
        BlockAffinity,
        IPAMBlock,
        Node,
        WorkloadEndpoint,
    )
    client = open_client(args)
    try:
        found = client.try_get(Node, node)
        return {
            "node": found.to_manifest() if found else None,
            "workloadEndpoints": [w.to_manifest() for w in client.list(WorkloadEndpoint)
                                  if w.spec.node == node],
            "blocks": [b.to_manifest() for b in client.list(IPAMBlock) if b.node == node],
            "affinities": [a.to_manifest() for a in client.list(BlockAffinity)
                           if a.spec.node == node],
            "bgpConfigurations": [c.to_manifest() for c in client.list(BGPConfiguration)],
            "bgpPeers": [p.to_manifest() for p in client.list(BGPPeer)],
        }
    finally:
        client.store.close()


def collect(where: Where, args: argparse.Namespace) -> tuple[dict[str, bytes], list[str]]:
    """Every file's content, and the error lines of the parts that failed."""
    files: dict[str, bytes] = {}
    errors: list[str] = []
    for cmd in plan(where):
        try:
            done = subprocess.run(cmd.argv, capture_output=True, timeout=TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{cmd.filename}: {' '.join(cmd.argv)}: {exc}")
            continue
        files[cmd.filename] = done.stdout + done.stderr
        if done.returncode != 0:
            errors.append(f"{cmd.filename}: {' '.join(cmd.argv)} exited {done.returncode}:"
                          f" {done.stderr.decode(errors='replace').strip()}")
    if where.agent_log is None:
        errors.append("agent.log: no agent log known here (give --agent-log PATH)")
    else:
        try:
            files["agent.log"] = where.agent_log.read_bytes()
        except OSError as exc:
            errors.append(f"agent.log: {where.agent_log}: {exc.strerror}")
    try:
        view = store_view(args, where.node)
        files["store.yaml"] = yaml.safe_dump(view, sort_keys=False).encode()
    except TabbyError as exc:
        errors.append(f"store.yaml: {exc}")
    files["errors.txt"] = ("".join(f"{e}\n" for e in errors) or "none\n").encode()
    return files, errors


def write_tarball(directory: Path, node: str, files: dict[str, bytes]) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    top = f"tabby-diags-{node}-{stamp}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mtime = int(datetime.datetime.now(datetime.UTC).timestamp())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return path


def cmd_diags(args: argparse.Namespace) -> int:
    where = locate(args)
    files, errors = collect(where, args)
    path = write_tarball(args.dir, where.node, files)
    print(f"diagnostics of node {where.node} written to {path}")
    for line in errors:
        print(f"warning: not collected: {line}")
    return 0
