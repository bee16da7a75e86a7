"""The netlink seam: the only module that imports pyroute2.

``Netlink`` is a small, typed adapter over one rtnetlink socket in one network
namespace: links (veth pairs whose peer lands directly in a pod's namespace,
VXLAN devices, MAC, MTU, up/down, delete, lookup), addresses (IPv6 with
``nodad``), routes (replace/delete/dump filtered by protocol; unicast via a
gateway or a device, blackhole, ``onlink``), a VXLAN device's static FDB
entries and permanent neighbours, and sysctls. ``link_kind_supported`` asks
the kernel whether it can make a kind of link at all (in a scratch namespace).
Values going in and out are ``ipaddress`` types and frozen dataclasses;
pyroute2's messages never leave this module.

Namespaces. The agent runs inside the node's namespace; a pod's namespace is
reached by path (``/var/run/netns/X`` or ``/proc/PID/ns/net``). Linux lets one
*thread* enter a network namespace with setns(2) while the rest of the process
stays put, and a netlink socket (and a ``/proc/sys/net`` file) belongs to the
namespace of the thread that opened it. So ``Netlink.open(netns=path)`` enters
the namespace on the calling thread just long enough to open its socket, and
sysctls of that namespace are written the same way. pyroute2's own ``netns=``
argument forks a helper process per socket, which a threaded daemon should not
do.

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

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyrouteNetlinkError

from tabby.errors import NetlinkError

__all__ = ["MAIN_TABLE", "RT_SCOPE_LINK", "RT_SCOPE_UNIVERSE", "CallCounts", "IPAddress",
           "IPInterface", "IPNetwork", "KernelRoute", "Link", "Neigh", "Netlink", "NetlinkError",
           "Opener", "VxlanInfo", "entered_netns", "link_kind_supported", "opener"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

MAIN_TABLE = 254
IFF_UP = 0x1
IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
ROUTE_TYPES = {1: "unicast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
_CLONE_NEWNET = 0x40000000
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


H = TypeVar("H")

# How a reconciler gets its kernel access: ``opener(netns)`` (None: the calling thread's
# namespace) returns a handle to use in a ``with`` block. Each reconciler names the calls
# it makes in a Protocol H of its own; ``opener(counts)`` is the real one,
# ``tabby.testing.fakes.FakeNetlink.open`` an in-memory one.
Opener = Callable[[str | None], AbstractContextManager[H]]


# -- values ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    up: bool
    kind: str  # "veth", "bridge", "" for plain devices
    peer_index: int | None  # IFLA_LINK: a veth's peer index (in the peer's namespace)


@dataclass(frozen=True, slots=True)
class VxlanInfo:
    """A VXLAN link's own settings, as the kernel reports them."""

    vni: int
    local: IPAddress | None
    port: int
    learning: bool


@dataclass(frozen=True, slots=True)
class Neigh:
    """A neighbour (``address`` -> ``mac``) or, on a VXLAN device, an FDB entry
    (``mac`` -> remote ``address``)."""

    address: IPAddress
    mac: str
    permanent: bool


@dataclass(frozen=True, slots=True)
class KernelRoute:
    """A route as the kernel reports it (main table only)."""

    dst: IPNetwork
    type: str  # unicast, blackhole, unreachable, prohibit, other
    gateway: IPAddress | None
    oif: int | None
    protocol: int
    scope: int
    priority: int | None
    onlink: bool


# -- counting ----------------------------------------------------------------

class CallCounts:
    """Netlink (and sysctl) calls by operation, for ``/metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}

    def add(self, op: str, failed: bool = False) -> None:
        with self._lock:
            self._counts[op] = self._counts.get(op, 0) + 1
            if failed:
                self._errors[op] = self._errors.get(op, 0) + 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(calls by op, failed calls by op)."""
        with self._lock:
            return dict(self._counts), dict(self._errors)


# -- namespaces --------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@contextlib.contextmanager
def entered_netns(path: str) -> Iterator[None]:
    """Run the body with the *calling thread* inside the namespace at ``path``.

    Only what the body opens (sockets, /proc/sys/net files) belongs to that
    namespace; the thread is back in its own namespace afterwards.
    """
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetlinkError(f"network namespace {path}: {exc.strerror}", exc.errno or 0) from exc
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as exc:
            raise NetlinkError(f"cannot enter network namespace {path}: {exc.strerror}",
                               exc.errno or 0) from exc
        try:
            yield
        finally:
            # Failing to return would leave this thread in the pod's namespace.
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


# -- the adapter -------------------------------------------------------------

class Netlink:
    """One rtnetlink socket in one namespace (``netns`` None: the thread's own)."""

    def __init__(self, ipr: Any, counts: CallCounts, netns: str | None) -> None:
        self._ipr = ipr
        self._counts = counts
        self.netns = netns
        self._indexes: dict[str, int] = {}  # name -> ifindex seen by this handle

    @classmethod
    def open(cls, counts: CallCounts, netns: str | None = None) -> Netlink:
        counts.add("open")
        if netns is None:
            return cls(IPRoute(), counts, None)
        with entered_netns(netns):
            ipr = IPRoute()  # its socket is created here, inside the namespace
        return cls(ipr, counts, netns)

    def close(self) -> None:
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
            where = f" in {self.netns}" if self.netns else ""
            raise NetlinkError(f"{op} {what}{where}: {os.strerror(exc.code)}", exc.code) from exc
        self._counts.add(op)
        return result

    # -- links ----------------------------------------------------------------
    def links(self) -> list[Link]:
        return [_link(m) for m in self._call("link_dump", "", "link", "dump")]

    def link(self, name: str) -> Link | None:
        try:
            msgs = self._call("link_get", name, "link", "get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
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
        try:
            msgs = self._call("link_get", name, "link", "get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
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
        if link is None:
            return False
        try:
            self._call("link_del", name, "link", "del", index=link.index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True

    def _index(self, name: str) -> int:
        """The ifindex of ``name``, looked up once per handle (handles are short-lived)."""
        if name in self._indexes:
            return self._indexes[name]
        link = self.link(name)
        if link is None:
            where = f" in {self.netns}" if self.netns else ""
            raise NetlinkError(f"no link named {name}{where}", errno.ENODEV)
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
        try:
            self._call("addr_add", f"{address} on {name}", "addr", "add", index=index,
                       address=str(address.ip), prefixlen=address.network.prefixlen,
                       flags=flags)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    def delete_address(self, name: str, address: IPInterface) -> bool:
        """Remove ``address`` from ``name``; False if it was not there."""
        index = self._index(name)
        try:
            self._call("addr_del", f"{address} on {name}", "addr", "del", index=index,
                       address=str(address.ip), prefixlen=address.network.prefixlen)
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                return False
            raise
        return True

    # -- neighbours and FDB entries -----------------------------------------------
    def neighbours(self, name: str, version: int) -> list[Neigh]:
        """ARP (4) or NDP (6) entries on ``name`` that carry an address."""
        index = self._index(name)
        return _entries(self._call("neigh_dump", name, "neigh", "dump", ifindex=index,
                                   family=_FAMILY[version]), index)

    def replace_neighbour(self, name: str, address: IPAddress, mac: str) -> None:
        """A permanent entry ``address`` -> ``mac`` on ``name``."""
        self._call("neigh_replace", f"{address} lladdr {mac} on {name}", "neigh", "replace",
                   ifindex=self._index(name), dst=str(address), lladdr=mac,
                   family=_FAMILY[address.version], state=NUD_PERMANENT)

    def delete_neighbour(self, name: str, address: IPAddress) -> bool:
        try:
            self._call("neigh_del", f"{address} on {name}", "neigh", "del",
                       ifindex=self._index(name), dst=str(address),
                       family=_FAMILY[address.version])
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH):
                return False
            raise
        return True

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
        try:
            self._call("fdb_del", f"{mac} dst {dst} on {name}", "fdb", "del",
                       ifindex=self._index(name), lladdr=mac, dst=str(dst))
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH):
                return False
            raise
        return True

    # -- routes --------------------------------------------------------------
    def routes(self, version: int, protocol: int | None = None) -> list[KernelRoute]:
        """Main-table routes of one family, optionally only those with ``protocol``."""
        filters: dict[str, Any] = {"family": _FAMILY[version], "table": MAIN_TABLE}
        if protocol is not None:
            filters["proto"] = protocol
        msgs = self._call("route_dump", f"ipv{version}", "route", "dump", **filters)
        return [r for r in (_route(m, version) for m in msgs) if r is not None]

    def replace_route(self, dst: IPNetwork, *, protocol: int, type: str = "unicast",
                      gateway: IPAddress | None = None, dev: str | None = None,
                      onlink: bool = False, scope_link: bool = False) -> None:
        """Add or overwrite the main-table route to ``dst`` (RTM_NEWROUTE, NLM_F_REPLACE)."""
        spec = self._route_spec(dst, protocol, type)
        if gateway is not None:
            spec["gateway"] = str(gateway)
        if dev is not None:
            spec["oif"] = self._index(dev)
        if onlink:
            spec["flags"] = RTNH_F_ONLINK
        if scope_link:
            spec["scope"] = RT_SCOPE_LINK
        via = f" via {gateway}" if gateway else ""
        on = f" dev {dev}" if dev else ""
        self._call("route_replace", f"{type} {dst}{via}{on}", "route", "replace", **spec)

    def delete_route(self, route: KernelRoute) -> bool:
        """Delete exactly this kernel route; False if it was already gone."""
        spec = self._route_spec(route.dst, route.protocol, route.type)
        spec["scope"] = route.scope  # IPv4 matches on scope (iproute2 sends "nowhere")
        if route.priority is not None:
            spec["priority"] = route.priority
        try:
            self._call("route_del", f"{route.type} {route.dst}", "route", "del", **spec)
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT):
                return False
            raise
        return True

    @staticmethod
    def _route_spec(dst: IPNetwork, protocol: int, type: str) -> dict[str, Any]:
        return {"dst": str(dst.network_address), "dst_len": dst.prefixlen,
                "family": _FAMILY[dst.version], "table": MAIN_TABLE, "proto": protocol,
                "type": type}

    # -- sysctls -------------------------------------------------------------
    def sysctl_set(self, key: str, value: str) -> None:
        """Write ``/proc/sys/<key>`` (``net/ipv4/conf/X/proxy_arp``) in this namespace."""
        self._sysctl(key, value)

    def sysctl_get(self, key: str) -> str:
        return self._sysctl(key, None)

    def _sysctl(self, key: str, value: str | None) -> str:
        op = "sysctl_get" if value is None else "sysctl_set"
        path = "/proc/sys/" + key.strip("/")
        ctx = entered_netns(self.netns) if self.netns else contextlib.nullcontext()
        try:
            with ctx:
                if value is None:
                    with open(path, encoding="ascii") as fh:
                        result = fh.read().strip()
                else:
                    with open(path, "w", encoding="ascii") as fh:
                        fh.write(value)
                    result = value
        except OSError as exc:
            self._counts.add(op, failed=True)
            where = f" in {self.netns}" if self.netns else ""
            raise NetlinkError(f"sysctl {key}{where}: {exc.strerror}", exc.errno or 0) from exc
        self._counts.add(op)
        return result


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
            if _libc.unshare(_CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise NetlinkError(f"cannot make a scratch namespace: {os.strerror(code)}",
                                   code)
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


def _route(msg: Any, version: int) -> KernelRoute | None:
    if (msg.get("RTA_TABLE") or msg.get("table")) != MAIN_TABLE:
        return None
    dst_text = msg.get("RTA_DST")
    base = dst_text if dst_text else ("0.0.0.0" if version == 4 else "::")
    gateway = msg.get("RTA_GATEWAY")
    rtype = ROUTE_TYPES.get(int(msg["type"]), "other")
    return KernelRoute(
        dst=ipaddress.ip_network(f"{base}/{msg['dst_len']}"),
        type=rtype,
        gateway=ipaddress.ip_address(gateway) if gateway else None,
        oif=None if rtype == "blackhole" else msg.get("RTA_OIF"),
        protocol=int(msg["proto"]),
        scope=int(msg["scope"]),
        priority=msg.get("RTA_PRIORITY"),
        onlink=bool(msg["flags"] & RTNH_F_ONLINK),
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
