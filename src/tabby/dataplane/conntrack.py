"""Conntrack entries with their counters: a ctnetlink dump, parsed.

``ConntrackDumper().dump()`` lists every connection the kernel tracks in this
thread's network namespace (both families), each a ``CtEntry``: the original
direction's 5-tuple, the reply's (after NAT), the TCP state, and packets and
bytes per direction. Counters are non-zero only with ``nf_conntrack_acct=1`` in
the namespace (the agent sets it when flow logs are on). The flow collector
(``tabby.agent.flows``) dumps once per interval: live connections update their
flows' counters, a TCP connection in TIME_WAIT or CLOSE (or one gone from the
table) has ended.

Parsing is pure (``parse_entry``); framing, attributes and the socket are
``tabby.dataplane.nlsock``'s. Wire format: linux/netfilter/nfnetlink_conntrack.h.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from tabby.dataplane.nflog import NFGEN, IPAddress
from tabby.dataplane.nlsock import NETLINK_NETFILTER, NetlinkSocket, attrs
from tabby.errors import DataplaneError

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET = 0, 1
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_PROTOINFO = 1, 2, 4
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 9, 10
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 5, 6
CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 8, 9
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
TCP_TIME_WAIT, TCP_CLOSE = 7, 8


@dataclass(frozen=True, slots=True)
class Tuple5:
    src: IPAddress
    dst: IPAddress
    protocol: int
    sport: int | None = None
    dport: int | None = None

    def reversed(self) -> Tuple5:
        return Tuple5(self.dst, self.src, self.protocol, self.dport, self.sport)


@dataclass(frozen=True, slots=True)
class CtEntry:
    orig: Tuple5
    reply: Tuple5
    tcp_state: int | None = None
    packets: int = 0  # both directions
    bytes: int = 0

    @property
    def closed(self) -> bool:
        """A TCP connection that has ended (its entry lingers in TIME_WAIT or CLOSE)."""
        return self.tcp_state in (TCP_TIME_WAIT, TCP_CLOSE)


def _tuple(data: memoryview) -> Tuple5 | None:
    addrs: dict[int, memoryview] = {}
    proto, sport, dport = 0, None, None
    for kind, value in attrs(data):
        if kind == CTA_TUPLE_IP:
            addrs = dict(attrs(value))
        elif kind == CTA_TUPLE_PROTO:
            for pk, pv in attrs(value):
                if pk == CTA_PROTO_NUM:
                    proto = pv[0]
                elif pk == CTA_PROTO_SRC_PORT:
                    sport = struct.unpack("!H", pv[:2])[0]
                elif pk == CTA_PROTO_DST_PORT:
                    dport = struct.unpack("!H", pv[:2])[0]
    src = addrs.get(1) or addrs.get(3)  # CTA_IP_V4_SRC | CTA_IP_V6_SRC
    dst = addrs.get(2) or addrs.get(4)
    if src is None or dst is None:
        return None
    return Tuple5(ipaddress.ip_address(bytes(src)), ipaddress.ip_address(bytes(dst)), proto,
                  sport, dport)


def _counters(data: memoryview) -> tuple[int, int]:
    got = dict(attrs(data))
    packets = got.get(CTA_COUNTERS_PACKETS, b"")
    nbytes = got.get(CTA_COUNTERS_BYTES, b"")
    return (struct.unpack("!Q", packets)[0] if len(packets) == 8 else 0,
            struct.unpack("!Q", nbytes)[0] if len(nbytes) == 8 else 0)


def parse_entry(body: bytes | memoryview) -> CtEntry | None:
    """One IPCTNL_MSG_CT_NEW body (a dump's entry) as a CtEntry."""
    orig = reply = None
    state = None
    packets = nbytes = 0
    for kind, value in attrs(body, NFGEN.size):
        if kind == CTA_TUPLE_ORIG:
            orig = _tuple(value)
        elif kind == CTA_TUPLE_REPLY:
            reply = _tuple(value)
        elif kind == CTA_PROTOINFO:
            for pk, pv in attrs(value):
                if pk == CTA_PROTOINFO_TCP:
                    state = dict(attrs(pv)).get(CTA_PROTOINFO_TCP_STATE, b"\xff")[0]
        elif kind in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
            p, b = _counters(value)
            packets, nbytes = packets + p, nbytes + b
    if orig is None or reply is None:
        return None
    return CtEntry(orig, reply, state, packets, nbytes)


ENTRY = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET


class ConntrackDumper:
    """Dumps the conntrack table of the namespace it was made in."""

    def __init__(self) -> None:
        self.sock = NetlinkSocket(NETLINK_NETFILTER, buffers=4 << 20, timeout=5.0)

    def dump(self) -> list[CtEntry]:
        try:
            got = self.sock.dump(GET, NFGEN.pack(socket.AF_UNSPEC, 0, 0))
        except OSError as exc:
            code = exc.errno or 0
            raise DataplaneError(f"conntrack dump: {exc.strerror or os.strerror(code)}"
                                 f" (errno {code})") from exc
        entries = (parse_entry(body) for kind, body in got if kind == ENTRY)
        return [e for e in entries if e is not None]

    def close(self) -> None:
        self.sock.close()
