"""``/healthz`` and ``/metrics`` over plain HTTP, served from a background thread.

``/healthz`` answers 200 ``ok`` once the agent is ready (first full sync
done), followed by a line per problem that leaves some pods out (a pool the
node cannot serve), and 503 with the reason before; ``/metrics`` is
Prometheus' text format. Other paths are the ``routes`` the agent adds (``/flows``:
``tabby.agent.flows``), each a function of the query string; anything else is
404. A server made without ``metrics`` and ``health`` serves only its routes (the
flows listener on the node's address: no /metrics there). Request logging goes to the
``logging`` module at debug level instead of stderr.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tabby.errors import ConfigError

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
FLOWS_PORT = 9097  # the agents' --flows-addr port, where tabby flows finds them by Node
# An extra path's handler: query string -> (status, content type, body)
Route = Callable[[str], tuple[int, str, str]]


def parse_addr(text: str, flag: str = "--metrics-addr") -> tuple[str, int]:
    """``127.0.0.1:9099`` or ``[::1]:9099`` -> (host, port); ConfigError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9099")
    return host.strip("[]") or "0.0.0.0", int(port)


class HealthServer:
    """Serve health and metrics on ``addr``; bound once constructed (port 0: any free)."""

    def __init__(self, addr: tuple[str, int], metrics: Callable[[], str] | None,
                 health: Callable[[], tuple[bool, str]] | None,
                 routes: Mapping[str, Route] | None = None, purpose: str = "metrics") -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._serve(self)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http: " + format, *args)

        self._metrics = metrics
        self._health = health
        self.routes: dict[str, Route] = dict(routes or {})  # may be added before start()
        family_v6 = ":" in addr[0]
        server_cls = _V6Server if family_v6 else ThreadingHTTPServer
        try:
            self._server = server_cls(addr, Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {addr[0]}:{addr[1]} for {purpose}:"
                              f" {exc.strerror}") from exc
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.2}, name="health-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        path, _, query = req.path.partition("?")
        route = self.routes.get(path)
        if route is not None:
            self._reply(req, *route(query))
        elif path == "/healthz" and self._health is not None:
            ok, reason = self._health()
            self._reply(req, 200 if ok else 503, "text/plain; charset=utf-8", f"{reason}\n")
        elif path == "/metrics" and self._metrics is not None:
            self._reply(req, 200, PROMETHEUS_TEXT, self._metrics())
        else:
            self._reply(req, 404, "text/plain; charset=utf-8", "not found\n")

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, code: int, content_type: str, body: str) -> None:
        data = body.encode()
        req.send_response(code)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


class _V6Server(ThreadingHTTPServer):
    import socket as _socket

    address_family = _socket.AF_INET6
