"""The kernel rules behind FakeNetlink: one network namespace as data.

``Namespace`` holds links, addresses, routing tables, neighbours, FDB entries
and sysctls, and applies the rules the reconcilers rely on; ``FakeNetlink``
(``tabby.testing.fakes.netlink``) puts the ``Netlink`` adapter's face on it.
Each rule was checked against Linux 6.x (tests/netns/test_fakes_agree.py replays
one sequence on a real namespace and on the fake and compares):

- route identity: IPv4 (dst, priority), IPv6 (dst, metric, 1024 unless given);
  replace overwrites the route of that identity whatever its protocol; delete
  matches dst and, where given, protocol, priority and (IPv4 only) type and scope;
- next hops: a gateway resolves through a connected route (IPv4: scope link;
  IPv6: the best match, which must have no gateway) on the given device, else
  ENETUNREACH (IPv4) / EHOSTUNREACH (IPv6); an IPv6 link-local gateway needs a
  device (EINVAL) but no route; ``onlink`` needs a device (ENODEV); a device
  route, onlink or link-local hop over a device that is down: ENETDOWN;
- addresses of an up link make connected routes (proto kernel; IPv4 scope
  link and none for a /32, IPv6 metric 256; none on lo); a link with carrier (a
  veth whose peer is up too) gets an EUI-64 link-local address, fe80::/64 and an
  MLD neighbour entry (ff02::16) when it comes up;
- a link going down loses its routes and IPv6 addresses; deleting a link (a veth
  takes its peer along) drops its routes; deleting a link's last IPv4 address
  drops its IPv4 routes;
- FDB entries (one destination per MAC): deleting a MAC that is not there is
  ENOENT, deleting it with another destination succeeds and deletes nothing;
- a name over 15 characters: ERANGE; a taken name: EEXIST; a second VXLAN
  device of a family with the same VNI and port: EEXIST; an MTU outside
  68..65535: EINVAL; sysctls exist per device (ENOENT otherwise; a new device
  copies ``default``), take integers (EINVAL), and ``ip_forward`` (IPv6:
  ``all/forwarding``) switches every interface's ``forwarding``.

Not modelled: DAD, route lookups outside the main table (``plant_route`` puts
routes in others, to show they are left alone), multipath, neighbour
resolution, and carrier delays (a real kernel adds link-local addresses a
moment after the carrier comes; the fake at once).
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tabby.dataplane.netlink import (
    MAIN_TABLE,
    RT_SCOPE_LINK,
    IPAddress,
    IPInterface,
    IPNetwork,
    KernelRoute,
    Link,
    Neigh,
    VxlanInfo,
)

__all__ = ["PROTO_KERNEL", "KernelLink", "Namespace", "same_address"]

PROTO_KERNEL = 2
FORWARD = {"net/ipv4/ip_forward": "ipv4", "net/ipv6/conf/all/forwarding": "ipv6"}
DEVICE_SYSCTLS = {"net/ipv4/conf/{}/proxy_arp": "0", "net/ipv4/conf/{}/forwarding": "0",
                  "net/ipv4/neigh/{}/proxy_delay": "80", "net/ipv6/conf/{}/accept_dad": "1",
                  "net/ipv6/conf/{}/forwarding": "0"}
_MLD = Neigh(ipaddress.IPv6Address("ff02::16"), "33:33:00:00:00:16", False)


@dataclass(eq=False)
class KernelLink:
    """A link as the kernel keeps it (``view`` is what the adapter reports)."""

    space: Namespace
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool = False
    peer: KernelLink | None = None
    group: int = 0  # the link group (0: the kernel's default)
    vxlan: VxlanInfo | None = None
    addresses: list[IPInterface] = field(default_factory=list)
    neighbours: dict[IPAddress, Neigh] = field(default_factory=dict)
    fdb: dict[str, Neigh] = field(default_factory=dict)

    def view(self) -> Link:
        return Link(self.index, self.name, self.mac, self.mtu, self.up, self.kind,
                    self.peer.index if self.peer else None)

    @property
    def carrier(self) -> bool:
        return self.up and (self.peer is None or self.peer.up)


class Namespace:
    """One network namespace: its state and the rules that change it."""

    def __init__(self, macs: Iterator[int]) -> None:
        self._macs = macs  # shared by every namespace of one fake kernel
        self._links: dict[str, KernelLink] = {}
        self._tables: dict[int, list[KernelRoute]] = {MAIN_TABLE: []}
        self._sysctls = dict.fromkeys(FORWARD, "0")
        for template, default in DEVICE_SYSCTLS.items():
            if "/conf/" in template:
                self._sysctls.update({template.format(x): default for x in ("all", "default")})
        self._sysctls["net/ipv6/conf/all/accept_dad"] = "0"
        self._next_index = 1
        self._new_link("lo", "", mtu=65536, mac="00:00:00:00:00:00")
        self._sysctls["net/ipv6/conf/lo/accept_dad"] = "-1"

    def plant_route(self, route: KernelRoute, table: int = MAIN_TABLE) -> None:
        """Put ``route`` into ``table`` unchecked, as someone else's tool might."""
        self._tables.setdefault(table, []).append(route)

    def table(self, table: int, version: int) -> list[KernelRoute]:
        """The routes of one family in ``table``, in the kernel's dump order."""
        return sorted((r for r in self._tables.get(table, []) if r.dst.version == version),
                      key=_route_order)

    # -- links ---------------------------------------------------------------------
    def _name_problem(self, *names: str | None) -> int:
        for name in (n for n in names if n is not None):
            if not name or len(name) > 15:
                return errno.ERANGE if name else errno.EINVAL
            if name in self._links:
                return errno.EEXIST
        return 0

    def _new_link(self, name: str, kind: str, *, mtu: int = 1500, mac: str | None = None
                  ) -> KernelLink:
        if mac is None:  # locally administered, unique in this fake kernel
            mac = "02:00:5e:" + ":".join(f"{b:02x}" for b in next(self._macs).to_bytes(3, "big"))
        link = KernelLink(self, self._next_index, name, kind, mac, mtu)
        self._next_index += 1
        self._links[name] = link
        for template, default in DEVICE_SYSCTLS.items():
            self._sysctls[template.format(name)] = self._sysctls.get(
                template.format("default"), default)
        return link

    def _new_pair(self, name: str, peer_space: Namespace, peer_name: str, *, mtu: int = 1500,
                  mac: str | None = None) -> KernelLink:
        """A veth pair; the kernel makes the peer first (it gets the lower index)."""
        peer = peer_space._new_link(peer_name, "veth", mtu=mtu)
        link = self._new_link(name, "veth", mtu=mtu, mac=mac)
        link.peer, peer.peer = peer, link
        return link

    def _vxlan_clash(self, vni: int, port: int, local: IPAddress) -> bool:
        return any(x.vxlan is not None and (x.vxlan.vni, x.vxlan.port) == (vni, port)
                   and x.vxlan.local is not None and x.vxlan.local.version == local.version
                   for x in self._links.values())

    def _delete(self, link: KernelLink) -> None:
        for gone in (link, link.peer):
            if gone is not None:
                gone.space._forget(gone)

    def _forget(self, link: KernelLink) -> None:
        self._links.pop(link.name, None)
        self._drop(lambda r: r.oif == link.index)
        for template in DEVICE_SYSCTLS:
            self._sysctls.pop(template.format(link.name), None)

    def _set_up(self, link: KernelLink, up: bool) -> None:
        if up == link.up:
            return
        link.up = up
        if not up:
            self._drop(lambda r: r.oif == link.index)
            link.addresses = [a for a in link.addresses if a.version == 4]
            link.neighbours = {k: n for k, n in link.neighbours.items() if n.permanent}
            return
        self._link_up(link)
        if link.peer is not None and link.peer.up:
            link.peer.space._link_up(link.peer)  # the peer has carrier now

    def _link_up(self, link: KernelLink) -> None:
        if link.name == "lo":
            for text in ("127.0.0.1/8", "::1/128"):
                if not same_address(link, ipaddress.ip_interface(text)):
                    link.addresses.append(ipaddress.ip_interface(text))
            return
        for address in link.addresses:
            self._connect(link, address)
        if link.carrier and not any(a.ip.is_link_local for a in link.addresses):
            local = _link_local(link.mac)
            link.addresses.append(local)
            self._connect(link, local)
            link.neighbours.setdefault(_MLD.address, _MLD)

    # -- addresses -----------------------------------------------------------------
    def _add_address(self, link: KernelLink, address: IPInterface) -> None:
        link.addresses.append(address)
        if link.up:
            self._connect(link, address)

    def _remove_address(self, link: KernelLink, address: IPInterface) -> None:
        link.addresses.remove(address)
        route = _connected(link, address)
        if route is not None and all(_connected(link, a) != route for a in link.addresses):
            self._drop(lambda r: r == route)
        if address.version == 4 and not any(a.version == 4 for a in link.addresses):
            self._drop(lambda r: r.oif == link.index and r.dst.version == 4)

    def _connect(self, link: KernelLink, address: IPInterface) -> None:
        route = _connected(link, address)
        if route is not None and route not in self._tables[MAIN_TABLE]:
            self._tables[MAIN_TABLE].append(route)

    # -- routes ----------------------------------------------------------------------
    def _drop(self, doomed: Callable[[KernelRoute], bool]) -> None:
        for number, routes in self._tables.items():
            self._tables[number] = [r for r in routes if not doomed(r)]

    def _replace(self, route: KernelRoute) -> None:
        main = self._tables[MAIN_TABLE]
        same = next((r for r in sorted(main, key=_route_order) if _key(r) == _key(route)), None)
        if same is not None:
            main.remove(same)
        main.append(route)

    def _find(self, route: KernelRoute) -> KernelRoute | None:
        """The route a delete request shaped like ``route`` removes."""
        v4 = route.dst.version == 4
        return next((r for r in self.table(MAIN_TABLE, route.dst.version)
                     if r.dst == route.dst
                     and (not route.protocol or r.protocol == route.protocol)
                     and (not route.priority or (r.priority or 0) == route.priority)
                     and (not v4 or (r.type, r.scope) == (route.type, route.scope))), None)

    def _nexthop(self, version: int, type: str, gateway: IPAddress | None,
                 link: KernelLink | None, onlink: bool) -> tuple[int, int | None]:
        """(errno, oif) for a route's next hop, as the kernel's checks answer."""
        if type != "unicast":
            return 0, None
        local_hop = gateway is not None and gateway.version == 6 and gateway.is_link_local
        if gateway is not None and not onlink and not local_hop:
            oif = self._resolve(gateway, link)
            return (0, oif) if oif is not None else (
                errno.ENETUNREACH if version == 4 else errno.EHOSTUNREACH, None)
        if link is None:
            return (errno.ENODEV if onlink else errno.EINVAL), None
        return (0, link.index) if link.up else (errno.ENETDOWN, None)

    def _resolve(self, gateway: IPAddress, link: KernelLink | None) -> int | None:
        """The device a gateway is reached through, or None if it does not resolve."""
        main = [r for r in self.table(MAIN_TABLE, gateway.version) if gateway in r.dst]
        if gateway.version == 4:  # only connected (scope link) routes resolve a gateway
            main = [r for r in main if r.scope >= RT_SCOPE_LINK and r.type == "unicast"]
        if link is not None:
            main = [r for r in main if r.oif == link.index]
        if not main:
            return None
        best = max(main, key=lambda r: (r.dst.prefixlen, -(r.priority or 0)))
        return best.oif if best.type == "unicast" and best.gateway is None else None

    # -- sysctls -----------------------------------------------------------------------
    def _sysctl_problem(self, key: str, value: str | None) -> int:
        if key not in self._sysctls:
            return errno.ENOENT
        return 0 if value is None or value.strip().lstrip("-").isdigit() else errno.EINVAL

    def _write_sysctl(self, key: str, value: str) -> None:
        family = FORWARD.get(key)
        if family is not None:
            self._sysctls.update({k: value for k in self._sysctls
                                  if k.startswith(f"net/{family}/conf/")
                                  and k.endswith("/forwarding")})
        self._sysctls[key] = value


def _key(route: KernelRoute) -> tuple[IPNetwork, int]:
    return route.dst, route.priority or 0


def _route_order(route: KernelRoute) -> tuple[int, int, int, int]:
    return (route.dst.version, int(route.dst.network_address), route.dst.prefixlen,
            route.priority or 0)


def same_address(link: KernelLink, address: IPInterface) -> bool:
    """IPv4 tells addresses apart by (address, prefix), IPv6 by address alone."""
    if address.version == 4:
        return address in link.addresses
    return any(a.ip == address.ip for a in link.addresses)


def _connected(link: KernelLink, address: IPInterface) -> KernelRoute | None:
    """The route the kernel makes for ``address`` on ``link`` (when it is up)."""
    if link.name == "lo" or (address.version == 4 and address.network.prefixlen == 32):
        return None
    v4 = address.version == 4
    return KernelRoute(address.network, "unicast", None, link.index, PROTO_KERNEL,
                       RT_SCOPE_LINK if v4 else 0, None if v4 else 256, False)


def _link_local(mac: str) -> ipaddress.IPv6Interface:
    """fe80::/64 with the EUI-64 interface id of ``mac`` (the kernel's default)."""
    octets = bytearray(int(x, 16) for x in mac.split(":"))
    octets[0] ^= 0x02
    iid = bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:])
    return ipaddress.IPv6Interface((int.from_bytes(b"\xfe\x80" + bytes(6) + iid, "big"), 64))

