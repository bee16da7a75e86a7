"""FakeNetlink: an in-memory kernel with the ``Netlink`` adapter's face.

Same calls, same values (``Link``, ``KernelRoute``, ``Neigh``, ...), the same
``NetlinkError`` errnos and messages, the same operation names counted in
``counts``, and the same errors swallowed (an address already there, a route
already gone). The kernel rules themselves live in ``tabby.testing.fakes.kernel``.

    kernel = FakeNetlink()                      # the node's namespace, with lo
    kernel.add_link("up0", "veth", peer="up1", up=True)
    RouteReconciler(counts, netlink=kernel.open).apply(desired)
    pod = kernel.add_netns("/var/run/netns/pod1")
    PodWirer(counts, netlink=kernel.open, netns_exists=kernel.netns_exists)

Test controls: ``add_netns``, ``add_link`` (``ip link add``), ``plant_route``
(a route put anywhere, unchecked), ``table`` (any table's routes) and ``fail``
(the next call of an operation fails with an errno no rule would give).
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Self

from tabby.dataplane.nlvalues import (
    MAIN_TABLE,
    RT_SCOPE_LINK,
    CallCounts,
    IPAddress,
    IPInterface,
    IPNetwork,
    KernelRoute,
    Link,
    Neigh,
    RouteChange,
    RouteOutcome,
    VxlanInfo,
)
from tabby.errors import NetlinkError
from tabby.testing.fakes.kernel import KernelLink, Namespace, same_address

if TYPE_CHECKING:
    from tabby.dataplane.pods import PodNetlink
    from tabby.dataplane.routes import RouteNetlink
    from tabby.dataplane.sysctls import SysctlNetlink
    from tabby.dataplane.vxlan import VxlanNetlink

__all__ = ["FakeNetlink"]


@dataclass
class _World:
    """What the namespaces of one fake kernel share."""

    spaces: dict[str, FakeNetlink] = field(default_factory=dict)
    failures: dict[str, list[int]] = field(default_factory=dict)


class FakeNetlink(Namespace):
    """One namespace of an in-memory kernel, used the way a ``Netlink`` handle is."""

    def __init__(self, netns: str | None = None, *, counts: CallCounts | None = None) -> None:
        super().__init__(itertools.count(1))
        self.netns = netns
        self.counts = counts or CallCounts()
        self._world = _World()
        if netns is not None:
            self._world.spaces[netns] = self

    # -- namespaces, handles and test controls -------------------------------------
    def add_netns(self, path: str) -> FakeNetlink:
        """A fresh namespace at ``path`` in the same kernel (a pod's, say)."""
        space = FakeNetlink(path, counts=self.counts)
        space._world, space._macs = self._world, self._macs
        self._world.spaces[path] = space
        return space

    def netns_exists(self, path: str) -> bool:
        return path in self._world.spaces

    def open(self, netns: str | None = None) -> FakeNetlink:
        """The ``Opener``: this namespace for None, else the one at ``netns``."""
        self.counts.add("open")
        if netns is None or netns == self.netns:
            return self
        if netns not in self._world.spaces:
            raise NetlinkError(f"network namespace {netns}: {os.strerror(errno.ENOENT)}",
                               errno.ENOENT)
        return self._world.spaces[netns]

    def close(self) -> None:
        """Nothing to release: the namespace outlives its handles."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def fail(self, op: str, code: int, times: int = 1) -> None:
        """The next ``times`` calls of ``op`` (in any namespace) fail with errno ``code``."""
        self._world.failures.setdefault(op, []).extend([code] * times)

    def add_link(self, name: str, kind: str = "dummy", *, peer: str | None = None,
                 up: bool = False) -> Link:
        """What ``ip link add`` does (a veth needs ``peer``, made in this namespace)."""
        if (kind == "veth") != (peer is not None):
            raise ValueError("a veth, and only a veth, has a peer")
        self._answer("link_add", name, self._name_problem(name, peer))
        if peer is not None:
            self._new_pair(name, self, peer)
        else:
            self._new_link(name, kind)
        if up:
            self.set_link(name, up=True)
        return self._links[name].view()

    # -- links -------------------------------------------------------------------------
    def links(self) -> list[Link]:
        self._answer("link_dump", "")
        return [x.view() for x in sorted(self._links.values(), key=lambda x: x.index)]

    def link(self, name: str) -> Link | None:
        try:
            self._answer("link_get", name, 0 if name in self._links else errno.ENODEV)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return self._links[name].view()

    def add_veth(self, name: str, peer_name: str, peer_netns: str, *, mac: str | None = None,
                 mtu: int | None = None) -> Link:
        space = self._world.spaces.get(peer_netns)
        if space is None:  # the adapter opens the path first
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), peer_netns)
        code = (self._name_problem(name, peer_name) if space is self
                else self._name_problem(name) or space._name_problem(peer_name))
        self._answer("link_add", f"veth {name} (peer {peer_name})", code)
        self._new_pair(name, space, peer_name, mtu=1500 if mtu is None else mtu, mac=mac)
        return self._created(name)

    def add_vxlan(self, name: str, *, vni: int, local: IPAddress, port: int, mac: str,
                  mtu: int) -> Link:
        code = self._name_problem(name) or (
            errno.EEXIST if self._vxlan_clash(vni, port, local) else 0)
        self._answer("link_add", f"vxlan {name} (VNI {vni}, local {local})", code)
        self._new_link(name, "vxlan", mtu=mtu, mac=mac).vxlan = VxlanInfo(vni, local, port, False)
        return self._created(name)

    def vxlan_info(self, name: str) -> VxlanInfo | None:
        return self._links[name].vxlan if self.link(name) is not None else None

    def set_link(self, name: str, *, up: bool | None = None, mtu: int | None = None,
                 mac: str | None = None) -> None:
        link = self._lookup(name)
        if up is None and mtu is None and mac is None:
            return
        bad_mtu = mtu is not None and not 68 <= mtu <= 65535
        self._answer("link_set", name, errno.EINVAL if bad_mtu else 0)
        link.mtu = link.mtu if mtu is None else mtu
        link.mac = link.mac if mac is None else mac
        if up is not None:
            self._set_up(link, up)

    def delete_link(self, name: str) -> bool:
        if self.link(name) is None:
            return False
        try:
            self._answer("link_del", name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        self._delete(self._links[name])
        return True

    def retire_link(self, name: str, group: int) -> bool:
        """Down and into link group ``group``; False if there is no such link."""
        link = self._links.get(name)
        if not self._done("link_set", name, link is not None, errno.ENODEV) or link is None:
            return False
        link.group = group
        self._set_up(link, False)
        return True

    def delete_group(self, group: int) -> bool:
        """Delete every link in ``group``; False if there is none."""
        doomed = [x for x in self._links.values() if x.group == group]
        if not self._done("link_del", f"group {group}", bool(doomed), errno.ENODEV):
            return False
        for link in doomed:
            if link.name in self._links:  # a veth's peer may have gone with it
                self._delete(link)
        return True

    # -- addresses -----------------------------------------------------------------------
    def addresses(self, name: str) -> list[IPInterface]:
        link = self._lookup(name)
        self._answer("addr_dump", name)
        # IPv4 first; IPv6 global before link-local, as the kernel lists them
        return sorted(link.addresses, key=lambda a: (a.version, a.ip.is_link_local))

    def add_address(self, name: str, address: IPInterface, *, nodad: bool = False) -> None:
        link = self._lookup(name)
        try:
            self._answer("addr_add", f"{address} on {name}",
                         errno.EEXIST if same_address(link, address) else 0)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            return  # the adapter leaves an address already there alone
        self._add_address(link, address)

    def delete_address(self, name: str, address: IPInterface) -> bool:
        link = self._lookup(name)
        if not self._done("addr_del", f"{address} on {name}", address in link.addresses,
                          errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
            return False
        self._remove_address(link, address)
        return True

    # -- neighbours and FDB entries --------------------------------------------------------
    def neighbours(self, name: str, version: int) -> list[Neigh]:
        link = self._lookup(name)
        self._answer("neigh_dump", name)
        return [n for n in link.neighbours.values() if n.address.version == version]

    def replace_neighbour(self, name: str, address: IPAddress, mac: str) -> None:
        link = self._lookup(name)
        self._answer("neigh_replace", f"{address} lladdr {mac} on {name}")
        link.neighbours[address] = Neigh(address, mac, True)

    def delete_neighbour(self, name: str, address: IPAddress) -> bool:
        link = self._lookup(name)
        if not self._done("neigh_del", f"{address} on {name}", address in link.neighbours,
                          errno.ENOENT, errno.ESRCH):
            return False
        del link.neighbours[address]
        return True

    def fdb(self, name: str) -> list[Neigh]:
        link = self._lookup(name)
        self._answer("fdb_dump", name)
        return list(link.fdb.values())

    def replace_fdb(self, name: str, mac: str, dst: IPAddress) -> None:
        link = self._lookup(name)
        self._answer("fdb_replace", f"{mac} dst {dst} on {name}")
        link.fdb[mac] = Neigh(dst, mac, True)

    def delete_fdb(self, name: str, mac: str, dst: IPAddress) -> bool:
        link = self._lookup(name)
        if not self._done("fdb_del", f"{mac} dst {dst} on {name}", mac in link.fdb,
                          errno.ENOENT, errno.ESRCH):
            return False
        if link.fdb[mac].address == dst:  # another destination: the kernel says yes, keeps it
            del link.fdb[mac]
        return True

    # -- routes --------------------------------------------------------------------------
    def routes(self, version: int, protocol: int | None = None) -> list[KernelRoute]:
        self._answer("route_dump", f"ipv{version}")
        return [r for r in self.table(MAIN_TABLE, version)
                if protocol is None or r.protocol == protocol]

    def replace_route(self, dst: IPNetwork, *, protocol: int, type: str = "unicast",
                      gateway: IPAddress | None = None, dev: str | None = None,
                      onlink: bool = False, scope_link: bool = False) -> None:
        link = self._lookup(dev) if dev is not None else None
        code, oif = self._nexthop(dst.version, type, gateway, link, onlink)
        via = f" via {gateway}" if gateway else ""
        self._answer("route_replace", f"{type} {dst}{via}{f' dev {dev}' if dev else ''}", code)
        v4, unicast = dst.version == 4, type == "unicast"
        if not v4 and type not in ("unicast", "blackhole"):
            oif = self._links["lo"].index  # IPv6 puts unreachable and prohibit on lo
        self._replace(KernelRoute(dst, type, gateway if unicast else None, oif, protocol,
                                  RT_SCOPE_LINK if scope_link and v4 else 0,
                                  None if v4 else 1024, onlink and unicast))

    def delete_route(self, route: KernelRoute) -> bool:
        found = self._find(route)
        if not self._done("route_del", f"{route.type} {route.dst}", found is not None,
                          errno.ESRCH, errno.ENOENT):
            return False
        self._drop(lambda r: r is found)
        return True

    def change_routes(self, changes: Sequence[RouteChange]) -> list[RouteOutcome]:
        """The adapter's batch: each change in order, as its single call would go; a refused
        one fails alone (the kernel answers every request of a batch)."""
        outcomes = []
        for change in changes:
            try:
                if change.delete:
                    done = self.delete_route(KernelRoute(
                        change.dst, change.type, None, None, change.protocol, change.scope,
                        change.priority, False))
                else:
                    self.replace_route(change.dst, protocol=change.protocol, type=change.type,
                                       gateway=change.gateway, dev=change.dev,
                                       onlink=change.onlink,
                                       scope_link=change.scope == RT_SCOPE_LINK)
                    done = True
            except NetlinkError as exc:
                outcomes.append(RouteOutcome(change, False, exc))
                continue
            outcomes.append(RouteOutcome(change, done))
        return outcomes

    # -- sysctls -----------------------------------------------------------------------------
    def sysctl_get(self, key: str) -> str:
        key = key.strip("/")
        self._answer_sysctl("sysctl_get", key, self._sysctl_problem(key, None))
        return self._sysctls[key]

    def sysctl_set(self, key: str, value: str) -> None:
        key = key.strip("/")
        self._answer_sysctl("sysctl_set", key, self._sysctl_problem(key, value))
        self._write_sysctl(key, value.strip())

    # -- the adapter's bookkeeping ------------------------------------------------------------
    def _answer(self, op: str, what: str, code: int = 0) -> None:
        """Count one call of ``op``; raise as the adapter does if it fails (or was told to)."""
        queued = self._world.failures.get(op)
        code = queued.pop(0) if queued else code
        if code:
            self._raise(op, f"{op} {what}{self._where()}: {os.strerror(code)}", code)
        self.counts.add(op)

    def _done(self, op: str, what: str, present: bool, *absent: int) -> bool:
        """For deletes: False where the adapter swallows the kernel's "not there"."""
        try:
            self._answer(op, what, 0 if present else absent[0])
        except NetlinkError as exc:
            if exc.code in absent:
                return False
            raise
        return True

    def _answer_sysctl(self, op: str, key: str, code: int) -> None:
        queued = self._world.failures.get(op)
        code = queued.pop(0) if queued else code
        if code:
            self._raise(op, f"sysctl {key}{self._where()}: {os.strerror(code)}", code)
        self.counts.add(op)

    def _raise(self, op: str, message: str, code: int) -> NoReturn:
        self.counts.add(op, failed=True)
        raise NetlinkError(message, code)

    def _where(self) -> str:
        return f" in {self.netns}" if self.netns else ""

    def _lookup(self, name: str) -> KernelLink:
        if self.link(name) is None:
            raise NetlinkError(f"no link named {name}{self._where()}", errno.ENODEV)
        return self._links[name]

    def _created(self, name: str) -> Link:
        created = self.link(name)
        if created is None:
            raise NetlinkError(f"{name} vanished right after creation", errno.ENODEV)
        return created


if TYPE_CHECKING:  # FakeNetlink must keep answering every reconciler's Protocol
    def _conforms(f: FakeNetlink) -> tuple[RouteNetlink, VxlanNetlink, PodNetlink,
                                           SysctlNetlink]:
        return f, f, f, f
