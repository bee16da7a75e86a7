"""rtnetlink messages for links and addresses: encoders and decoders.

The wire half of ``tabby.dataplane.rtlink``: the headers of link (``ifinfo``)
and address (``IFA``) requests, to which ``nlsock``'s attribute encoders add the
few attributes tabby sets, and readers for the answers (``decode_link``,
``decode_address``). Framing, the socket and errors are ``nlsock``'s; routes are
``rtnl``'s. Addresses are bytes in requests; the decoders answer in tabby's
values.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from tabby.dataplane.nlsock import U32, attrs, text_of
from tabby.dataplane.nlvalues import IFF_UP, IPInterface, Link

__all__ = ["IFA", "decode_address", "decode_link", "ifinfo", "mac_bytes"]

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_LINKINFO = 1, 3, 4, 5, 18
IFLA_GROUP, IFLA_NET_NS_FD, IFLA_EXT_MASK = 27, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
RTEXT_FILTER_SKIP_STATS = 1 << 3  # GETLINK answers without the ~1 KiB of counters
IFA_ADDRESS, IFA_LOCAL = 1, 2

_IFI = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
IFA = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFI.pack(socket.AF_UNSPEC, 0, index, flags, change)


def decode_link(payload: memoryview) -> Link:
    """One RTM_NEWLINK message's body as ``Link`` (what ``Netlink`` reads of it)."""
    _family, _type, index, flags, _change = _IFI.unpack_from(payload, 0)
    name, mac, mtu, peer, kind = "", "", 0, None, ""
    for attr, value in attrs(payload, _IFI.size):
        if attr == IFLA_IFNAME:
            name = text_of(value)
        elif attr == IFLA_ADDRESS:
            mac = ":".join(f"{b:02x}" for b in value)
        elif attr == IFLA_MTU:
            (mtu,) = U32.unpack_from(value)
        elif attr == IFLA_LINK:
            (peer,) = U32.unpack_from(value)
        elif attr == IFLA_LINKINFO:
            kind = next((text_of(v) for a, v in attrs(value) if a == IFLA_INFO_KIND), "")
    return Link(index=index, name=name, mac=mac, mtu=mtu, up=bool(flags & IFF_UP), kind=kind,
                peer_index=peer)


def decode_address(payload: memoryview) -> IPInterface | None:
    family, prefixlen, _flags, _scope, _index = IFA.unpack_from(payload, 0)
    found: dict[int, bytes] = {}
    for attr, value in attrs(payload, IFA.size):
        if attr in (IFA_ADDRESS, IFA_LOCAL):
            found[attr] = bytes(value)
    raw = found.get(IFA_ADDRESS) or found.get(IFA_LOCAL)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return ipaddress.ip_interface(f"{ipaddress.ip_address(raw)}/{prefixlen}")
