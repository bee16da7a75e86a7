"""The netlink seam: the only module that imports pyroute2.

``Netlink`` is a small, typed adapter over one rtnetlink socket in one network
namespace: links (veth pairs whose peer lands directly in a pod's namespace,
VXLAN devices, MAC, MTU, up/down, delete, lookup), addresses (IPv6 with
``nodad``), routes (replace/delete/dump filtered by protocol; unicast via a
gateway or a device, blackhole, ``onlink``; ``change_routes`` makes thousands
in a few sends, one outcome per route), a VXLAN device's static FDB
entries and permanent neighbours, and sysctls. Routes travel over a second,
raw rtnetlink socket of the same namespace (``tabby.dataplane.nlsock`` and
``rtroutes``: a lean codec, many requests per send), the rest through
pyroute2's ``IPRoute``. ``link_kind_supported`` asks the kernel whether it can
make a kind of link at all (in a scratch namespace).
Values going in and out are ``ipaddress`` types and the frozen dataclasses of
``tabby.dataplane.nlvalues`` (re-exported here, with ``entered_netns``);
pyroute2's messages never leave this module.

Namespaces. The agent runs inside the node's namespace; a pod's namespace is
reached by path (``/var/run/netns/X`` or ``/proc/PID/ns/net``).
``Netlink.open(netns=path)`` enters the namespace on the calling thread just
long enough to open its sockets (``tabby.dataplane.netns``). pyroute2's own
``netns=`` argument forks a helper process per socket, which a threaded daemon
should not do.

Threads. pyroute2 (0.9) keeps its socket and event loop per thread, so a
``Netlink`` belongs to the thread that opened it: open one per unit of work
(``with Netlink.open(...) as nl:``; about a millisecond) rather than sharing.

Every call is counted in a ``CallCounts`` (shared, thread-safe) for metrics.

Seams. The reconcilers do not open sockets themselves: each takes an
``Opener`` (``opener(counts)`` by default) and names the calls it makes in a
small Protocol, so ``tabby.testing.fakes.FakeNetlink`` (an in-memory kernel
answering like this adapter, errnos included) can stand in for it without root.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyrouteNetlinkError

from tabby.dataplane.netns import entered_netns, sysctl, unshare_netns, where
from tabby.dataplane.nlsock import BATCH_BUFFERS, NetlinkSocket
from tabby.dataplane.nlvalues import (
    FAMILY,
    IFA_F_NODAD,
    IFF_UP,
    MAIN_TABLE,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    CallCounts,
    IPAddress,
    IPInterface,
    IPNetwork,
    KernelRoute,
    Link,
    Neigh,
    Opener,
    RouteChange,
    RouteOutcome,
    VxlanInfo,
)
from tabby.dataplane.rtroutes import RouteCalls
from tabby.errors import NetlinkError

__all__ = ["MAIN_TABLE", "RT_SCOPE_LINK", "RT_SCOPE_UNIVERSE", "CallCounts", "IPAddress",
           "IPInterface", "IPNetwork", "KernelRoute", "Link", "Neigh", "Netlink", "NetlinkError",
           "Opener", "RouteChange", "RouteOutcome", "VxlanInfo", "entered_netns",
           "link_kind_supported", "opener"]

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02


# -- the adapter -------------------------------------------------------------

class Netlink(RouteCalls):
    """One rtnetlink socket in one namespace (``netns`` None: the thread's own)."""

    def __init__(self, ipr: Any, counts: CallCounts, netns: str | None,
                 rt: NetlinkSocket | None = None) -> None:
        self._ipr = ipr
        self._nl = rt if rt is not None else NetlinkSocket(buffers=BATCH_BUFFERS)
        self._counts = counts
        self.netns = netns
        self._indexes: dict[str, int] = {}  # name -> ifindex seen by this handle

    @classmethod
    def open(cls, counts: CallCounts, netns: str | None = None) -> Netlink:
        counts.add("open")
        if netns is None:
            return cls(IPRoute(), counts, None)
        with entered_netns(netns):
            ipr = IPRoute()  # its sockets are created here, inside the namespace
            rt = NetlinkSocket(buffers=BATCH_BUFFERS)
        return cls(ipr, counts, netns, rt)

    def close(self) -> None:
        self._nl.close()
        self._ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, op: str, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            result = getattr(self._ipr, method)(*args, **kwargs)
        except _PyrouteNetlinkError as exc:
            self._counts.add(op, failed=True)
            raise NetlinkError(f"{op} {what}{where(self.netns)}: {os.strerror(exc.code)}",
                               exc.code) from exc
        self._counts.add(op)
        return result

    def _done(self, tolerated: tuple[int, ...], op: str, what: str, method: str, command: str,
              **kwargs: Any) -> bool:
        """``_call``; False if the kernel refused with an errno in ``tolerated``."""
        try:
            self._call(op, what, method, command, **kwargs)
        except NetlinkError as exc:
            if exc.code in tolerated:
                return False
            raise
        return True

    def _get(self, name: str) -> Any:
        """pyroute2's messages for link ``name`` ([] if there is none)."""
        try:
            return self._call("link_get", name, "link", "get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return []
            raise

    # -- links ----------------------------------------------------------------
    def links(self) -> list[Link]:
        links = [_link(m) for m in self._call("link_dump", "", "link", "dump")]
        self._indexes.update((link.name, link.index) for link in links)
        return links

    def link(self, name: str) -> Link | None:
        msgs = self._get(name)
        if not msgs:
            return None
        link = _link(msgs[0])
        self._indexes[name] = link.index
        return link

    def add_veth(self, name: str, peer_name: str, peer_netns: str, *, mac: str | None = None,
                 mtu: int | None = None) -> Link:
        """Create veth ``name`` here and its peer ``peer_name`` directly in ``peer_netns``."""
        fd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer: dict[str, Any] = {"ifname": peer_name, "net_ns_fd": fd}
            spec: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": peer}
            if mtu is not None:
                spec["mtu"] = peer["mtu"] = mtu
            if mac is not None:
                spec["address"] = mac
            self._call("link_add", f"veth {name} (peer {peer_name})", "link", "add", **spec)
        finally:
            os.close(fd)
        created = self.link(name)
        if created is None:
            raise NetlinkError(f"veth {name} vanished right after creation", errno.ENODEV)
        return created

    def add_vxlan(self, name: str, *, vni: int, local: IPAddress, port: int, mac: str,
                  mtu: int) -> Link:
        """Create VXLAN device ``name`` without learning (FDB entries are static)."""
        spec: dict[str, Any] = {"ifname": name, "kind": "vxlan", "vxlan_id": vni,
                                "vxlan_port": port, "vxlan_learning": 0, "address": mac,
                                "mtu": mtu}
        spec["vxlan_local" if local.version == 4 else "vxlan_local6"] = str(local)
        self._call("link_add", f"vxlan {name} (VNI {vni}, local {local})", "link", "add", **spec)
        created = self.link(name)
        if created is None:
            raise NetlinkError(f"vxlan {name} vanished right after creation", errno.ENODEV)
        return created

    def vxlan_info(self, name: str) -> VxlanInfo | None:
        """The VXLAN settings of ``name``; None if there is no such link or it is no VXLAN."""
        msgs = self._get(name)
        if not msgs or msgs[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan":
            return None
        data = msgs[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
        return VxlanInfo(vni=int(data.get("IFLA_VXLAN_ID") or 0),
                         local=ipaddress.ip_address(local) if local else None,
                         port=int(data.get("IFLA_VXLAN_PORT") or 0),
                         learning=bool(data.get("IFLA_VXLAN_LEARNING")))

    def set_link(self, name: str, *, up: bool | None = None, mtu: int | None = None,
                 mac: str | None = None) -> None:
        index = self._index(name)
        changes: dict[str, Any] = {}
        if mtu is not None:
            changes["mtu"] = mtu
        if mac is not None:
            changes["address"] = mac
        if up is not None:
            changes["state"] = "up" if up else "down"
        if changes:
            self._call("link_set", name, "link", "set", index=index, **changes)

    def delete_link(self, name: str) -> bool:
        """Delete ``name``; False if there was no such link."""
        link = self.link(name)
        self._indexes.pop(name, None)
        return link is not None and self._done((errno.ENODEV,), "link_del", name, "link",
                                               "del", index=link.index)

    def _index(self, name: str) -> int:
        """The ifindex of ``name``, looked up once per handle (handles are short-lived)."""
        if name in self._indexes:
            return self._indexes[name]
        link = self.link(name)
        if link is None:
            raise NetlinkError(f"no link named {name}{where(self.netns)}", errno.ENODEV)
        return link.index

    # -- addresses -----------------------------------------------------------
    def addresses(self, name: str) -> list[IPInterface]:
        index = self._index(name)
        out: list[IPInterface] = []
        for msg in self._call("addr_dump", name, "addr", "dump", index=index):
            text = msg.get("IFA_ADDRESS") or msg.get("IFA_LOCAL")
            if text:
                out.append(ipaddress.ip_interface(f"{text}/{msg['prefixlen']}"))
        return out

    def add_address(self, name: str, address: IPInterface, *, nodad: bool = False) -> None:
        """Add ``address`` to ``name``; an address already there is left alone."""
        index = self._index(name)
        flags = IFA_F_NODAD if nodad and address.version == 6 else 0
        self._done((errno.EEXIST,), "addr_add", f"{address} on {name}", "addr", "add",
                   index=index, address=str(address.ip), prefixlen=address.network.prefixlen,
                   flags=flags)

    def delete_address(self, name: str, address: IPInterface) -> bool:
        """Remove ``address`` from ``name``; False if it was not there."""
        index = self._index(name)
        return self._done((errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH), "addr_del",
                          f"{address} on {name}", "addr", "del", index=index,
                          address=str(address.ip), prefixlen=address.network.prefixlen)

    # -- neighbours and FDB entries -----------------------------------------------
    def neighbours(self, name: str, version: int) -> list[Neigh]:
        """ARP (4) or NDP (6) entries on ``name`` that carry an address."""
        index = self._index(name)
        return _entries(self._call("neigh_dump", name, "neigh", "dump", ifindex=index,
                                   family=FAMILY[version]), index)

    def replace_neighbour(self, name: str, address: IPAddress, mac: str) -> None:
        """A permanent entry ``address`` -> ``mac`` on ``name``."""
        self._call("neigh_replace", f"{address} lladdr {mac} on {name}", "neigh", "replace",
                   ifindex=self._index(name), dst=str(address), lladdr=mac,
                   family=FAMILY[address.version], state=NUD_PERMANENT)

    def delete_neighbour(self, name: str, address: IPAddress) -> bool:
        return self._done((errno.ENOENT, errno.ESRCH), "neigh_del", f"{address} on {name}",
                          "neigh", "del", ifindex=self._index(name), dst=str(address),
                          family=FAMILY[address.version])

    def fdb(self, name: str) -> list[Neigh]:
        """FDB entries of ``name`` that send a MAC to a remote address (VXLAN)."""
        index = self._index(name)
        return _entries(self._call("fdb_dump", name, "fdb", "dump", ifindex=index), index)

    def replace_fdb(self, name: str, mac: str, dst: IPAddress) -> None:
        """A static entry: frames for ``mac`` go to ``dst`` (``bridge fdb replace ... self``)."""
        self._call("fdb_replace", f"{mac} dst {dst} on {name}", "fdb", "replace",
                   ifindex=self._index(name), lladdr=mac, dst=str(dst),
                   state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)

    def delete_fdb(self, name: str, mac: str, dst: IPAddress) -> bool:
        return self._done((errno.ENOENT, errno.ESRCH), "fdb_del", f"{mac} dst {dst} on {name}",
                          "fdb", "del", ifindex=self._index(name), lladdr=mac, dst=str(dst))

    # -- sysctls -------------------------------------------------------------
    # Routes (RouteCalls) go through the raw socket, not pyroute2: thousands at a time,
    # many per send (see tabby.dataplane.rtnl for the measurements).

    def sysctl_set(self, key: str, value: str) -> None:
        """Write ``/proc/sys/<key>`` (``net/ipv4/conf/X/proxy_arp``) in this namespace."""
        sysctl(self._counts, self.netns, key, value)

    def sysctl_get(self, key: str) -> str:
        return sysctl(self._counts, self.netns, key, None)


def opener(counts: CallCounts) -> Callable[[str | None], Netlink]:
    """The real ``Opener``: a ``Netlink`` in the given namespace, counted in ``counts``."""

    def open_netlink(netns: str | None) -> Netlink:
        return Netlink.open(counts, netns)

    return open_netlink


def link_kind_supported(kind: str, counts: CallCounts | None = None) -> bool:
    """Can this kernel create a link of ``kind`` (``ipip``, ``vxlan``, ...)? Asked by
    creating one in a scratch namespace that only a short-lived thread enters (it
    vanishes with the thread), so no namespace in use is touched."""
    answer: list[bool | BaseException] = []

    def probe() -> None:
        try:
            unshare_netns()
            ipr = IPRoute()
            try:
                ipr.link("add", ifname="probe0", kind=kind)
                answer.append(True)
            except _PyrouteNetlinkError as exc:
                # EOPNOTSUPP: no such kind; EINVAL: a known kind wanting more (a VNI, ...)
                if exc.code not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise NetlinkError(f"probing link kind {kind}: {os.strerror(exc.code)}",
                                       exc.code) from exc
                answer.append(exc.code == errno.EINVAL)
            finally:
                ipr.close()
        except BaseException as exc:  # handed to the caller's thread
            answer.append(exc)

    thread = threading.Thread(target=probe, name=f"probe-{kind}", daemon=True)
    thread.start()
    thread.join()
    if counts is not None:
        counts.add("link_probe")
    result = answer[0] if answer else NetlinkError(f"probing link kind {kind}: no answer", 0)
    if isinstance(result, BaseException):
        raise result
    return result


def _link(msg: Any) -> Link:
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
    return Link(
        index=int(msg["index"]),
        name=str(msg.get("IFLA_IFNAME")),
        mac=str(msg.get("IFLA_ADDRESS") or ""),
        mtu=int(msg.get("IFLA_MTU") or 0),
        up=bool(msg["flags"] & IFF_UP),
        kind=str(kind),
        peer_index=msg.get("IFLA_LINK"),
    )


def _entries(msgs: Any, index: int) -> list[Neigh]:
    """Neighbour or FDB messages of interface ``index`` that map an address to a MAC."""
    out = []
    for msg in msgs:
        dst, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
        if msg["ifindex"] == index and dst and mac:
            out.append(Neigh(ipaddress.ip_address(dst), str(mac),
                             bool(msg["state"] & NUD_PERMANENT)))
    return out
