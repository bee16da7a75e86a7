"""``tabby version``: which tabby this is, and which tabby the node agents run.

    $ tabby version
    tabby 0.1.0
    agent on node-1 (netns dcx-node-1, 127.0.0.1:9099): tabby 0.1.0, Python 3.11.2
    agent on node-2 (netns dcx-node-2, 127.0.0.1:9099): not reachable: connection refused
    $ tabby version --client -o json
    {"version": "0.1.0", "python": "3.11.2", "distribution": "tabby-network",
     "client": {"version": "0.1.0", "python": "3.11.2", "distribution": "tabby-network"}}

The client's version is ``tabby.__version__`` (the single source: the
distribution's metadata is generated from it), so a checkout that is not
installed answers too. The first line of the text form is always the client's.

An agent's version is read from its ``/metrics``: the ``tabby_build_info``
gauge (``tabby.agent.metrics``). Which agents: the one at ``--agent-addr HOST:PORT``
if given; else in a lab that is up (``--lab`` / ``$TABBY_LAB``) every node's,
each inside its node's namespace (``--node N``: one); else this machine's agent
at the agent's default address, 127.0.0.1:9099. An agent that does not answer is
reported, not an error: the exit code is 0 whenever the client could tell.

``-o json`` keeps the keys it always had (the client's ``version``, ``python``,
``distribution`` at the top) and adds ``client`` (the same three) and
``agents`` (absent with ``--client``): one object per agent asked, every key
always present, ``null`` where unknown::

    {"node": "node-1", "netns": "dcx-node-1", "address": "127.0.0.1:9099",
     "reachable": true, "version": "0.1.0", "python": "3.11.2", "error": null}
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import tabby
from tabby.agent.metrics import BUILD_INFO
from tabby.errors import ConfigError, TabbyError, UsageError

DEFAULT_AGENT_ADDR = "127.0.0.1:9099"  # tabby.cli.agent's --metrics-addr default
_SAMPLE = re.compile(r"^" + BUILD_INFO + r"\{(?P<labels>.*)\}\s+(?P<value>\S+)\s*$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Target:
    """One agent to ask: its node, the namespace its port lives in, where it listens."""

    node: str
    netns: str | None
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AgentVersion:
    node: str
    netns: str | None
    address: str
    reachable: bool
    version: str | None
    python: str | None
    error: str | None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "version", help="print tabby's version, and the node agents' where reachable",
        description="Print the client's version, then each node agent's, read from the"
        " tabby_build_info metric of its /metrics: the agent at --agent-addr, else in a lab"
        " that is up (--lab, $TABBY_LAB) every node's agent, else this machine's agent at"
        f" {DEFAULT_AGENT_ADDR}. An agent that does"
        " not answer is reported; the exit code stays 0.")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--client", action="store_true",
                   help="the client's version only: ask no agent")
    p.add_argument("--node", metavar="N", help="in a lab: only node N's agent")
    p.add_argument("--agent-addr", type=_addr, metavar="HOST:PORT",
                   help=f"ask the agent serving /metrics there (default: the lab's agents if a"
                   f" lab is up, else {DEFAULT_AGENT_ADDR})")
    p.add_argument("--timeout", type=_seconds, default=2.0, metavar="S",
                   help="seconds to wait for each agent (default: 2)")
    p.set_defaults(func=cmd_version)


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9099")
    return host.strip("[]"), int(port)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, more than 0, at most 60")
    return value


def info() -> dict[str, str]:
    return {"version": tabby.__version__, "python": platform.python_version(),
            "distribution": tabby.DISTRIBUTION}


# -- pure ---------------------------------------------------------------------

def parse_build_info(metrics: str) -> dict[str, str] | None:
    """The labels of the first ``tabby_build_info`` sample in Prometheus text, or None."""
    for line in metrics.splitlines():
        match = _SAMPLE.match(line)
        if match:
            return {k: re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], v)
                    for k, v in _LABEL.findall(match["labels"])}
    return None


def answer(target: Target, metrics: str | None, error: str | None) -> AgentVersion:
    """What ``/metrics`` (or the failure to read it) says about the agent's version."""
    if metrics is None:
        return AgentVersion(target.node, target.netns, target.address, False, None, None,
                            error or "no answer")
    labels = parse_build_info(metrics)
    if labels is None or "version" not in labels:
        return AgentVersion(target.node, target.netns, target.address, True, None, None,
                            f"its /metrics has no {BUILD_INFO}: not a tabby agent, or one"
                            " built before that metric")
    return AgentVersion(target.node, target.netns, target.address, True, labels["version"],
                        labels.get("python"), None)


def render_text(client: dict[str, str], agents: list[AgentVersion] | None) -> str:
    lines = [f"tabby {client['version']}"]
    for a in agents or ():
        where = f"netns {a.netns}, {a.address}" if a.netns else a.address
        if a.version is not None:
            state = f"tabby {a.version}, Python {a.python or 'unknown'}"
        else:
            state = f"not reachable: {a.error}" if not a.reachable else str(a.error)
        lines.append(f"agent on {a.node} ({where}): {state}")
    return "\n".join(lines)


def render_json(client: dict[str, str], agents: list[AgentVersion] | None) -> str:
    out: dict[str, object] = {**client, "client": client}
    if agents is not None:
        out["agents"] = [asdict(a) for a in agents]
    return json.dumps(out, indent=2)


# -- I/O ----------------------------------------------------------------------

def targets(args: argparse.Namespace) -> list[Target]:
    """The agents to ask: the one at --agent-addr, else the lab's nodes (or one), else
    this machine's at the default address."""
    from tabby.cli.context import lab_name, running_lab
    if args.agent_addr:
        return [Target("this node", None, *args.agent_addr)]
    lab = running_lab(args)
    if lab is None:
        if args.node:
            raise ConfigError(f"--node {args.node}: no lab named {lab_name(args)!r} is up"
                              " (use --lab NAME; outside a lab, --agent-addr HOST:PORT)")
        return [Target("this node", None, *_addr(DEFAULT_AGENT_ADDR))]
    nodes = list(lab.nodes)  # type: ignore[attr-defined]
    names = [n.name for n in nodes]
    if args.node and args.node not in names:
        raise ConfigError(f"lab {lab_name(args)} has no node {args.node!r} (one of"
                          f" {', '.join(names)})")
    from tabby.lab.builder import AGENT_METRICS
    host, port = _addr(AGENT_METRICS)
    return [Target(n.name, n.netns, host, port) for n in nodes
            if not args.node or n.name == args.node]


def fetch_metrics(target: Target, timeout: float) -> tuple[str | None, str | None]:
    """(the body of /metrics, None) or (None, why not)."""
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        with _inside(target.netns):
            conn.connect()  # the socket belongs to the namespace it is made in
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    except TimeoutError:
        return None, f"no answer within {timeout:g}s"
    except OSError as exc:
        return None, (exc.strerror or str(exc)).lower()
    except http.client.HTTPException as exc:
        return None, f"not an HTTP answer ({type(exc).__name__})"
    except TabbyError as exc:  # the node's namespace is gone
        return None, str(exc)
    finally:
        conn.close()
    if resp.status != 200:
        return None, f"GET /metrics answered HTTP {resp.status}"
    return body, None


def _inside(netns: str | None) -> AbstractContextManager[None]:
    if netns is None:
        return nullcontext()
    from tabby.dataplane.netlink import entered_netns
    return entered_netns(f"/var/run/netns/{netns}")


def cmd_version(args: argparse.Namespace) -> int:
    client = info()
    agents: list[AgentVersion] | None = None
    if args.client and (args.node or args.agent_addr):
        raise UsageError("--client asks no agent: drop --node and --agent-addr")
    if args.node and args.agent_addr:
        raise UsageError("--node and --agent-addr exclude each other: --node picks a lab"
                         " node, --agent-addr one agent's address")
    if not args.client:
        agents = [answer(t, *fetch_metrics(t, args.timeout)) for t in targets(args)]
    print(render_json(client, agents) if args.output == "json" else render_text(client, agents))
    return 0
