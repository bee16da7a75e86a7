"""Netlink framing and the raw socket every tabby netlink reader and writer shares.

    sock = NetlinkSocket(NETLINK_ROUTE)           # in the calling thread's namespace
    sock.request(kind, flags, body)               -> Answer(errno, message, [(type, body)], torn)
    sock.batch([(kind, flags, body), ...])        -> [(errno, message), ...]  many per send
    sock.dump(kind, body)                         -> [(type, body), ...]      restarted if torn

and the codecs under them: the header (``HDR``, ``messages``), attributes
(``attr``, ``attr_text``, ``attr_u32``, ``attrs``, ``text_of``) and error
messages (``error``: the errno and the kernel's extended-ack text). What a
message means lives with its protocol, on top of this: ``rtnl`` (routes),
``rtlinkmsg`` (links, addresses), ``nflog`` (NFLOG records), ``conntrack``
(ctnetlink dumps).

Why raw sockets at all (pyroute2 stays for the rest, in ``netlink``): its
per-request cost. A request here is a ``struct.pack``; ``batch`` puts hundreds
in one ``sendmsg`` (the kernel handles each in order, in the sender's context,
before ``sendmsg`` returns), only the last asks for an ack, and the kernel still
answers every failed request with an error carrying its sequence number, so
each failure maps back to the request that caused it.

Every socket sets NETLINK_CAP_ACK (an error echoes the request's header, not the
whole request) and NETLINK_EXT_ACK (errors carry the kernel's message, "Nexthop
has invalid gateway"); ``strict`` adds NETLINK_GET_STRICT_CHK (dumps filtered by
the request's header: the addresses of one link). Payloads are memoryviews of
the datagram read (``attrs`` and ``messages`` take bytes too); decoders that need
bytes (``ipaddress``) copy the few values they keep.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

__all__ = ["ATTR", "BATCH_BUFFERS", "HDR", "NETLINK_NETFILTER", "NETLINK_ROUTE", "NLA_F_NESTED",
           "NLA_TYPE", "NLMSG_DONE", "NLMSG_ERROR", "NLM_F_ACK", "NLM_F_CREATE", "NLM_F_DUMP",
           "NLM_F_EXCL", "NLM_F_REPLACE", "NLM_F_REQUEST", "U32", "Answer", "NetlinkSocket",
           "Request", "attr", "attr_text", "attr_u32", "attrs", "error", "messages", "text_of"]

NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
NLM_F_ACK_TLVS = 0x200  # on an error message: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
NLA_TYPE = 0x3FFF  # an attribute's type without the nested / byte-order flags

HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
ATTR = struct.Struct("=HH")  # nlattr: len, type
U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")
BATCH_BUFFERS = 4 * 1024 * 1024  # ``buffers`` for batches: room for many errors at once
_CHUNK = 48 * 1024  # bytes per sendmsg in a batch: far below the socket buffers
_RECV = 64 * 1024  # the kernel sizes a dump's parts to the reader's buffer, up to 32 KiB
_TORN_RETRIES = 5

Request = tuple[int, int, bytes]  # (message type, flags, body after the header)


class Answer(NamedTuple):
    """What came back for one request: errno (0: fine) and the kernel's message, the
    messages of the answer in order, and whether a dump was torn by a concurrent change."""

    code: int
    text: str
    messages: list[tuple[int, memoryview]]
    torn: bool


# -- codecs --------------------------------------------------------------------------

def attr(kind: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    size = ATTR.size + len(value)
    return ATTR.pack(size, kind) + value + b"\0" * (-size % 4)


def attr_text(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, U32.pack(value))


def attrs(data: bytes | memoryview, offset: int = 0, end: int | None = None
          ) -> Iterator[tuple[int, memoryview]]:
    """(type, value) of each attribute in ``data[offset:end]``, the type without its flags;
    a truncated attribute ends the walk. (``rtnl.decode_route`` walks in place instead:
    it runs for every route of a dump, where a generator costs 40%.)"""
    view = memoryview(data)
    end = len(view) if end is None else end
    while offset + 4 <= end:
        size, kind = ATTR.unpack_from(view, offset)
        if size < 4 or offset + size > end:
            return
        yield kind & NLA_TYPE, view[offset + 4:offset + size]
        offset += (size + 3) & ~3


def text_of(value: bytes | memoryview) -> str:
    """A NUL-terminated string attribute's text."""
    return bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")


def messages(data: bytes | memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, seq, body) of each netlink message in one datagram."""
    data = memoryview(data)
    offset, end = 0, len(data)
    while offset + 16 <= end:
        size, kind, flags, seq, _pid = HDR.unpack_from(data, offset)
        if size < 16 or offset + size > end:
            return
        yield kind, flags, seq, data[offset + 16:offset + size]
        offset += (size + 3) & ~3


def error(body: bytes | memoryview, flags: int) -> tuple[int, str]:
    """An NLMSG_ERROR's errno (0: an ack) and the kernel's extended-ack message, if any."""
    (code,) = _ERR.unpack_from(body, 0)
    text = ""
    if code and flags & NLM_F_ACK_TLVS:  # after the echoed header (NETLINK_CAP_ACK)
        for kind, value in attrs(body, _ERR.size + HDR.size):
            if kind == NLMSGERR_ATTR_MSG:
                text = text_of(value)
    return -code, text


# -- the socket ----------------------------------------------------------------------

class NetlinkSocket:
    """A netlink socket of the namespace the calling thread is in when it is made.

    ``buffers``: bytes of send and receive buffer (root may go past
    net.core.rmem_max; others get what the cap allows), for batches whose many
    errors come back at once. ``timeout``: seconds a read may wait (None: forever).
    """

    def __init__(self, protocol: int = NETLINK_ROUTE, *, strict: bool = False,
                 buffers: int = 0, timeout: float | None = None) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   protocol)
        try:
            self._sock.bind((0, 0))
            options = (NETLINK_CAP_ACK, NETLINK_EXT_ACK) + (
                (NETLINK_GET_STRICT_CHK,) if strict else ())
            for option in options:
                self._sock.setsockopt(SOL_NETLINK, option, 1)
            if buffers:
                self._size_buffers(buffers)
            if timeout is not None:
                self._sock.settimeout(timeout)
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def _size_buffers(self, size: int) -> None:
        for forced, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                              (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, forced, size)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, plain, size)

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def recv(self, nowait: bool = False) -> bytes:
        """One datagram (``nowait``: BlockingIOError if none is queued)."""
        return self._sock.recv(_RECV, socket.MSG_DONTWAIT if nowait else 0)

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def send(self, kind: int, flags: int, body: bytes) -> int:
        """Send one message; its sequence number."""
        seq = self.next_seq()
        self._sock.sendall(HDR.pack(HDR.size + len(body), kind, flags, seq, 0) + body)
        return seq

    # -- one request -----------------------------------------------------------------
    def request(self, kind: int, flags: int, body: bytes) -> Answer:
        """Send one request and read its answer. A dump (NLM_F_DUMP) ends at NLMSG_DONE;
        anything else at its ack or error or, without NLM_F_ACK, its one answer.
        Messages of other sequence numbers (a request that gave up, a multicast) are
        skipped."""
        seq = self.send(kind, flags, body)
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        got: list[tuple[int, memoryview]] = []
        torn = False
        while True:
            for mtype, mflags, mseq, payload in messages(self._sock.recv(_RECV)):
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code, text = error(payload, mflags)
                    return Answer(code, text, got, torn)
                torn = torn or bool(mflags & NLM_F_DUMP_INTR)
                if mtype == NLMSG_DONE:
                    return Answer(0, "", got, torn)
                got.append((mtype, payload))
                if not dump and not flags & NLM_F_ACK:
                    return Answer(0, "", got, torn)

    def dump(self, kind: int, body: bytes) -> list[tuple[int, memoryview]]:
        """The messages of a dump, asked again if a concurrent change tore it (a few
        times; then the last one). OSError(errno, the kernel's message, often "") if the
        kernel refuses."""
        for _attempt in range(_TORN_RETRIES):
            answer = self.request(kind, NLM_F_REQUEST | NLM_F_DUMP, body)
            if answer.code:
                raise OSError(answer.code, answer.text)
            if not answer.torn:
                break
        return answer.messages

    # -- many requests ---------------------------------------------------------------
    def batch(self, requests: Sequence[Request]) -> list[tuple[int, str]]:
        """Send ``requests`` in order, as few sends as fit; per request (0, "") or
        (errno, the kernel's extended-ack message or "")."""
        results: list[tuple[int, str]] = [(0, "")] * len(requests)
        start = 0
        while start < len(requests):
            end, size = start, 0
            while end < len(requests) and (end == start or size < _CHUNK):
                size += HDR.size + len(requests[end][2])
                end += 1
            self._send_chunk(requests, start, end, results)
            start = end
        return results

    def _send_chunk(self, requests: Sequence[Request], start: int, end: int,
                    results: list[tuple[int, str]]) -> None:
        """Only the last request asks for an ack: errors of the others are queued before it
        (the kernel answers in order), so its ack means every answer is in."""
        first = self._seq + 1
        parts = []
        for i in range(start, end):
            kind, flags, body = requests[i]
            if i == end - 1:
                flags |= NLM_F_ACK
            parts.append(HDR.pack(HDR.size + len(body), kind, flags, self.next_seq(), 0))
            parts.append(body)
        self._sock.sendall(b"".join(parts))
        last = self._seq
        try:
            for seq, code, text in self._errors(last):
                index = start + ((seq - first) & 0xFFFFFFFF)
                if start <= index < end and code:
                    results[index] = (code, text)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS or end - start == 1:
                raise
            # So many errors at once that some were dropped: ask again, one request at a
            # time (a replace is idempotent; a repeated delete answers "already gone").
            self._drain()
            for i in range(start, end):
                results[i] = self.batch([requests[i]])[0]

    def _errors(self, last: int) -> Iterator[tuple[int, int, str]]:
        """(seq, errno, message) of each error or ack, up to the ack of ``last``."""
        while True:
            for kind, flags, seq, payload in messages(self._sock.recv(_RECV)):
                if kind != NLMSG_ERROR:
                    continue
                code, text = error(payload, flags)
                yield seq, code, text
                if seq == last:
                    return

    def _drain(self) -> None:
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv(_RECV)
        except BlockingIOError:
            pass
        finally:
            self._sock.setblocking(True)
