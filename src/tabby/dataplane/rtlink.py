"""Pod wiring's kernel calls over a raw rtnetlink socket: links, addresses, routes.

    with RawNetlink.open(counts, "/var/run/netns/pod") as nl:   # a socket there, ~20 us
        nl.add_veth("tab0123456789ab", "eth0", peer_netns, mac=HOST_MAC, mtu=1500)
        nl.set_link("eth0", up=True)
        nl.add_address("eth0", ip_interface("198.19.0.5/32"))

Why beside ``tabby.dataplane.netlink`` (pyroute2): CNI ADD waits for about
twenty of these calls. Through pyroute2 0.9 each cost an asyncio loop turn and
its generic encoder (measured on this VM, unloaded: ``PodWirer.wire`` 6.1 ms
and one ``IPRoute()`` per namespace ~0.5 ms; the same calls here: 1.4 ms, most
of it the kernel making the veth pair). A request is a ``struct.pack`` of the
few fields tabby sets and its answer a read of the attributes ``Link`` needs.

``RawNetlink`` answers every call ``PodNetlink`` names (``tabby.dataplane.pods``)
with the values, errnos and operation names of ``Netlink``, so ``PodWirer`` and
``tabby.testing.fakes.FakeNetlink`` need not know which one they face
(tests/netns/test_rtlink_agree.py replays one sequence on both). Devices are
named in link requests (``IFLA_IFNAME``), not looked up first; addresses and
routes need the index, looked up once per handle. Framing, the socket and
batches are ``tabby.dataplane.nlsock``'s; link and address messages
``rtlinkmsg``'s; routes go through ``rtroutes``, as ``Netlink``'s do.

A handle is a plain socket: no thread owns it, opening one costs a system
call or two, so a handle per unit of work (``with``) stays the rule.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Self

from tabby.dataplane.netns import entered_netns, sysctl, where
from tabby.dataplane.nlsock import (
    BATCH_BUFFERS,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NetlinkSocket,
    attr,
    attr_text,
    attr_u32,
)
from tabby.dataplane.nlvalues import (
    FAMILY,
    IFA_F_NODAD,
    IFF_UP,
    CallCounts,
    IPInterface,
    Link,
)
from tabby.dataplane.rtlinkmsg import (
    IFA,
    IFA_ADDRESS,
    IFA_LOCAL,
    IFLA_ADDRESS,
    IFLA_EXT_MASK,
    IFLA_GROUP,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    IFLA_NET_NS_FD,
    RTEXT_FILTER_SKIP_STATS,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_SETLINK,
    VETH_INFO_PEER,
    decode_address,
    decode_link,
    ifinfo,
    mac_bytes,
)
from tabby.dataplane.rtroutes import RouteCalls
from tabby.errors import NetlinkError

__all__ = ["RawNetlink", "raw_opener"]

# -- the adapter ---------------------------------------------------------------------

class RawNetlink(RouteCalls):
    """``PodNetlink``'s calls on one raw socket in one namespace (None: the thread's own);
    routes as ``Netlink``'s (``RouteCalls``)."""

    def __init__(self, sock: NetlinkSocket, counts: CallCounts, netns: str | None) -> None:
        self._nl = sock
        self._counts = counts
        self.netns = netns
        self._indexes: dict[str, int] = {}

    @classmethod
    def open(cls, counts: CallCounts, netns: str | None = None) -> RawNetlink:
        counts.add("open")
        if netns is None:
            return cls(_socket(), counts, None)
        with entered_netns(netns):
            sock = _socket()  # created here, so it belongs to the pod's namespace
        return cls(sock, counts, netns)

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, op: str, what: str, kind: int, flags: int, body: bytes,
              tolerated: tuple[int, ...] = ()) -> tuple[int, list[tuple[int, memoryview]]]:
        """One request, counted; NetlinkError unless it succeeds or fails as tolerated."""
        try:
            code, text, got, _torn = self._nl.request(kind, NLM_F_REQUEST | flags, body)
        except OSError as exc:
            code, text, got = exc.errno or errno.EIO, "", []
        if code and code not in tolerated:
            self._counts.add(op, failed=True)
            detail = f" ({text})" if text else ""
            raise NetlinkError(f"{op} {what}{where(self.netns)}: {os.strerror(code)}{detail}",
                               code)
        self._counts.add(op)
        return code, got

    # -- links -------------------------------------------------------------------------
    def links(self) -> list[Link]:
        body = ifinfo() + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        _, got = self._call("link_dump", "", RTM_GETLINK, NLM_F_DUMP, body)
        links = [decode_link(p) for t, p in got if t == RTM_NEWLINK]
        self._indexes.update((link.name, link.index) for link in links)
        return links

    def link(self, name: str) -> Link | None:
        body = (ifinfo() + attr_text(IFLA_IFNAME, name)
                + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))
        code, got = self._call("link_get", name, RTM_GETLINK, 0, body, (errno.ENODEV,))
        found = [decode_link(p) for t, p in got if t == RTM_NEWLINK]
        if code or not found:
            self._indexes.pop(name, None)
            return None
        self._indexes[name] = found[0].index
        return found[0]

    def add_veth(self, name: str, peer_name: str, peer_netns: str, *, mac: str | None = None,
                 mtu: int | None = None) -> Link:
        """Create veth ``name`` here and its peer ``peer_name`` directly in ``peer_netns``."""
        what = f"veth {name} (peer {peer_name})"
        try:
            fd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetlinkError(f"link_add {what}: network namespace {peer_netns}:"
                               f" {exc.strerror}", exc.errno or 0) from exc
        try:
            sized = attr_u32(IFLA_MTU, mtu) if mtu is not None else b""
            peer = (ifinfo() + attr_text(IFLA_IFNAME, peer_name)
                    + attr_u32(IFLA_NET_NS_FD, fd) + sized)
            info = attr_text(IFLA_INFO_KIND, "veth") + attr(
                IFLA_INFO_DATA | NLA_F_NESTED, attr(VETH_INFO_PEER | NLA_F_NESTED, peer))
            body = (ifinfo() + attr_text(IFLA_IFNAME, name) + sized
                    + (attr(IFLA_ADDRESS, mac_bytes(mac)) if mac is not None else b"")
                    + attr(IFLA_LINKINFO | NLA_F_NESTED, info))
            self._call("link_add", what, RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                       body)
        finally:
            os.close(fd)
        created = self.link(name)
        if created is None:
            raise NetlinkError(f"veth {name} vanished right after creation", errno.ENODEV)
        return created

    def set_link(self, name: str, *, up: bool | None = None, mtu: int | None = None,
                 mac: str | None = None) -> None:
        if up is None and mtu is None and mac is None:
            return
        flags = IFF_UP if up else 0
        body = (ifinfo(0, flags, IFF_UP if up is not None else 0)
                + attr_text(IFLA_IFNAME, name)
                + (attr_u32(IFLA_MTU, mtu) if mtu is not None else b"")
                + (attr(IFLA_ADDRESS, mac_bytes(mac)) if mac is not None else b""))
        self._call("link_set", name, RTM_SETLINK, NLM_F_ACK, body)

    def delete_link(self, name: str) -> bool:
        """Delete ``name`` (a veth: both ends); False if there was no such link."""
        self._indexes.pop(name, None)
        code, _ = self._call("link_del", name, RTM_DELLINK, NLM_F_ACK,
                             ifinfo() + attr_text(IFLA_IFNAME, name), (errno.ENODEV,))
        return not code

    def retire_link(self, name: str, group: int) -> bool:
        """Take ``name`` down (the kernel drops its routes) and into link group ``group``,
        in one request; False if there was no such link."""
        self._indexes.pop(name, None)
        body = (ifinfo(0, 0, IFF_UP) + attr_text(IFLA_IFNAME, name)
                + attr_u32(IFLA_GROUP, group))
        code, _ = self._call("link_set", name, RTM_SETLINK, NLM_F_ACK, body, (errno.ENODEV,))
        return not code

    def delete_group(self, group: int) -> bool:
        """Delete every link in ``group`` (veths: both ends) in one request, so the kernel
        waits for one RCU grace period for all of them; False if the group was empty."""
        self._indexes.clear()
        code, _ = self._call("link_del", f"group {group}", RTM_DELLINK, NLM_F_ACK,
                             ifinfo() + attr_u32(IFLA_GROUP, group), (errno.ENODEV,))
        return not code

    def _index(self, name: str) -> int:
        if name in self._indexes:
            return self._indexes[name]
        link = self.link(name)
        if link is None:
            raise NetlinkError(f"no link named {name}{where(self.netns)}", errno.ENODEV)
        return link.index

    # -- addresses ---------------------------------------------------------------------
    def addresses(self, name: str) -> list[IPInterface]:
        body = IFA.pack(socket.AF_UNSPEC, 0, 0, 0, self._index(name))
        _, got = self._call("addr_dump", name, RTM_GETADDR, NLM_F_DUMP, body)
        found = (decode_address(p) for t, p in got if t == RTM_NEWADDR)
        return [a for a in found if a is not None]

    def add_address(self, name: str, address: IPInterface, *, nodad: bool = False) -> None:
        """Add ``address`` to ``name``; an address already there is left alone."""
        flags = IFA_F_NODAD if nodad and address.version == 6 else 0
        packed = address.ip.packed
        body = (IFA.pack(FAMILY[address.version], address.network.prefixlen, flags,
                          0, self._index(name))
                + (attr(IFA_LOCAL, packed) if address.version == 4 else b"")
                + attr(IFA_ADDRESS, packed))
        self._call("addr_add", f"{address} on {name}", RTM_NEWADDR,
                   NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, (errno.EEXIST,))

    def delete_address(self, name: str, address: IPInterface) -> bool:
        """Remove ``address`` from ``name``; False if it was not there."""
        packed = address.ip.packed
        body = (IFA.pack(FAMILY[address.version], address.network.prefixlen, 0, 0,
                          self._index(name))
                + (attr(IFA_LOCAL, packed) if address.version == 4 else b"")
                + attr(IFA_ADDRESS, packed))
        code, _ = self._call("addr_del", f"{address} on {name}", RTM_DELADDR, NLM_F_ACK, body,
                             (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH))
        return not code

    # -- sysctls -----------------------------------------------------------------------
    def sysctl_set(self, key: str, value: str) -> None:
        """Write ``/proc/sys/<key>`` (``net/ipv4/conf/X/proxy_arp``) in this namespace."""
        sysctl(self._counts, self.netns, key, value)

    def sysctl_get(self, key: str) -> str:
        return sysctl(self._counts, self.netns, key, None)


def _socket() -> NetlinkSocket:
    """Strict: an address dump names its link; buffers: room for a batch's errors."""
    return NetlinkSocket(strict=True, buffers=BATCH_BUFFERS)


def raw_opener(counts: CallCounts) -> Callable[[str | None], RawNetlink]:
    """The ``Opener`` of pod wiring: a ``RawNetlink`` in the given namespace."""

    def open_raw(netns: str | None) -> RawNetlink:
        return RawNetlink.open(counts, netns)

    return open_raw
