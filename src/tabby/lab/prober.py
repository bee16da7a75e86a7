"""Probe many targets at once from inside one pod's namespace.

    python3 -I -S prober.py < {"timeout": 1.0, "probes": [
        {"id": 0, "address": "198.19.0.5", "port": 80, "protocol": "tcp", "expect": "web-1"}]}
    -> {"results": [{"id": 0, "connected": true, "answer": "web-1"}]}

All probes run concurrently (at most ``MAX_IN_FLIGHT`` sockets at a time) in
one thread with ``selectors``, each with its own deadline. TCP: connect, read
to EOF; UDP: a connected socket, a datagram re-sent every ``UDP_RESEND``
seconds until an answer, ICMP unreachable or the deadline. A probe is
connected only if the answer is the expected pod name. Stdlib only: it runs
with ``-I -S`` by path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

MAX_IN_FLIGHT = 256
UDP_RESEND = 0.25
MAX_ANSWER = 1024


@dataclass
class Probe:
    id: int
    address: str
    port: int
    protocol: str
    expect: str
    sock: socket.socket | None = None
    deadline: float = 0.0
    resend: float = 0.0
    data: bytes = b""
    connecting: bool = True
    done: bool = False
    connected: bool = False
    error: str = ""
    answer: str = field(default="")


def start(p: Probe, sel: selectors.BaseSelector, now: float, timeout: float) -> None:
    family = socket.AF_INET6 if ":" in p.address else socket.AF_INET
    kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
    p.deadline = now + timeout
    try:
        p.sock = socket.socket(family, kind)
        p.sock.setblocking(False)
        if kind == socket.SOCK_STREAM:
            code = p.sock.connect_ex((p.address, p.port))
            if code not in (0, errno.EINPROGRESS):
                finish(p, sel, os_error(code))
            else:
                sel.register(p.sock, selectors.EVENT_WRITE, p)
        else:
            p.sock.connect((p.address, p.port))
            p.connecting = False
            send_udp(p, now)
            sel.register(p.sock, selectors.EVENT_READ, p)
    except OSError as exc:
        finish(p, sel, exc.strerror or str(exc))


def send_udp(p: Probe, now: float) -> None:
    assert p.sock is not None
    with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
        p.sock.send(b"probe\n")
    p.resend = now + UDP_RESEND


def os_error(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def finish(p: Probe, sel: selectors.BaseSelector, error: str = "") -> None:
    if p.done:
        return
    p.done = True
    p.error = error
    p.answer = p.data.decode(errors="replace").strip()
    p.connected = not error and p.answer == p.expect
    if p.sock is not None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(p.sock)
        p.sock.close()


def ready(p: Probe, sel: selectors.BaseSelector) -> None:
    assert p.sock is not None
    if p.connecting:
        code = p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            finish(p, sel, os_error(code))
            return
        p.connecting = False
        sel.modify(p.sock, selectors.EVENT_READ, p)
        # the answer is often there already: read it now rather than a round later
    while not p.done:
        try:
            chunk = p.sock.recv(MAX_ANSWER)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            finish(p, sel, exc.strerror or str(exc))
            return
        p.data += chunk
        if p.protocol == "udp" or not chunk or len(p.data) >= MAX_ANSWER:
            finish(p, sel)


def run(probes: list[Probe], timeout: float) -> None:
    """Run every probe. Answers already received are handled before any deadline is
    checked, so a prober that was not scheduled for a while does not call them lost."""
    sel = selectors.DefaultSelector()
    queue = list(reversed(probes))
    active: list[Probe] = []
    while queue or active:
        now = time.monotonic()
        while queue and len(active) < MAX_IN_FLIGHT:
            p = queue.pop()
            start(p, sel, now, timeout)
            active.append(p)
        active = [p for p in active if not p.done]
        if not active:
            continue
        wake = min(min(p.deadline, p.resend if p.protocol == "udp" else p.deadline)
                   for p in active)
        for key, _ in sel.select(max(0.0, wake - time.monotonic())):
            ready(key.data, sel)
        now = time.monotonic()
        for p in active:
            if not p.done and now >= p.deadline:
                finish(p, sel, "timeout")
            elif not p.done and p.protocol == "udp" and now >= p.resend:
                send_udp(p, now)
        active = [p for p in active if not p.done]


def main() -> int:
    request: dict[str, Any] = json.load(sys.stdin)
    probes = [Probe(int(x["id"]), str(x["address"]), int(x["port"]), str(x["protocol"]),
                    str(x["expect"])) for x in request["probes"]]
    run(probes, float(request.get("timeout", 1.0)))
    json.dump({"results": [{"id": p.id, "connected": p.connected, "answer": p.answer,
                            "error": p.error} for p in probes]}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
