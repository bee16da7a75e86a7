"""NFLOG (nfnetlink_log) records of the flow log rules: the socket and the parser.

The only NFLOG parser in tabby. ``NflogSocket(group)`` binds a netfilter
netlink socket, in the calling thread's network namespace, to one NFLOG group
(``log group G`` in nft) and asks for the first ``COPY_RANGE`` bytes of each
packet: enough for the IP and TCP/UDP/ICMP headers. ``read(timeout)`` returns
the ``LogRecord`` of every message that arrived (prefix, in/out interface
index, addresses, protocol, ports or ICMP type/code, length). Parsing is pure
(``parse_messages``: bytes in, records out) and unit-tested on hand-built
messages; the netns test reads real ones. Framing, attributes and the socket
are ``tabby.dataplane.nlsock``'s, as for every netlink reader in tabby.

Wire format (linux/netfilter/nfnetlink_log.h): nlmsghdr, nfgenmsg (family,
version, group), then attributes; NFULA_PREFIX is a NUL-terminated string,
NFULA_PAYLOAD the packet from its network header, interface indexes and the
mark are big-endian u32.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import select
import socket
import struct
from dataclasses import dataclass

from tabby.dataplane.nlsock import (
    NETLINK_NETFILTER,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NetlinkSocket,
    attr,
    attrs,
    messages,
    text_of,
)
from tabby.errors import DataplaneError

NFGEN = struct.Struct("!BBH")  # nfgenmsg: family, version, res_id (big endian)
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT = 1, 2, 3, 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULA_MARK, NFULA_TIMESTAMP, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV = 2, 3, 4, 5
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
COPY_RANGE = 96  # IPv6 (40) + TCP (20) headers, with room for options
RCVBUF = 4 << 20
QTHRESH = 64  # records the kernel batches into one datagram...
FLUSH_TICKS = 10  # ...or sends after this many 1/100 s (a record is never older)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One logged packet."""

    prefix: str
    family: int  # 4 | 6
    src: IPAddress
    dst: IPAddress
    protocol: int
    sport: int | None = None  # TCP, UDP, SCTP, UDP-Lite
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    length: int = 0  # the packet's IP length
    indev: int = 0
    outdev: int = 0
    mark: int = 0


def parse_packet(payload: bytes) -> tuple[int, IPAddress, IPAddress, int, int, bytes] | None:
    """(family, src, dst, protocol, IP length, L4 bytes) of a packet from its IP header."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        ihl = (payload[0] & 0x0F) * 4
        total, proto = struct.unpack_from("!H", payload, 2)[0], payload[9]
        frag = struct.unpack_from("!H", payload, 6)[0] & 0x1FFF
        l4 = payload[ihl:] if frag == 0 else b""
        return (4, ipaddress.IPv4Address(payload[12:16]), ipaddress.IPv4Address(payload[16:20]),
                proto, total, l4)
    if version == 6 and len(payload) >= 40:
        plen, proto = struct.unpack_from("!HB", payload, 4)
        l4 = payload[40:]
        # hop-by-hop, routing and destination options headers: skip to the transport
        while proto in (0, 43, 60) and len(l4) >= 8:
            proto, l4 = l4[0], l4[(l4[1] + 1) * 8:]
        return (6, ipaddress.IPv6Address(payload[8:24]), ipaddress.IPv6Address(payload[24:40]),
                proto, plen + 40, l4)
    return None


def parse_record(body: bytes | memoryview) -> LogRecord | None:
    """The record of one NFULNL_MSG_PACKET body (after the netlink header)."""
    if len(body) < NFGEN.size:
        return None
    prefix, indev, outdev, mark, payload = "", 0, 0, 0, b""
    for kind, value in attrs(body, NFGEN.size):
        if kind == NFULA_PREFIX:
            prefix = text_of(value)
        elif kind == NFULA_IFINDEX_INDEV and len(value) >= 4:
            indev = struct.unpack_from("!I", value)[0]
        elif kind == NFULA_IFINDEX_OUTDEV and len(value) >= 4:
            outdev = struct.unpack_from("!I", value)[0]
        elif kind == NFULA_MARK and len(value) >= 4:
            mark = struct.unpack_from("!I", value)[0]
        elif kind == NFULA_PAYLOAD:
            payload = bytes(value)
    got = parse_packet(payload)
    if got is None:
        return None
    family, src, dst, proto, length, l4 = got
    sport = dport = itype = icode = None
    if proto in (6, 17, 132, 136) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
    elif proto in (1, 58) and len(l4) >= 2:
        itype, icode = l4[0], l4[1]
    return LogRecord(prefix, family, src, dst, proto, sport, dport, itype, icode, length,
                     indev, outdev, mark)


def parse_messages(data: bytes) -> list[LogRecord]:
    """Every packet record in one datagram read from the socket."""
    out = []
    packet_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
    for kind, _flags, _seq, body in messages(data):
        if kind == packet_type:
            rec = parse_record(body)
            if rec is not None:
                out.append(rec)
    return out


def config_body(group: int, *attributes: bytes) -> bytes:
    """An NFULNL_MSG_CONFIG request's body for ``group``."""
    return NFGEN.pack(socket.AF_UNSPEC, 0, group) + b"".join(attributes)


CONFIG = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG


class NflogSocket:
    """A netlink socket bound to NFLOG ``group`` in this thread's network namespace."""

    def __init__(self, group: int, copy_range: int = COPY_RANGE) -> None:
        self.group = group
        self.overruns = 0  # times the kernel found our receive buffer full (records lost)
        try:
            self._sock = NetlinkSocket(NETLINK_NETFILTER, buffers=RCVBUF, timeout=2.0)
        except OSError as exc:
            raise _cannot_listen(group, exc) from exc
        try:
            self._configure(group, copy_range)
        except OSError as exc:
            self._sock.close()
            raise _cannot_listen(group, exc) from exc
        except DataplaneError:
            self._sock.close()
            raise
        self._sock.settimeout(None)  # reads wait in select, as long as they are told

    def _configure(self, group: int, copy_range: int) -> None:
        self._request(config_body(group, attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))),
                      "bind")
        mode = struct.pack("!IBB", copy_range, NFULNL_COPY_PACKET, 0)
        self._request(config_body(group, attr(NFULA_CFG_MODE, mode)), "mode")
        # the kernel batches records: up to QTHRESH in one datagram, or what it has
        # after FLUSH_TICKS hundredths of a second (fewer wake-ups of the agent)
        self._request(config_body(group, attr(NFULA_CFG_QTHRESH, struct.pack("!I", QTHRESH)),
                                  attr(NFULA_CFG_TIMEOUT, struct.pack("!I", FLUSH_TICKS))),
                      "batching")

    def _request(self, body: bytes, what: str) -> None:
        code, text, _got, _torn = self._sock.request(CONFIG, NLM_F_REQUEST | NLM_F_ACK, body)
        if code:
            detail = f" ({text})" if text else ""
            raise DataplaneError(f"NFLOG group {self.group}: {what} refused:"
                                 f" {errno.errorcode.get(code, code)}{detail}")

    def read(self, timeout: float) -> list[LogRecord]:
        """The records that arrive within ``timeout`` seconds (all that are queued)."""
        out: list[LogRecord] = []
        ready, _, _ = select.select([self._sock], [], [], timeout)
        while ready:
            try:
                data = self._sock.recv(nowait=True)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise DataplaneError(f"NFLOG group {self.group}: {exc.strerror}") from exc
            out += parse_messages(data)
            if len(out) >= 4096:
                break
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.send(CONFIG, NLM_F_REQUEST, config_body(self.group, attr(
                NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND]))))
        self._sock.close()


def _cannot_listen(group: int, exc: OSError) -> DataplaneError:
    return DataplaneError(f"NFLOG group {group}: cannot listen:"
                          f" {exc.strerror or os.strerror(exc.errno or 0) or exc}"
                          " (another process bound to the group? run as root)")
