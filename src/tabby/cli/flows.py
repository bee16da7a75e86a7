"""``tabby flows``: flow records from every node's agent, filtered, merged, or followed.

Each agent serves its node's records at ``/flows`` on its metrics listener
(``tabby.agent.flows``). In a lab (``--lab``) every node's agent is asked inside
the node's namespace (``--node N``: one of them). Outside a lab, the agents at
``--agent-addr HOST:PORT`` (repeatable); else every Node of the datastore at its
address (its first InternalIP, else its BGP IPv4, else IPv6 address) on the flows
port (the agents' ``--flows-addr``); with no Nodes (or no datastore), this
machine's agent at the default metrics address. Filters go to the agents and
are applied again to the merged answer (one ``FlowFilter``:
``tabby.agent.flowrecord``). ``-f`` asks again every second and prints what is
new or changed. A node that does not answer is named
on stderr; the others' records are still printed (exit 1 if none answered).

Also here: the agent's flow log flags (``add_agent_flags``), so their grammar
and help live beside the command that reads what they produce.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tabby.agent.http import FLOWS_PORT
from tabby.cli.usage import UsageError
from tabby.errors import ConfigError, TabbyError

if TYPE_CHECKING:
    from tabby.agent.flowrecord import FlowFilter, FlowRecord
    from tabby.agent.flows import FlowSettings
    from tabby.model import Node

DEFAULT_AGENT = ("127.0.0.1", 9099)
FLOW_LOGS_ENV = "TABBY_FLOW_LOGS"
COLUMNS = ("END", "NODE", "DIR", "VERDICT", "SOURCE", "DESTINATION", "PROTO", "PORT",
           "POLICY", "RULE", "PACKETS", "BYTES")


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    netns: str | None
    host: str
    port: int
    problem: str = ""  # why it cannot be asked (a Node without an address)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("flows", help="flow records: which policy and rule allowed or denied what",
                       description="List the flows every node's agent recorded: source,"
                       " destination, port, verdict, and the policy and rule that decided it.")
    p.add_argument("-n", "--namespace", default="", help="flows from or to pods of NS")
    p.add_argument("--pod", default="", metavar="[NS/]POD", help="flows from or to this pod")
    p.add_argument("--policy", default="", metavar="[NS/]NAME",
                   help="flows decided by this policy")
    p.add_argument("--verdict", default="", metavar="allow|deny|pass")
    p.add_argument("--port", default=None, metavar="N", help="destination port")
    p.add_argument("--since", default="15m", metavar="DURATION",
                   help="records active within this long (30s, 5m, 2h, 1d; default: 15m)")
    p.add_argument("--limit", default="1000", metavar="N", help="at most N records (1000)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument("--node", metavar="N", help="in a lab: only this node's agent")
    p.add_argument("--agent-addr", action="append", default=[], metavar="HOST:PORT",
                   help="an agent to ask (repeatable; default: the lab's, else this node's)")
    p.add_argument("--flows-port", type=int, default=FLOWS_PORT, metavar="N",
                   help=f"outside a lab: the port of the agents' --flows-addr on each Node's"
                        f" address (default: {FLOWS_PORT})")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    p.set_defaults(func=cmd_flows)


def build_filter(args: argparse.Namespace, now: float) -> FlowFilter:
    from tabby.agent.flowrecord import make_filter, parse_duration
    since = now - parse_duration(args.since)
    return make_filter(namespace=args.namespace, pod=args.pod, policy=args.policy,
                       verdict=args.verdict, port=args.port, since=since, limit=args.limit)


def cmd_flows(args: argparse.Namespace) -> int:
    if args.output == "json" and args.follow:
        raise UsageError("-f prints a table: drop -o json (or -f)")
    flt = build_filter(args, time.time())
    agents = targets(args)
    records, failed = collect(agents, flt, args.timeout)
    if len(failed) == len(agents):
        raise TabbyError("no agent answered: " + "; ".join(failed))
    for problem in failed:
        print(f"warning: {problem}", file=sys.stderr)
    if args.output == "json":
        print(json.dumps({"items": [r.to_json() for r in records]}, indent=2))
        return 0
    if not args.follow:
        print(render_table(records))
        return 0
    return follow(agents, flt, args.timeout, records)


def follow(agents: list[Agent], flt: FlowFilter, timeout: float, first: list[FlowRecord],
           sleep: Callable[[float], None] = time.sleep) -> int:
    import dataclasses
    seen: dict[tuple[Any, ...], tuple[int, str]] = {}

    def fresh(records: list[FlowRecord]) -> list[FlowRecord]:
        out = []
        for r in records:
            key = (r.node, r.flow_id, r.src, r.sport, r.dst, r.dport, r.protocol, r.start)
            if seen.get(key) != (r.packets, r.state):
                seen[key] = (r.packets, r.state)
                out.append(r)
        return out

    print(render_table(list(reversed(fresh(first))), header=True), flush=True)
    while True:
        sleep(1.0)
        since = max(flt.since, time.time() - 60)
        got, _ = collect(agents, dataclasses.replace(flt, since=since), timeout)
        new = fresh(got)
        if new:
            print(render_table(list(reversed(new)), header=False), flush=True)


def collect(agents: list[Agent], flt: FlowFilter, timeout: float
            ) -> tuple[list[FlowRecord], list[str]]:
    """Every agent's matching records, newest first, and a line per agent that failed."""
    from tabby.agent.flowrecord import FlowRecord
    records: list[FlowRecord] = []
    failed: list[str] = []
    for agent in agents:
        body, problem = fetch(agent, flt.to_query(), timeout)
        if body is None:
            failed.append(f"{agent.name}: {problem}")
            continue
        try:
            items = json.loads(body)["items"]
            records += [FlowRecord.from_json(item) for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            failed.append(f"{agent.name}: not a /flows answer ({exc})")
    records = [r for r in records if flt.matches(r)]
    records.sort(key=lambda r: (r.end, r.start), reverse=True)
    return records[:flt.limit], failed


def fetch(agent: Agent, query: dict[str, str], timeout: float) -> tuple[str | None, str]:
    if agent.problem:
        return None, agent.problem
    conn = http.client.HTTPConnection(agent.host, agent.port, timeout=timeout)
    try:
        with _inside(agent.netns):
            conn.connect()  # the socket belongs to the namespace it is made in
        conn.request("GET", "/flows?" + urllib.parse.urlencode(query))
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    except TimeoutError:
        return None, f"no answer within {timeout:g}s"
    except OSError as exc:
        return None, f"{agent.host}:{agent.port}: {(exc.strerror or str(exc)).lower()}"
    except http.client.HTTPException as exc:
        return None, f"not an HTTP answer ({type(exc).__name__})"
    except TabbyError as exc:
        return None, str(exc)
    finally:
        conn.close()
    if resp.status == 404:
        return None, "the agent serves no /flows (flow logs off, or an older agent)"
    if resp.status != 200:
        return None, f"GET /flows answered HTTP {resp.status}: {body.strip()}"
    return body, ""


def targets(args: argparse.Namespace) -> list[Agent]:
    """Whom to ask: ``--agent-addr``; else the lab's agents (unless ``--datastore`` is
    given and no ``--lab``); else the datastore's Nodes; else this node's agent."""
    from tabby.cli.context import lab_name, running_lab
    if args.agent_addr:
        if args.node:
            raise UsageError("--node and --agent-addr exclude each other")
        return [Agent(a, None, *_addr(a)) for a in args.agent_addr]
    lab_chosen = getattr(args, "lab", None) or not getattr(args, "datastore", None)
    lab = running_lab(args) if lab_chosen else None
    if lab is None:
        return node_agents(args)
    from tabby.lab.builder import AGENT_METRICS
    nodes = list(lab.nodes)  # type: ignore[attr-defined]
    if args.node and args.node not in [n.name for n in nodes]:
        raise ConfigError(f"lab {lab_name(args)} has no node {args.node!r}")
    host, port = _addr(AGENT_METRICS)
    return [Agent(n.name, n.netns, host, port) for n in nodes
            if not args.node or n.name == args.node]


def node_agents(args: argparse.Namespace) -> list[Agent]:
    """Every Node of the datastore (``--node``: one) at its address on the flows port;
    this node's agent when the datastore has no Nodes (or none is set up here)."""
    import os

    from tabby.cli.context import datastore_url, open_client
    from tabby.model import Node
    from tabby.store import ENV
    explicit = bool(getattr(args, "datastore", None) or os.environ.get(ENV))
    try:
        client = open_client(args)
    except ConfigError:
        if explicit or args.node:
            raise
        return [Agent("this node", None, *DEFAULT_AGENT)]
    try:
        nodes = client.list(Node)
    finally:
        client.store.close()
    if args.node:
        nodes = [n for n in nodes if n.meta.name == args.node]
        if not nodes:
            raise ConfigError(f"--node {args.node}: datastore {datastore_url(args)} has no"
                              " Node of that name (tabby get nodes lists them)")
    if not nodes:
        return [Agent("this node", None, *DEFAULT_AGENT)]
    port = int(getattr(args, "flows_port", FLOWS_PORT))
    return [node_agent(n, port) for n in sorted(nodes, key=lambda n: n.meta.name)]


def node_agent(node: Node, port: int) -> Agent:
    """Node ``node``'s agent: its first InternalIP, else its BGP IPv4, else IPv6 address
    (the agent's ``--flows-addr`` binds the Kubernetes Node's host IP, its InternalIP)."""
    import ipaddress
    name = node.meta.name
    for address, kind in node.spec.addresses:
        if kind == "InternalIP":
            try:
                return Agent(name, None, str(ipaddress.ip_address(address)), port)
            except ValueError:
                continue
    bgp = node.spec.bgp
    for iface in (bgp.ipv4_address, bgp.ipv6_address):
        if iface is not None:
            return Agent(name, None, str(iface.ip), port)
    return Agent(name, None, "", port, problem="its Node has no address (spec.addresses"
                 " InternalIP, spec.bgp.ipv4Address or ipv6Address): use --agent-addr")


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--agent-addr {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _inside(netns: str | None) -> AbstractContextManager[None]:
    if netns is None:
        return nullcontext()
    from tabby.dataplane.netlink import entered_netns
    return entered_netns(f"/var/run/netns/{netns}")


def render_table(records: list[FlowRecord], header: bool = True) -> str:
    from tabby.agent.flowrecord import PROTOCOLS
    rows = [COLUMNS] if header else []
    for r in records:
        policy = "-" if not r.policy_kind else "/".join(
            x for x in (r.policy_namespace, r.policy_name) if x)
        if r.reason == "tier-deny":
            policy = f"end of tier {r.tier}"
        elif r.reason == "no-policy":
            policy = "(no policy)"
        rows.append((time.strftime("%H:%M:%S", time.localtime(r.end)), r.node, r.direction,
                     r.verdict, r.src_ep or r.src, r.dst_ep or r.dst,
                     PROTOCOLS.get(r.protocol, str(r.protocol)), _dash(r.dport), policy,
                     _dash(r.rule), str(r.packets), str(r.bytes)))
    if not rows:
        return "No flows found."
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))] \
        if header else [0] * len(COLUMNS)
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


# -- the agent's flags --------------------------------------------------------------

def add_agent_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow-logs", choices=("on", "off"), default=None,
                   help=f"record flows (NFLOG + conntrack) and serve them at /flows"
                        f" (default: ${FLOW_LOGS_ENV}, else off; the lab turns it on)")
    p.add_argument("--flow-log-path", default=None, metavar="PATH",
                   help="the flow store, SQLite (default: /var/lib/tabby/flows.db)")
    p.add_argument("--flow-retention", type=float, default=7.0, metavar="DAYS",
                   help="delete flow records older than this (default: 7)")
    p.add_argument("--flow-max-records", type=int, default=500_000, metavar="N",
                   help="keep at most N flow records, the oldest go first (default: 500000)")
    p.add_argument("--flow-interval", type=float, default=15.0, metavar="SECONDS",
                   help="denied packets of one 5-tuple add up in one record this long"
                        " (default: 15; Calico's flowLogsFlushInterval)")
    p.add_argument("--flows-addr", default=None, metavar="HOST:PORT",
                   help=f"also serve /flows (and nothing else) here, for tabby flows on other"
                        f" machines: the node's address, e.g. $(HOST_IP):{FLOWS_PORT} (default:"
                        " none; /flows is always on the metrics listener)")
    p.add_argument("--flow-log-rate", type=int, default=1000, metavar="PER_SECOND",
                   help="the kernel logs at most this many packets a second (burst: a"
                        " fifth), the rest are counted (default: 1000)")


def agent_settings(args: argparse.Namespace) -> FlowSettings | None:
    """The flow settings the agent's flags (and $TABBY_FLOW_LOGS) ask for; None: off."""
    import os

    from tabby.agent.flows import FlowSettings
    from tabby.agent.flowstore import DEFAULT_PATH
    from tabby.policy.flowids import FlowLog
    mode = args.flow_logs or os.environ.get(FLOW_LOGS_ENV, "") or "off"
    if mode not in ("on", "off"):
        raise ConfigError(f"${FLOW_LOGS_ENV}={mode!r}: expected on or off")
    if mode == "off":
        return None
    if args.flow_retention <= 0:
        raise ConfigError(f"--flow-retention {args.flow_retention:g}: must be more than 0 days")
    if args.flow_max_records < 1:
        raise ConfigError(f"--flow-max-records {args.flow_max_records}: must be at least 1")
    if args.flow_interval <= 0:
        raise ConfigError(f"--flow-interval {args.flow_interval:g}: must be more than 0")
    if args.flow_log_rate < 1:
        raise ConfigError(f"--flow-log-rate {args.flow_log_rate}: must be at least 1")
    return FlowSettings(path=args.flow_log_path or DEFAULT_PATH, listen=flows_addr(args),
                        retention=args.flow_retention * 86400.0,
                        max_rows=args.flow_max_records, interval=args.flow_interval,
                        log=FlowLog(rate=args.flow_log_rate,
                                    burst=max(1, args.flow_log_rate // 5)))


def flows_addr(args: argparse.Namespace) -> tuple[str, int] | None:
    """``--flows-addr``, checked: a concrete address (flows name pods and policies, so
    the listener is bound to the node's address, never to every address)."""
    import ipaddress

    from tabby.agent.http import parse_addr
    text = getattr(args, "flows_addr", None)
    if not text:
        return None
    host, port = parse_addr(text, flag="--flows-addr")
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        raise ConfigError(f"--flows-addr {text!r}: {host!r} is not an IP address (give the"
                          " node's address, e.g. from the downward API's status.hostIP)") from None
    if unspecified:
        raise ConfigError(f"--flows-addr {text!r}: bind to the node's address, not every"
                          " address (flow records name pods and policies)")
    return host, port
