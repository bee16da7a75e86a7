"""The VXLAN reconciler: make tabby's VXLAN devices match ``desired_devices``.

    VxlanReconciler(counts).apply(devices: tuple[VxlanDevice, ...]) -> VxlanSync

Per wanted device (``vxlan.tabby``, ``vxlan-v6.tabby``): a device of that name
whose VNI, local address, port or learning differ is deleted and made again
(the kernel cannot change them in place); MAC, MTU and up are set in place;
the VTEP address is added (IPv6 without DAD) and any other global address
removed; static FDB entries and permanent neighbours are brought to exactly
the desired set (extras deleted, missing or different ones replaced). A
device name of tabby's that is not wanted is deleted (the kernel drops its
routes, FDB and neighbours with it). Nothing else is touched.

Like the route reconciler, a pass whose desired state equals what the last
clean pass installed does nothing unless ``full`` (periodic read-back);
after an error the next pass reads everything back.

Kernel access goes through the ``netlink`` opener; ``VxlanNetlink`` names
the calls a pass makes (links, addresses, FDB, neighbours, one sysctl).

``ipip_supported()`` asks the kernel once per process whether it can make
IPIP links (``tabby.calc.ipip`` explains why tabby asks).
"""

from __future__ import annotations

import errno
import functools
from dataclasses import dataclass, field
from typing import Protocol

from tabby.calc.vxlan import DEVICES, VxlanDevice
from tabby.dataplane.netlink import (
    CallCounts,
    IPAddress,
    IPInterface,
    Link,
    Neigh,
    Opener,
    VxlanInfo,
    link_kind_supported,
    opener,
)
from tabby.errors import NetlinkError


class VxlanNetlink(Protocol):
    """The kernel calls a VXLAN pass makes (``tabby.dataplane.netlink.Netlink`` has them)."""

    def link(self, name: str) -> Link | None: ...

    def vxlan_info(self, name: str) -> VxlanInfo | None: ...

    def add_vxlan(self, name: str, *, vni: int, local: IPAddress, port: int, mac: str,
                  mtu: int) -> Link: ...

    def set_link(self, name: str, *, up: bool | None = None, mtu: int | None = None,
                 mac: str | None = None) -> None: ...

    def delete_link(self, name: str) -> bool: ...

    def addresses(self, name: str) -> list[IPInterface]: ...

    def add_address(self, name: str, address: IPInterface, *, nodad: bool = False) -> None: ...

    def delete_address(self, name: str, address: IPInterface) -> bool: ...

    def fdb(self, name: str) -> list[Neigh]: ...

    def replace_fdb(self, name: str, mac: str, dst: IPAddress) -> None: ...

    def delete_fdb(self, name: str, mac: str, dst: IPAddress) -> bool: ...

    def neighbours(self, name: str, version: int) -> list[Neigh]: ...

    def replace_neighbour(self, name: str, address: IPAddress, mac: str) -> None: ...

    def delete_neighbour(self, name: str, address: IPAddress) -> bool: ...

    def sysctl_set(self, key: str, value: str) -> None: ...


@dataclass(slots=True)
class VxlanSync:
    """What one pass did: a line per change, and the errors met."""

    changes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class VxlanReconciler:
    def __init__(self, counts: CallCounts, netns: str | None = None, *,
                 netlink: Opener[VxlanNetlink] | None = None) -> None:
        self._open = netlink if netlink is not None else opener(counts)
        self._netns = netns
        self._installed: tuple[VxlanDevice, ...] | None = None

    def apply(self, desired: tuple[VxlanDevice, ...], full: bool = False) -> VxlanSync:
        result = VxlanSync()
        if not full and desired == self._installed:
            return result
        self._installed = None
        with self._open(self._netns) as nl:
            for device in desired:
                try:
                    self._ensure(nl, device, result)
                except NetlinkError as exc:
                    result.errors.append(str(exc))
            wanted = {d.name for d in desired}
            for name in DEVICES.values():
                if name in wanted:
                    continue
                try:
                    if nl.delete_link(name):
                        result.changes.append(f"deleted {name}")
                except NetlinkError as exc:
                    result.errors.append(str(exc))
        if not result.errors:
            self._installed = desired
        return result

    def _ensure(self, nl: VxlanNetlink, d: VxlanDevice, result: VxlanSync) -> None:
        info = nl.vxlan_info(d.name)
        link = nl.link(d.name)
        if link is not None and (info is None or info.vni != d.vni or info.local != d.local
                                 or info.port != d.port or info.learning):
            nl.delete_link(d.name)
            result.changes.append(f"deleted {d.name} (settings differ)")
            link = None
        if link is None:
            link = nl.add_vxlan(d.name, vni=d.vni, local=d.local, port=d.port, mac=d.mac,
                                mtu=d.mtu)
            result.changes.append(f"created {d.name} (VNI {d.vni}, local {d.local})")
        if d.version == 6:
            _sysctl_if_present(nl, f"net/ipv6/conf/{d.name}/accept_dad", "0")
        if link.mac != d.mac or link.mtu != d.mtu or not link.up:
            nl.set_link(d.name, mac=d.mac, mtu=d.mtu, up=True)
            result.changes.append(f"set {d.name} mac {d.mac} mtu {d.mtu} up")
        self._address(nl, d, result)
        self._fdb(nl, d, result)
        self._neighbours(nl, d, result)

    @staticmethod
    def _address(nl: VxlanNetlink, d: VxlanDevice, result: VxlanSync) -> None:
        present = nl.addresses(d.name)
        for address in present:
            if address != d.address and not address.ip.is_link_local:
                nl.delete_address(d.name, address)
                result.changes.append(f"removed {address} from {d.name}")
        if d.address not in present:
            nl.add_address(d.name, d.address, nodad=True)
            result.changes.append(f"added {d.address} to {d.name}")

    @staticmethod
    def _fdb(nl: VxlanNetlink, d: VxlanDevice, result: VxlanSync) -> None:
        wanted = {(e.mac, e.dst) for e in d.fdb}
        present = {(e.mac, e.address): e.permanent for e in nl.fdb(d.name)}
        for mac, dst in sorted(set(present) - wanted, key=str):
            if nl.delete_fdb(d.name, mac, dst):
                result.changes.append(f"fdb: deleted {mac} dst {dst} on {d.name}")
        for mac, dst in sorted(wanted, key=str):
            if not present.get((mac, dst), False):
                nl.replace_fdb(d.name, mac, dst)
                result.changes.append(f"fdb: {mac} dst {dst} on {d.name}")

    @staticmethod
    def _neighbours(nl: VxlanNetlink, d: VxlanDevice, result: VxlanSync) -> None:
        wanted: dict[IPAddress, str] = {n.address: n.mac for n in d.neighbours}
        present = {n.address: n for n in nl.neighbours(d.name, d.version)
                   if not n.address.is_multicast}  # the kernel's own (MLD, ...)
        for address in sorted(set(present) - set(wanted), key=str):
            if nl.delete_neighbour(d.name, address):
                result.changes.append(f"neigh: deleted {address} on {d.name}")
        for address, mac in sorted(wanted.items(), key=lambda kv: str(kv[0])):
            have = present.get(address)
            if have is None or have.mac != mac or not have.permanent:
                nl.replace_neighbour(d.name, address, mac)
                result.changes.append(f"neigh: {address} lladdr {mac} on {d.name}")


@functools.cache
def ipip_supported() -> bool:
    """Whether this kernel can make IPIP links (asked once per process)."""
    return link_kind_supported("ipip")


def _sysctl_if_present(nl: VxlanNetlink, key: str, value: str) -> None:
    try:
        nl.sysctl_set(key, value)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:  # IPv6 disabled in the namespace
            raise
