"""A tiny HTTP GET from inside a network namespace, for tests that probe pods and agents."""

from __future__ import annotations

import socket

from tabby.dataplane.netlink import entered_netns


def http_get(netns: str, host: str, port: int, path: str = "/",
             timeout: float = 2.0) -> str | None:
    """The body served at http://host:port/path from inside ``netns`` (a name under
    /var/run/netns), stripped; None if nothing answered 200."""
    with entered_netns(f"/var/run/netns/{netns}"):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        except OSError:
            return None
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    status = head.split("\r\n", 1)[0]
    return body.strip() if status.startswith("HTTP/1.") and " 200 " in status else None
