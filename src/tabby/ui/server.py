"""The page's HTTP server: static files from ``tabby/ui/static`` and three JSON endpoints.

    GET /                 index.html (then /app.js, /app.css)
    GET /api/topology     views.topology
    GET /api/matrix       ?protocol=tcp&port=80&family=ipv4&mode=policy|probe
    GET /api/flows        the /flows grammar (tabby.agent.flowrecord.FlowFilter.from_query):
                          since (epoch seconds; default 15 minutes ago), limit (200), ...

Everything the server reads from the world comes through ``Sources`` (the
store's snapshot, the lab's state, every agent's flows, the lab's probes), so
the server itself is a plain function of those. Bad query values answer 400
with ``{"error": ...}`` naming the parameter; agents that do not answer are
listed in the flows answer's ``errors`` while the others' records are shown.

The page has no authentication. Bound to a loopback address, requests must
name that address (or ``localhost``) in their Host header, so a web page
elsewhere cannot read the cluster through DNS rebinding.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from tabby.agent.flowrecord import FlowFilter, FlowRecord
from tabby.errors import ConfigError, TabbyError
from tabby.lab.probe import ProbeResult
from tabby.lab.state import LabState
from tabby.policy.program import PolicyProgram, build_program
from tabby.snapshot import Snapshot
from tabby.ui import views

log = logging.getLogger(__name__)

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
JSON_TYPE = "application/json"
FLOW_WINDOW = 15 * 60.0  # seconds of flows the page asks for by default
SNAPSHOT_TTL = 1.0  # the store is read at most this often, however many requests come


@dataclass(frozen=True, slots=True)
class Sources:
    """The world, as the server sees it (``tabby.cli.ui`` builds the real ones)."""

    snapshot: Callable[[], Snapshot]
    lab: Callable[[], LabState | None]
    flows: Callable[[FlowFilter], tuple[list[FlowRecord], list[str]]]
    # (lab, protocol, port, family) -> live probes between every pair of pods
    probe: Callable[[LabState, str, int, str], list[ProbeResult]]
    clock: Callable[[], float] = field(default=time.time)


class _Views:
    """The snapshot and its policy program, reloaded at most every SNAPSHOT_TTL."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()  # one probe run at a time
        self._loaded = -SNAPSHOT_TTL
        self._snapshot = Snapshot()
        self._program: tuple[Snapshot, PolicyProgram] | None = None

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if now - self._loaded >= SNAPSHOT_TTL:
                self._snapshot, self._loaded = self._sources.snapshot(), now
            return self._snapshot

    def program(self) -> PolicyProgram:
        """The policy program of the current snapshot, built once per snapshot."""
        snapshot = self.snapshot()
        with self._lock:
            if self._program is not None and self._program[0] is snapshot:
                return self._program[1]
        program = build_program(snapshot, None)
        with self._lock:
            self._program = (snapshot, program)
        return program

    def topology(self, query: dict[str, str]) -> dict[str, Any]:
        if query:
            raise ConfigError(f"/api/topology takes no parameters ({', '.join(query)})")
        topology = views.topology(self.snapshot(), self._sources.lab())
        return {**topology, "now": self._sources.clock()}

    def matrix(self, query: dict[str, str]) -> dict[str, Any]:
        lab = self._sources.lab()
        families = [f"ipv{f}" for f in lab.topology.families] if lab else ["ipv4", "ipv6"]
        protocol, port, family = views.parse_matrix_query(query, families)
        mode = query.get("mode", "policy")
        if mode == "policy":
            return views.policy_matrix(self.program(), protocol, port, family)
        if mode != "probe":
            raise ConfigError(f"mode {mode!r}: expected policy or probe")
        if lab is None:
            raise ConfigError("live probes need a lab: tabby lab up, then tabby ui --lab NAME")
        if protocol not in ("tcp", "udp"):
            raise ConfigError(f"protocol {protocol!r}: the lab probes tcp or udp")
        if len(lab.pods) > views.MAX_PODS:
            raise ConfigError(f"lab {lab.name} has {len(lab.pods)} pods: live probes cover at"
                              f" most {views.MAX_PODS} (use tabby lab probe --from)")
        with self._probe_lock:
            taken = self._sources.clock()
            results = self._sources.probe(lab, protocol, port, family)
        return views.probe_matrix(results, protocol, port, family, taken)

    def flows(self, query: dict[str, str]) -> dict[str, Any]:
        query = {"since": f"{self._sources.clock() - FLOW_WINDOW:.3f}", "limit": "200", **query}
        flt = FlowFilter.from_query(query)
        records, failed = self._sources.flows(flt)
        return {"items": [r.to_json() for r in records], "errors": failed,
                "now": self._sources.clock()}


class UIServer:
    """Serve the page on ``addr`` (port 0: any free one); bound once constructed."""

    def __init__(self, addr: tuple[str, int], sources: Sources) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._serve(self)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("ui: " + format, *args)

        self._views = _Views(sources)
        self._api: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
            "/api/topology": self._views.topology, "/api/matrix": self._views.matrix,
            "/api/flows": self._views.flows}
        server_cls = _V6Server if ":" in addr[0] else ThreadingHTTPServer
        try:
            self._server = server_cls(addr, Handler)
        except OSError as exc:
            raise ConfigError(_bind_error(addr, exc)) from exc
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        host, port = self.address
        loopback = ipaddress.ip_address(host).is_loopback
        self._hosts = {f"{h}:{port}" for h in (_bracket(host), "localhost")} if loopback \
            else None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{_bracket(host)}:{port}/"

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="ui-server",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        if self._hosts is not None and req.headers.get("Host", "") not in self._hosts:
            _reply(req, 403, "text/plain; charset=utf-8",
                   b"this page answers only requests addressed to its loopback address\n")
            return
        url = urllib.parse.urlsplit(req.path)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            body = resources.files("tabby.ui").joinpath("static", name).read_bytes()
            _reply(req, 200, content_type, body)
            return
        handler = self._api.get(url.path)
        if handler is None:
            _reply(req, 404, "text/plain; charset=utf-8", b"not found\n")
            return
        try:
            query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            status, answer = 200, handler(query)
        except TabbyError as exc:
            status, answer = 400, {"error": str(exc)}
        except Exception as exc:  # one bad request must not end the page's server
            log.exception("ui: %s failed", url.path)
            status, answer = 500, {"error": f"{type(exc).__name__}: {exc}"}
        _reply(req, status, JSON_TYPE, json.dumps(answer).encode())


def _reply(req: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
    req.send_response(status)
    req.send_header("Content-Type", content_type)
    req.send_header("Content-Length", str(len(body)))
    req.send_header("Cache-Control", "no-store")
    req.end_headers()
    req.wfile.write(body)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind_error(addr: tuple[str, int], exc: OSError) -> str:
    where = f"{_bracket(addr[0])}:{addr[1]}"
    if exc.errno == errno.EADDRINUSE:
        return f"--listen {where}: the port is in use; choose another with --listen HOST:PORT"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--listen {where}: no interface of this machine has that address"
    return f"--listen {where}: cannot listen: {(exc.strerror or str(exc)).lower()}"


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
