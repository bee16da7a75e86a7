"""Which of the host's addresses is the node's: Calico's IP autodetection, per family.

    plan = AddressPlan.parse(4, "autodetect", "interface=eth.*", option="--ip")
    choose(plan.method, interfaces)               pure: which address of which interface
    HostAddresses((plan4, plan6)).detect()         one netlink read, then the decision

The agent's ``--ip`` / ``--ip6`` (Calico's ``IP`` / ``IP6``) say what a family's
BGP address is: ``none`` leaves the Node's address as stored (and writes nothing),
``autodetect`` asks the method each time the publisher runs, and an explicit
address is written as given (without a prefix length it takes the prefix of the
interface holding it, else /32 or /128, as Calico does).

The methods (``--ip-autodetection-method``, Calico's ``IP_AUTODETECTION_METHOD``)
and their meaning, as Calico documents them:

- ``first-found``: the first usable address on the first interface, interfaces in
  the kernel's order, skipping loopback, tabby's own devices (pod veths, the VXLAN
  devices) and the bridges and virtual devices of other software (docker, virbr,
  cni, other CNIs' veths and tunnels, ... ``LOCAL_INTERFACES``).
- ``interface=REGEX[,REGEX...]``: the first usable address on the first interface
  whose name matches one of them. As in Calico (Go's ``MatchString``), a match
  anywhere in the name counts: write ``^eth0$`` for exactly eth0.
- ``skip-interface=REGEX[,REGEX...]``: as first-found, but skipping the interfaces
  these match (instead of Calico's default list).
- ``can-reach=DEST``: the source address the kernel would use to reach DEST (an
  address or a host name), learnt by connect() on a UDP socket, which sends
  nothing; the interface holding it gives the prefix length.
- ``cidr=CIDR[,CIDR...]``: the first usable address inside one of them.
- ``kubernetes-internal-ip``: the first InternalIP of the family in the Kubernetes
  Node's ``status.addresses``, found on an interface for its prefix length.

A usable address is of the family and not loopback, link-local, multicast or
unspecified. Loopback and tabby's own devices are skipped by every method.
Whatever fails (a bad regex, no match, an unresolvable name) is a ``ConfigError``
naming the method and what it saw.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self

from tabby.dataplane.netlink import (
    CallCounts,
    IPAddress,
    IPInterface,
    IPNetwork,
    Link,
    Opener,
    opener,
)
from tabby.errors import ConfigError, NetlinkError, NotFound, TabbyError
from tabby.marks import HOST_VETH, VXLAN_DEVICES
from tabby.model.k8snode import KubeNode
from tabby.store.client import Client

__all__ = ["FIRST_FOUND", "LOCAL_INTERFACES", "MODES", "AddressPlan", "Detected",
           "HostAddresses", "HostInterface", "Method", "choose", "node_internal_ips",
           "reach_source"]

MODES = ("none", "autodetect")
METHODS = ("first-found", "interface=REGEX", "skip-interface=REGEX", "can-reach=DEST",
           "cidr=CIDR", "kubernetes-internal-ip")
# Other software's bridges, tunnels and pod veths: never the node's address (Calico's list).
LOCAL_INTERFACES = tuple(re.compile(p) for p in (
    r"^docker", r"^cbr", r"^dummy", r"^virbr", r"^lxcbr", r"^veth", r"^cali", r"^tunl",
    r"^flannel", r"^kube-ipvs", r"^cni", r"^vxlan\.calico", r"^vxlan-v6\.calico",
    r"^wireguard\.cali", r"^nodelocaldns", r"^podman"))
_OWN = frozenset(VXLAN_DEVICES.values())


@dataclass(frozen=True, slots=True)
class HostInterface:
    """One interface of the host and its addresses, in the kernel's order."""

    name: str
    addresses: tuple[IPInterface, ...] = ()


@dataclass(frozen=True, slots=True)
class Method:
    """One parsed autodetection method (``text`` is what the user wrote)."""

    text: str
    kind: str  # first-found, interface, skip-interface, can-reach, cidr, kubernetes-internal-ip
    patterns: tuple[re.Pattern[str], ...] = ()
    cidrs: tuple[IPNetwork, ...] = ()
    destination: str = ""

    @classmethod
    def parse(cls, text: str, version: int) -> Self:
        kind, sep, arg = text.strip().partition("=")
        if kind in ("first-found", "kubernetes-internal-ip") and not sep:
            return cls(text, kind)
        if kind not in ("interface", "skip-interface", "can-reach", "cidr") or not arg.strip():
            raise ConfigError(f"IP autodetection method {text!r}: expected one of"
                              f" {', '.join(METHODS)}")
        items = [a.strip() for a in arg.split(",") if a.strip()]
        if kind in ("interface", "skip-interface"):
            return cls(text, kind, patterns=tuple(_regex(text, p) for p in items))
        if kind == "cidr":
            return cls(text, kind, cidrs=tuple(_cidr(text, c, version) for c in items))
        dest = arg.strip()
        literal = _address_or_none(dest)
        if literal is not None and literal.version != version:
            raise ConfigError(f"IP autodetection method {text!r}: {dest} is not an IPv{version}"
                              " address")
        return cls(text, kind, destination=dest)


FIRST_FOUND = Method("first-found", "first-found")


@dataclass(frozen=True, slots=True)
class AddressPlan:
    """What one family's BGP address should be: none, autodetect (with a method) or
    an explicit address (``prefixed`` False: the prefix comes from the interface)."""

    version: int
    mode: str = "none"  # none, autodetect, explicit
    method: Method = FIRST_FOUND
    address: IPInterface | None = None
    prefixed: bool = True

    @classmethod
    def parse(cls, version: int, value: str, method: str = "first-found", *,
              option: str = "--ip", method_option: str = "--ip-autodetection-method") -> Self:
        """From ``--ip``'s and ``--ip-autodetection-method``'s text; ConfigError names
        the option and what is wrong."""
        text = value.strip()
        try:
            parsed = Method.parse(method or "first-found", version)
        except ConfigError as exc:
            raise ConfigError(f"{method_option}: {exc}") from None
        if text in MODES:
            return cls(version, text, parsed)
        try:
            address = ipaddress.ip_interface(text)
        except ValueError:
            raise ConfigError(f"{option} {value!r}: expected none, autodetect or an IPv{version}"
                              f" address (with or without a prefix length)") from None
        if address.version != version:
            raise ConfigError(f"{option} {value!r}: not an IPv{version} address")
        return cls(version, "explicit", parsed, address, prefixed="/" in text)


@dataclass(frozen=True, slots=True)
class Detected:
    """The families to write (their address with prefix) and what could not be decided."""

    addresses: Mapping[int, IPInterface] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


# -- the decision (pure) ------------------------------------------------------------------

def choose(method: Method, version: int, interfaces: Sequence[HostInterface], *,
           source: IPAddress | None = None, internal_ips: Sequence[IPAddress] = ()
           ) -> IPInterface:
    """The address ``method`` picks among ``interfaces``; ConfigError if none.

    ``source`` is the kernel's source address towards a can-reach destination;
    ``internal_ips`` the Kubernetes Node's InternalIPs (both read by the caller)."""
    candidates = [i for i in interfaces if not _own(i.name)]
    if method.kind in ("can-reach", "kubernetes-internal-ip"):
        wanted = [source] if method.kind == "can-reach" and source is not None else \
            [ip for ip in internal_ips if ip.version == version]
        if not wanted:
            what = "no source address" if method.kind == "can-reach" else \
                f"the Kubernetes Node lists no IPv{version} InternalIP"
            raise ConfigError(f"IP autodetection method {method.text!r}: {what}")
        found = holding(wanted[0], candidates)
        if found is None:
            raise ConfigError(f"IP autodetection method {method.text!r}: {wanted[0]} is on no"
                              f" interface of this host ({_seen(candidates, version)})")
        return found
    if method.kind == "first-found":
        candidates = [i for i in candidates if not _matches(LOCAL_INTERFACES, i.name)]
    elif method.kind == "interface":
        candidates = [i for i in candidates if _matches(method.patterns, i.name)]
    elif method.kind == "skip-interface":
        candidates = [i for i in candidates if not _matches(method.patterns, i.name)]
    for iface in candidates:
        for address in iface.addresses:
            if _usable(address, version) and (
                    method.kind != "cidr" or any(address.ip in c for c in method.cidrs)):
                return address
    raise ConfigError(f"IP autodetection method {method.text!r} found no usable IPv{version}"
                      f" address ({_seen(candidates, version)})")


def explicit(plan: AddressPlan, interfaces: Sequence[HostInterface]) -> IPInterface:
    """An explicit address: as given, or with the prefix of the interface holding it."""
    assert plan.address is not None
    if plan.prefixed:
        return plan.address
    found = holding(plan.address.ip, [i for i in interfaces if not _own(i.name)])
    return found if found is not None else plan.address  # /32 or /128: Calico's fallback


def holding(ip: IPAddress, interfaces: Iterable[HostInterface]) -> IPInterface | None:
    """The address (with its prefix) ``ip`` has on one of ``interfaces``, if any."""
    for iface in interfaces:
        for address in iface.addresses:
            if address.ip == ip:
                return address
    return None


def _usable(address: IPInterface, version: int) -> bool:
    ip = address.ip
    return ip.version == version and not (ip.is_loopback or ip.is_link_local
                                          or ip.is_multicast or ip.is_unspecified)


def _own(name: str) -> bool:
    return name == "lo" or name in _OWN or HOST_VETH.match(name) is not None


def _matches(patterns: Iterable[re.Pattern[str]], name: str) -> bool:
    return any(p.search(name) for p in patterns)


def _seen(interfaces: Sequence[HostInterface], version: int) -> str:
    seen = [f"{i.name} {', '.join(str(a) for a in i.addresses if a.version == version) or '-'}"
            for i in interfaces]
    return "interfaces looked at: " + ("; ".join(seen) if seen else "none")


def _regex(text: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"IP autodetection method {text!r}: {pattern!r} is not a regular"
                          f" expression ({exc})") from None


def _cidr(text: str, cidr: str, version: int) -> IPNetwork:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(f"IP autodetection method {text!r}: {cidr!r} is not a CIDR") from None
    if net.version != version:
        raise ConfigError(f"IP autodetection method {text!r}: {cidr} is not an IPv{version}"
                          " range")
    return net


def _address_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# -- the host (kernel reads) ---------------------------------------------------------------

class AddressNetlink(Protocol):
    """The kernel calls detection makes (``tabby.dataplane.netlink.Netlink`` has them)."""

    def links(self) -> list[Link]: ...

    def addresses(self, name: str) -> list[IPInterface]: ...


def reach_source(version: int, destination: str) -> IPAddress:
    """The source address the kernel picks towards ``destination`` (connect() on a UDP
    socket routes without sending anything)."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    try:
        infos = socket.getaddrinfo(destination, 9, family, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"can-reach={destination}: no IPv{version} address for it"
                          f" ({exc.strerror})") from None
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(infos[0][4])
        except OSError as exc:
            raise ConfigError(f"can-reach={destination}: no route ({exc.strerror})") from None
        local = str(sock.getsockname()[0]).partition("%")[0]
    return ipaddress.ip_address(local)


def node_internal_ips(client: Client, node: str) -> tuple[IPAddress, ...]:
    """The InternalIPs of Kubernetes Node ``node`` (the store must serve core nodes)."""
    try:
        return client.get(KubeNode, node).internal_ips
    except NotFound:
        raise ConfigError(f"kubernetes-internal-ip: there is no Kubernetes Node {node!r}"
                          ) from None


class HostAddresses:
    """The publisher's address source: each ``detect()`` reads the interfaces once and
    decides every family that is not ``none``."""

    def __init__(self, plans: Sequence[AddressPlan], *,
                 netlink: Opener[AddressNetlink] | None = None, counts: CallCounts | None = None,
                 internal_ips: Callable[[], Sequence[IPAddress]] | None = None,
                 reach: Callable[[int, str], IPAddress] = reach_source) -> None:
        self.plans = tuple(p for p in plans if p.mode != "none")
        self._open = netlink if netlink is not None else opener(counts or CallCounts())
        self._internal_ips = internal_ips
        self._reach = reach

    def detect(self) -> Detected:
        if not self.plans:
            return Detected()
        try:
            interfaces = self.interfaces()
        except TabbyError as exc:
            return Detected(problems=(f"reading the host's interfaces: {exc}",))
        out: dict[int, IPInterface] = {}
        problems = []
        for plan in self.plans:
            try:
                out[plan.version] = self._decide(plan, interfaces)
            except TabbyError as exc:
                problems.append(f"IPv{plan.version} address: {exc}")
        return Detected(out, tuple(problems))

    def interfaces(self) -> list[HostInterface]:
        """Every interface and its addresses (one that vanishes meanwhile is left out)."""
        out = []
        with self._open(None) as nl:
            for link in nl.links():
                try:
                    out.append(HostInterface(link.name, tuple(nl.addresses(link.name))))
                except NetlinkError:
                    continue  # deleted between the two dumps
        return out

    def _decide(self, plan: AddressPlan, interfaces: Sequence[HostInterface]) -> IPInterface:
        if plan.mode == "explicit":
            return explicit(plan, interfaces)
        method = plan.method
        if method.kind == "can-reach":
            source = self._reach(plan.version, method.destination)
            return choose(method, plan.version, interfaces, source=source)
        if method.kind == "kubernetes-internal-ip":
            if self._internal_ips is None:
                raise ConfigError("kubernetes-internal-ip: this agent has no Kubernetes API")
            return choose(method, plan.version, interfaces,
                          internal_ips=self._internal_ips())
        return choose(method, plan.version, interfaces)
