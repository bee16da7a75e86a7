"""The values both kernel adapters speak, and the seam reconcilers take them through.

``tabby.dataplane.netlink`` (pyroute2) and ``tabby.dataplane.rtlink`` (raw
sockets) answer in these values; ``tabby.testing.fakes.FakeNetlink`` too, so a
reconciler never knows which one it faces. Addresses are ``ipaddress`` types;
every value is a small frozen dataclass. ``CallCounts`` tallies calls for
``/metrics``; ``Opener`` is how a reconciler gets a handle.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

from tabby.errors import NetlinkError

__all__ = ["FAMILY", "IFA_F_NODAD", "IFF_UP", "MAIN_TABLE", "RTNH_F_ONLINK", "RT_SCOPE_LINK",
           "RT_SCOPE_UNIVERSE", "CallCounts", "IPAddress", "IPInterface", "IPNetwork",
           "KernelRoute", "Link", "Neigh", "Opener", "RouteChange", "RouteOutcome",
           "VxlanInfo"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

MAIN_TABLE = 254
IFF_UP = 0x1
IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}  # IP version -> address family

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


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One main-table route to write (RTM_NEWROUTE, replace or create) or, with ``delete``,
    to remove (RTM_DELROUTE: matched on destination, type, protocol, scope and, if given,
    priority, as ``ip route del`` does)."""

    dst: IPNetwork
    protocol: int
    type: str = "unicast"
    gateway: IPAddress | None = None
    dev: str | None = None
    onlink: bool = False
    scope: int = RT_SCOPE_UNIVERSE
    priority: int | None = None
    delete: bool = False

    @classmethod
    def removal(cls, route: KernelRoute) -> RouteChange:
        """Delete exactly this kernel route."""
        return cls(route.dst, route.protocol, route.type, scope=route.scope,
                   priority=route.priority, delete=True)

    @property
    def op(self) -> str:
        return "route_del" if self.delete else "route_replace"

    def __str__(self) -> str:
        if self.delete:
            return f"{self.type} {self.dst}"
        via = f" via {self.gateway}" if self.gateway else ""
        on = f" dev {self.dev}" if self.dev else ""
        return f"{self.type} {self.dst}{via}{on}"


@dataclass(frozen=True, slots=True)
class RouteOutcome:
    """What became of one ``RouteChange``: done, refused (``error``), or for a delete, the
    route was already gone (``done`` False, no error)."""

    change: RouteChange
    done: bool
    error: NetlinkError | None = None


# -- counting ----------------------------------------------------------------

class CallCounts:
    """Netlink (and sysctl) calls by operation, for ``/metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}

    def add(self, op: str, failed: bool = False, times: int = 1) -> None:
        with self._lock:
            self._counts[op] = self._counts.get(op, 0) + times
            if failed:
                self._errors[op] = self._errors.get(op, 0) + times

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(calls by op, failed calls by op)."""
        with self._lock:
            return dict(self._counts), dict(self._errors)
