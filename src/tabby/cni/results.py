"""The ADD result as a typed value, and its JSON in each CNI spec version.

The agent returns a :class:`PodResult`; the CNI server renders it in the
``cniVersion`` the runtime asked for. The shapes follow libcni's types (the
reference plugins parse our output with them when it is their prevResult):

- 0.3.1 and 0.4.0: each ``ips`` entry carries ``"version": "4"|"6"``;
- 1.0.0 dropped ``version``; 1.1.0 added optional fields (interface ``mtu``
  is the one tabby sets).

Everywhere: ``interfaces`` entries ``{name, mac?, sandbox?}`` (sandbox = the
netns path for container-side interfaces, absent for host-side ones); ``ips``
entries ``{address: CIDR, gateway?, interface?: index into interfaces}``;
``routes`` ``{dst: CIDR, gw?}``; ``dns`` omitted when empty. Empty lists are
omitted, as Go's ``omitempty`` does. ``portmap`` picks the container IPs
whose interface index names CNI_IFNAME with a sandbox; ``bandwidth`` looks up
the host-side veth by name among the interfaces without a sandbox.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tabby.cni import wire

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["DNS", "IPConfig", "Interface", "PodResult", "Route"]


@dataclass(frozen=True, slots=True)
class Interface:
    """An interface the plugin created: sandbox is the netns path, "" on the host."""

    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int | None = None  # rendered from spec 1.1.0 on


@dataclass(frozen=True, slots=True)
class IPConfig:
    """An address on ``interfaces[interface]`` (None: not tied to an interface)."""

    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass(frozen=True, slots=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


@dataclass(frozen=True, slots=True)
class PodResult:
    """What ADD produced: interfaces, addresses, routes and DNS of one attachment."""

    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)

    def render(self, cni_version: str) -> dict[str, Any]:
        """The result object of spec ``cni_version`` (one of SUPPORTED_VERSIONS)."""
        if cni_version not in wire.SUPPORTED_VERSIONS:
            raise ValueError(f"cannot render a result for cniVersion {cni_version!r}")
        legacy = wire.version_tuple(cni_version) < (1, 0, 0)
        with_mtu = wire.version_tuple(cni_version) >= (1, 1, 0)
        out: dict[str, Any] = {"cniVersion": cni_version}
        if self.interfaces:
            out["interfaces"] = [_render_interface(i, with_mtu) for i in self.interfaces]
        if self.ips:
            out["ips"] = [_render_ip(ip, legacy) for ip in self.ips]
        if self.routes:
            out["routes"] = [_render_route(r) for r in self.routes]
        if not self.dns.is_empty():
            out["dns"] = _render_dns(self.dns)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> PodResult:
        """Parse a result of any supported version (e.g. a prevResult).

        Raises ValueError naming the offending field.
        """
        try:
            return _parse_result(obj)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"cannot decode CNI result: {exc}") from None

    def addresses(self) -> tuple[IPAddress, ...]:
        """The assigned addresses, in result order."""
        return tuple(ip.address.ip for ip in self.ips)

    def container_addresses(self, ifname: str) -> tuple[IPAddress, ...]:
        """Addresses on the container-side interface ``ifname`` (what portmap uses)."""
        found = []
        for ip in self.ips:
            if ip.interface is None or not 0 <= ip.interface < len(self.interfaces):
                continue
            intf = self.interfaces[ip.interface]
            if intf.name == ifname and intf.sandbox:
                found.append(ip.address.ip)
        return tuple(found)


def _render_interface(intf: Interface, with_mtu: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": intf.name}
    if intf.mac:
        out["mac"] = intf.mac
    if intf.sandbox:
        out["sandbox"] = intf.sandbox
    if with_mtu and intf.mtu:
        out["mtu"] = intf.mtu
    return out


def _render_ip(ip: IPConfig, legacy: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if legacy:
        out["version"] = str(ip.address.version)
    if ip.interface is not None:
        out["interface"] = ip.interface
    out["address"] = str(ip.address)
    if ip.gateway is not None:
        out["gateway"] = str(ip.gateway)
    return out


def _render_route(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(route.dst)}
    if route.gw is not None:
        out["gw"] = str(route.gw)
    return out


def _render_dns(dns: DNS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if dns.nameservers:
        out["nameservers"] = list(dns.nameservers)
    if dns.domain:
        out["domain"] = dns.domain
    if dns.search:
        out["search"] = list(dns.search)
    if dns.options:
        out["options"] = list(dns.options)
    return out


def _parse_result(obj: Mapping[str, Any]) -> PodResult:
    if not isinstance(obj, Mapping):
        raise TypeError(f"result is a {type(obj).__name__}, not an object")
    version = obj.get("cniVersion")
    if version not in wire.SUPPORTED_VERSIONS:
        raise ValueError(f"result has unsupported cniVersion {version!r}")
    interfaces = tuple(_parse_interface(i) for i in _list(obj, "interfaces"))
    ips = tuple(_parse_ip(i, len(interfaces)) for i in _list(obj, "ips"))
    routes = tuple(_parse_route(r) for r in _list(obj, "routes"))
    dns = obj.get("dns") or {}
    if not isinstance(dns, Mapping):
        raise TypeError("dns: not an object")
    return PodResult(interfaces, ips, routes, DNS(
        nameservers=tuple(_strings(dns, "nameservers")),
        domain=_string(dns, "domain"),
        search=tuple(_strings(dns, "search")),
        options=tuple(_strings(dns, "options"))))


def _list(obj: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = obj.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise TypeError(f"{key}: not a list of objects")
    return value


def _string(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key) or ""
    if not isinstance(value, str):
        raise TypeError(f"{key}: not a string")
    return value


def _strings(obj: Mapping[str, Any], key: str) -> list[str]:
    value = obj.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{key}: not a list of strings")
    return value


def _parse_interface(obj: Mapping[str, Any]) -> Interface:
    name = _string(obj, "name")
    if not name:
        raise ValueError("interfaces[].name is missing")
    mtu = obj.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or mtu < 0):
        raise ValueError(f"interfaces[].mtu: {mtu!r} is not an MTU")
    return Interface(name, _string(obj, "mac"), _string(obj, "sandbox"), mtu or None)


def _parse_ip(obj: Mapping[str, Any], n_interfaces: int) -> IPConfig:
    address = ipaddress.ip_interface(_string(obj, "address"))
    gateway = ipaddress.ip_address(obj["gateway"]) if obj.get("gateway") else None
    index = obj.get("interface")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)
                              or not 0 <= index < n_interfaces):
        raise ValueError(f"ips[].interface: {index!r} is not an index into interfaces")
    version = obj.get("version")
    if version is not None and version != str(address.version):
        raise ValueError(f"ips[].version {version!r} does not match address {address}")
    return IPConfig(address, gateway, index)


def _parse_route(obj: Mapping[str, Any]) -> Route:
    dst = ipaddress.ip_network(_string(obj, "dst"), strict=False)
    gw = ipaddress.ip_address(obj["gw"]) if obj.get("gw") else None
    return Route(dst, gw)
