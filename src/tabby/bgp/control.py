"""BIRD's control socket, spoken directly (what ``birdc -s SOCKET`` speaks).

The protocol is line based. BIRD greets with ``0001 BIRD 2.0.12 ready.``;
each command's reply is a run of lines ``CODE-text`` (more follow) or
``CODE text`` (the last), where a line starting with a space continues the
previous code. Codes: 0xxx done, 1xxx table rows, 2xxx table headings, 8xxx
run-time errors, 9xxx parse errors. Going through the socket rather than the
``birdc`` binary costs no process per question and yields the codes, which
parsing needs.

``protocols(text)`` reads ``show protocols all`` into ``ProtocolInfo`` values;
it is pure, so it is tested on BIRD's own output.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from tabby.errors import BirdError as BirdError

_LINE = re.compile(r"^(\d{4})([ -])(.*)$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return self.code < 8000


class BirdControl:
    """One connection to BIRD's control socket; use as a context manager."""

    def __init__(self, path: Path | str, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buffer = b""
        try:
            self._sock.connect(str(self.path))
            self.greeting = self._reply()
        except OSError as exc:
            self._sock.close()
            raise BirdError(f"BIRD's control socket {self.path}: {exc.strerror or exc}"
                            " (is BIRD running?)") from exc

    def __enter__(self) -> BirdControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def command(self, text: str) -> list[Reply]:
        """Send one command; every line of the reply. BirdError if BIRD reports an error."""
        try:
            self._sock.sendall(text.encode() + b"\n")
            replies = self._reply()
        except OSError as exc:
            raise BirdError(f"BIRD ({self.path}) {text!r}: {exc.strerror or exc}") from exc
        last = replies[-1]
        if not last.ok:
            detail = "; ".join(r.text.strip() for r in replies if r.text.strip())
            raise BirdError(f"BIRD refused {text!r}: {detail}")
        return replies

    def _reply(self) -> list[Reply]:
        replies: list[Reply] = []
        while True:
            reply, last = parse_line(self._line(), replies[-1].code if replies else 0)
            replies.append(reply)
            if last:
                return replies

    def _line(self) -> str:
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError(0, "BIRD closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")


def parse_line(line: str, previous: int) -> tuple[Reply, bool]:
    """One line of a reply (``previous``: the code of the line before); True if it is the
    reply's last."""
    match = _LINE.match(line)
    if match is None:  # a continuation of the previous code
        return Reply(previous, line[1:] if line.startswith(" ") else line), False
    return Reply(int(match.group(1)), match.group(3)), match.group(2) == " "


def parse_reply(text: str) -> list[Reply]:
    """A whole reply as text (as BIRD sent it), e.g. captured for a test."""
    replies: list[Reply] = []
    for line in text.splitlines():
        reply, last = parse_line(line, replies[-1].code if replies else 0)
        replies.append(reply)
        if last:
            break
    return replies


def ask(path: Path | str, command: str, timeout: float = 5.0) -> list[Reply]:
    """One command on a fresh connection."""
    with BirdControl(path, timeout) as bird:
        return bird.command(command)


# -- show protocols all -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ProtocolInfo:
    name: str
    proto: str  # BGP, Kernel, Static, Device, Direct
    state: str  # up, start, down, ...
    since: str
    info: str  # BGP: Established, Active, Connect, ... (+ the last error)
    details: dict[str, str] = field(default_factory=dict)  # "Neighbor address" -> ...

    @property
    def established(self) -> bool:
        return self.proto == "BGP" and self.info.startswith("Established")


def protocols(replies: list[Reply]) -> list[ProtocolInfo]:
    """``show protocols all`` as values (rows are code 1002, details code 1006)."""
    out: list[ProtocolInfo] = []
    row: list[str] | None = None
    details: dict[str, str] = {}
    for reply in replies:
        if reply.code == 1002:
            if row is not None:
                out.append(_protocol(row, details))
            row, details = reply.text.split(None, 6), {}
        elif reply.code == 1006 and row is not None:
            key, sep, value = reply.text.strip().partition(":")
            if sep and value.strip() and key not in details:
                details[key.strip()] = value.strip()
    if row is not None:
        out.append(_protocol(row, details))
    return out


def _protocol(row: list[str], details: dict[str, str]) -> ProtocolInfo:
    """``name proto table state since info``; ``since`` is one word or, with tabby's
    ``timeformat protocol iso long``, a date and a time."""
    name, proto, _table, state, *rest = row + [""] * (5 - len(row))
    words = " ".join(rest).split()
    take = 2 if words and _DATE.match(words[0]) else 1
    return ProtocolInfo(name=name, proto=proto, state=state, since=" ".join(words[:take]),
                        info=" ".join(words[take:]), details=details)
