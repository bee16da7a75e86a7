"""Relay TCP from 127.0.0.1 of lab namespaces to 127.0.0.1 of the relay's own.

    python3 -I -S relay.py --netns=tabby-node-1 --netns=... --port=2379 --port=...

For every (namespace, port) a listener is opened *inside* that namespace
(``setns`` on this thread, bind, then back), and every accepted connection is
joined to 127.0.0.1:port in the relay's namespace. The lab uses it so agents in
node namespaces reach the datastore at the same URL as the CLI. Prints
``ready`` on stdout once every listener is bound. Stdlib only: it runs with
``-I -S`` by path. Ends on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
BUFFER = 65536


def setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(netns: str, port: int, home: int) -> socket.socket:
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
        finally:
            setns(home)
    finally:
        os.close(fd)
    return sock


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(BUFFER):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(listener: socket.socket, port: int) -> None:
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        threading.Thread(target=join, args=(client, upstream), daemon=True).start()


def join(a: socket.socket, b: socket.socket) -> None:
    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join()
    a.close()
    b.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--netns", action="append", default=[])
    parser.add_argument("--port", action="append", type=int, default=[])
    args = parser.parse_args()
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    listeners = [(listen_in(ns, port, home), port) for ns in args.netns for port in args.port]
    for listener, port in listeners:
        threading.Thread(target=serve, args=(listener, port), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
