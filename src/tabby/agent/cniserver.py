"""The agent's CNI socket: decode tabby-cni's requests, call the pod handler, answer.

::

    tabby-cni --frame--> CNIServer (one thread per connection)
                           CNIRequest.from_wire -> handler.add/delete/check/status/gc
                           PodResult.render(cniVersion) | CNIError -> error object
              <--frame--

Every failure becomes an error object and the server keeps serving:
:class:`CNIError` passes through as raised; tabby's own errors map to CNI
codes (store ``Unavailable`` -> 11 try again later, ``IPAMError`` -> 100,
``ConfigError`` -> 7); anything else -> 999 naming the exception (logged
with its traceback here, never sent to the runtime).

The socket's directory is created, a stale socket file (nobody listening)
is replaced, a live one is refused, and the socket is chmod 0600: whoever can
write to it can wire pods. ``close()`` removes the socket it created.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import stat
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from tabby.cni import wire
from tabby.cni.protocol import CNIError, CNIRequest
from tabby.cni.results import PodResult
from tabby.errors import ConfigError, IPAMError, TabbyError, Unavailable

__all__ = ["CNIServer", "MetricsSink", "PodHandler", "dispatch", "error_for"]

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0  # seconds a client may take to send its request


class PodHandler(Protocol):
    """What the agent implements; the server calls it from many threads at once."""

    def add(self, req: CNIRequest) -> PodResult: ...  # idempotent for an existing container
    def delete(self, req: CNIRequest) -> None: ...  # idempotent; req.netns may be ""
    def check(self, req: CNIRequest) -> None: ...  # raise CNIError if wiring is off
    def status(self) -> None: ...  # raise CNIError(50, ...) if not ready
    def gc(self, valid: list[tuple[str, str]]) -> None: ...  # (container_id, ifname) in use


class MetricsSink(Protocol):
    def observe(self, command: str, seconds: float, ok: bool) -> None: ...


def error_for(exc: Exception, command: str = "") -> CNIError:
    """The CNI error object for an exception raised while serving ``command``."""
    if isinstance(exc, CNIError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, Unavailable):
        return CNIError(wire.ERR_TRY_AGAIN_LATER, "the datastore is unavailable; try again later",
                        str(exc))
    if isinstance(exc, IPAMError):
        return CNIError(wire.ERR_IPAM, f"IPAM failed: {exc}", name)
    if isinstance(exc, ConfigError):
        return CNIError(wire.ERR_INVALID_CONFIG, str(exc), name)
    what = f"{command} failed" if command else "the agent failed"
    if isinstance(exc, TabbyError):
        return CNIError(wire.ERR_INTERNAL, f"{what}: {exc}", name)
    return CNIError(wire.ERR_INTERNAL, f"{what}: {name}: {exc}", "internal error in the agent")


def _call(handler: PodHandler, req: CNIRequest) -> dict[str, Any] | None:
    if req.command == "ADD":
        result = handler.add(req)
        if not isinstance(result, PodResult):
            raise TypeError(f"the pod handler's add returned {type(result).__name__}, "
                            "not a PodResult")
        return result.render(req.cni_version)
    if req.command == "DEL":
        handler.delete(req)
    elif req.command == "CHECK":
        handler.check(req)
    elif req.command == "STATUS":
        handler.status()
    elif req.command == "GC":
        handler.gc(req.valid_attachments())
    return None


def dispatch(handler: PodHandler, message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One decoded request frame -> (command, response frame). Never raises."""
    command = message.get("command")
    label = command if isinstance(command, str) and command in wire.COMMANDS else "invalid"
    try:
        req = CNIRequest.from_wire(message)
        return label, {"result": _call(handler, req)}
    except Exception as exc:
        error = error_for(exc, label)
        if error is not exc and error.code == wire.ERR_INTERNAL:
            log.exception("CNI %s for container %r failed", label, message.get("containerID"))
        else:
            log.info("CNI %s for container %r: %s", label, message.get("containerID"), error)
        return label, {"error": error.to_wire()}


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True  # a stuck handler must not block the agent's exit
    block_on_close = False
    request_queue_size = 128  # a burst of pod starts; a full backlog fails connect (EAGAIN)

    def __init__(self, path: str, owner: CNIServer) -> None:
        self.owner = owner
        super().__init__(path, _Connection)


class _Connection(socketserver.BaseRequestHandler):
    server: _UnixServer
    request: socket.socket

    def handle(self) -> None:
        self.server.owner.serve_connection(self.request)


class CNIServer:
    """Serve tabby-cni on ``socket_path``; bound and listening once constructed."""

    def __init__(self, socket_path: str | os.PathLike[str], handler: PodHandler,
                 metrics: MetricsSink | None = None, *,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self.handler = handler
        self.metrics = metrics
        self.read_timeout = read_timeout
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._serving = False
        self._closed = False
        _prepare(self.socket_path)
        self._server = _UnixServer(str(self.socket_path), self)
        try:
            os.chmod(self.socket_path, 0o600)
            self._inode = os.stat(self.socket_path).st_ino
        except OSError:
            self._server.server_close()
            raise

    def __enter__(self) -> CNIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Serve in a background (daemon) thread; returns at once."""
        with self._lock:
            if self._thread is not None or self._closed:
                raise RuntimeError("CNIServer.start() called twice or after close()")
            self._thread = threading.Thread(target=self.serve_forever,
                                            name=f"cni-server {self.socket_path}", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        """Serve in this thread until close() is called from another one."""
        with self._lock:
            if self._closed:
                return
            self._serving = True
        try:
            self._server.serve_forever(poll_interval=0.05)
        finally:
            self._serving = False

    def close(self) -> None:
        """Stop accepting, close and unlink the socket. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            serving = self._serving  # set under the lock right before the loop starts
        if serving:
            self._server.shutdown()  # waits for serve_forever's loop to exit
        self._server.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            if os.stat(self.socket_path).st_ino == self._inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass

    def serve_connection(self, conn: socket.socket) -> None:
        """One connection: read a request, dispatch it, answer. Called per thread."""
        conn.settimeout(self.read_timeout)
        try:
            message = wire.recv_frame(conn)
        except (wire.FrameError, OSError) as exc:
            log.warning("CNI socket: unreadable request: %s", exc)
            self._observe("invalid", 0.0, False)  # before answering: the client may count
            self._answer(conn, {"error": CNIError(
                wire.ERR_DECODING, "unreadable request", str(exc)).to_wire()})
            return
        started = time.monotonic()
        command, response = dispatch(self.handler, message)
        self._observe(command, time.monotonic() - started, "error" not in response)
        self._answer(conn, response)

    def _answer(self, conn: socket.socket, response: dict[str, Any]) -> None:
        try:
            wire.send_frame(conn, response)
        except OSError as exc:  # tabby-cni gave up (runtime timeout) or died
            log.warning("CNI socket: could not answer: %s", exc)

    def _observe(self, command: str, seconds: float, ok: bool) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.observe(command, seconds, ok)
        except Exception:  # metrics must never cost a pod its network
            log.exception("CNI metrics sink failed")


def _prepare(path: Path) -> None:
    """Create the directory; remove a stale socket; refuse a live one or a non-socket."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket; remove it or pick another "
                          "--cni-socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):  # nobody listens: a leftover
        path.unlink(missing_ok=True)
        return
    except OSError:
        pass  # listening but not accepting (timeout): treat it as live
    finally:
        probe.close()
    raise ConfigError(f"another process is serving {path}; is an agent already running?")
