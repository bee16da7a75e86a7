"""``tabby ui [--listen HOST:PORT]``: serve the web page (``tabby.ui``) until interrupted.

The page shows the selected lab's topology (or, outside a lab, the datastore's
nodes and pods), the pod-to-pod reachability matrix (what policy would decide,
or the lab's live probes on request) and the flow stream of every node's agent,
read with ``tabby flows``' reader (``tabby.cli.flows.collect``).

The address is ``--listen``, else ``$TABBY_UI_LISTEN``, else 127.0.0.1:8099
(port 0: any free port; the URL is printed). The page has no authentication:
a non-loopback address is served only when given with ``--listen`` (with a
warning), never from the environment.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import TYPE_CHECKING

from tabby.errors import ConfigError

if TYPE_CHECKING:
    from tabby.agent.flowrecord import FlowFilter, FlowRecord
    from tabby.lab.probe import ProbeResult
    from tabby.lab.state import LabState
    from tabby.snapshot import Snapshot

LISTEN_ENV = "TABBY_UI_LISTEN"
DEFAULT_LISTEN = "127.0.0.1:8099"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ui", help="a web page: topology, reachability matrix, live flows",
                       description="Serve a web page with the lab's topology, the pod-to-pod"
                       " reachability matrix and every agent's flows with the rule that"
                       " decided each, live. Open the printed address in a browser.")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help=f"where to serve (default: ${LISTEN_ENV}, else {DEFAULT_LISTEN};"
                        " port 0: any free port). The page has no authentication: a"
                        " non-loopback address is served only when given here")
    p.add_argument("--agent-addr", action="append", default=[], metavar="HOST:PORT",
                   help="outside a lab: an agent to read flows from (repeatable; default:"
                        " this node's)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                   help="how long to wait for each agent's flows (default: 2)")
    p.set_defaults(func=cmd_ui)


def parse_listen(text: str, *, explicit: bool) -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` / ``localhost:PORT`` -> (ip, port); ConfigError if bad."""
    where = "--listen" if explicit else f"${LISTEN_ENV}"
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{where} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8099")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{where} {text!r}: {host!r} is not an IP address"
                          " (write 127.0.0.1, [::1] or an address of this machine)") from None
    if not ip.is_loopback and not explicit:
        raise ConfigError(f"{where} {text!r}: not a loopback address; the page has no"
                          " authentication, so it is exposed only when --listen says so")
    return str(ip), int(port)


def cmd_ui(args: argparse.Namespace) -> int:
    from tabby.cli.context import datastore_url, lab_name, require_existing, running_lab
    from tabby.ui.server import Sources, UIServer
    explicit = args.listen is not None
    host, port = parse_listen(args.listen or os.environ.get(LISTEN_ENV) or DEFAULT_LISTEN,
                              explicit=explicit)
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    url = datastore_url(args)
    require_existing(url)
    flow_args = argparse.Namespace(**{**vars(args), "node": None})

    def lab() -> LabState | None:
        return running_lab(args)  # type: ignore[return-value]

    def flows(flt: FlowFilter) -> tuple[list[FlowRecord], list[str]]:
        from tabby.cli.flows import collect, targets
        return collect(targets(flow_args), flt, args.timeout)

    server = UIServer((host, port), Sources(snapshot=lambda: load_snapshot(url), lab=lab,
                                            flows=flows, probe=probe))
    if not ipaddress.ip_address(host).is_loopback:
        print(f"warning: serving on {host}, not a loopback address: anyone who reaches it"
              " sees the cluster's pods and flows", file=sys.stderr)
    where = f"lab {lab_name(args)}" if lab() is not None else f"datastore {url}"
    print(f"tabby ui: {server.url} ({where}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def load_snapshot(url: str) -> Snapshot:
    """The store's objects now (a fresh read: the page's server reloads at most every second)."""
    from tabby.agent.cache import StoreCache
    from tabby.store import open_store
    store = open_store(url)
    try:
        cache = StoreCache(store, "")
        cache.load()
        return cache.snapshot()
    finally:
        store.close()


def probe(lab: LabState, protocol: str, port: int, family: str) -> list[ProbeResult]:
    from tabby.lab.probe import probe as lab_probe
    return lab_probe(lab, port=port, protocol=protocol, family=family, timeout=1.0)
