"""A pod's listener: answers TCP and UDP on each given port with the pod's name.

    python3 -I -S listener.py --name web-1 --port 80 --port 53     (inside the pod's netns)

A TCP client gets ``NAME\\n`` and the connection closes; a UDP datagram gets
``NAME\\n`` back, except the datagram ``peer\\n``, answered ``NAME PEER_IP\\n``
(whom the pod sees: whether a service kept the client's address). One
dual-stack socket per port and protocol (IPv4-mapped addresses on ``::``),
falling back to IPv4 alone where IPv6 is off. Prints
``ready`` on stdout once every socket is bound, then serves in one thread with
``selectors`` until SIGTERM. Stdlib only: it runs with ``-I -S`` by path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import sys

BACKLOG = 4096  # probes of a whole lab arrive at once; a short queue drops SYNs


def bind(kind: int, port: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[str, int] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, kind)
        address = ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    if kind == socket.SOCK_STREAM:
        sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def answer_tcp(listener: socket.socket, reply: bytes) -> None:
    """Answer every connection waiting in the accept queue (a busy pod gets many)."""
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()


def answer_udp(sock: socket.socket, reply: bytes) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # an ICMP error queued on the socket; carry on
            continue
        answer = reply
        if data == b"peer\n":
            address = str(peer[0]).removeprefix("::ffff:")
            answer = reply.rstrip(b"\n") + f" {address}\n".encode()
        with contextlib.suppress(OSError):
            sock.sendto(answer, peer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", action="append", type=int, default=[])
    args = parser.parse_args(argv)
    reply = (args.name + "\n").encode()
    selector = selectors.DefaultSelector()
    for port in sorted(set(args.port)):
        selector.register(bind(socket.SOCK_STREAM, port), selectors.EVENT_READ, answer_tcp)
        selector.register(bind(socket.SOCK_DGRAM, port), selectors.EVENT_READ, answer_udp)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    while True:
        for key, _ in selector.select():
            key.data(key.fileobj, reply)


if __name__ == "__main__":
    sys.exit(main())
