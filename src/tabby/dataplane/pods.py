"""Pod plumbing, the Calico way: one veth per pod interface, routed, no bridge.

    node namespace                              pod namespace
    tab<hash>  ee:ee:ee:ee:ee:ee, no address    eth0  POD_IP/32, POD_IP6/128
      proxy_arp=1, proxy_delay=0, accept_dad=0     169.254.1.1 dev eth0 scope link
      POD_IP/32 dev tab<hash> scope link           default via 169.254.1.1 dev eth0
      POD_IP6/128 dev tab<hash>                    default via fe80::ecee:eeff:feee:eeee dev eth0

The pod reaches 169.254.1.1 through proxy ARP on the host veth (the node needs
a unicast route covering it), and the IPv6 gateway is the host veth's own
link-local address, derived from its fixed MAC. ``accept_dad=0`` on both ends
makes addresses usable at once. The host routes carry tabby's protocol
number, so the route reconciler adopts them instead of fighting them.

``PodWirer.wire`` is idempotent (an existing, intact pair is reused and its
addresses brought in line), ``unwire`` tolerates anything already gone, and
``inspect`` lists what is off, for CNI CHECK. Deleting a veth makes the kernel
wait for an RCU grace period (~15 ms, the bulk of a DEL), so CNI DEL only
``retire``s the pair (down, its routes gone with it, and marked with the link
group ``RETIRED_GROUP``: microseconds) and ``reap`` deletes every retired pair
in one request later (``tabby.dataplane.reaper``), one grace period for all.

Kernel access goes through the ``netlink`` opener (``PodNetlink`` names the
calls made on the node's and the pod's handles; by default
``tabby.dataplane.rtlink``'s raw sockets, ~4x faster than pyroute2 here) and
``netns_exists`` (is the pod's namespace still there); tests pass
``tabby.testing.fakes.FakeNetlink``'s.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tabby.dataplane.netlink import CallCounts, KernelRoute, Link, Opener
from tabby.dataplane.rtlink import raw_opener
from tabby.errors import DataplaneError, NetlinkError
from tabby.marks import HOST_MAC, HOST_VETH, RETIRED_GROUP, ROUTE_PROTOCOL, VETH_PREFIX

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

GATEWAY_V4 = ipaddress.IPv4Address("169.254.1.1")
GATEWAY_V6 = ipaddress.IPv6Address("fe80::ecee:eeff:feee:eeee")
DEFAULT_V4 = ipaddress.IPv4Network("0.0.0.0/0")
DEFAULT_V6 = ipaddress.IPv6Network("::/0")
_HOST_VETH = HOST_VETH


def host_veth_name(container_id: str, ifname: str) -> str:
    """``tab`` + 12 hex digits of sha1(container id, ifname): 15 characters, stable."""
    digest = hashlib.sha1(f"{container_id}.{ifname}".encode(), usedforsecurity=False)
    return VETH_PREFIX + digest.hexdigest()[:12]


def gateway_for(version: int) -> IPAddress:
    return GATEWAY_V4 if version == 4 else GATEWAY_V6


class PodNetlink(Protocol):
    """The kernel calls wiring and checking a pod make, on the node's and the pod's side."""

    def links(self) -> list[Link]: ...

    def link(self, name: str) -> Link | None: ...

    def add_veth(self, name: str, peer_name: str, peer_netns: str, *, mac: str | None = None,
                 mtu: int | None = None) -> Link: ...

    def set_link(self, name: str, *, up: bool | None = None, mtu: int | None = None,
                 mac: str | None = None) -> None: ...

    def delete_link(self, name: str) -> bool: ...

    def retire_link(self, name: str, group: int) -> bool: ...

    def delete_group(self, group: int) -> bool: ...

    def addresses(self, name: str) -> list[IPInterface]: ...

    def add_address(self, name: str, address: IPInterface, *, nodad: bool = False) -> None: ...

    def delete_address(self, name: str, address: IPInterface) -> bool: ...

    def routes(self, version: int, protocol: int | None = None) -> list[KernelRoute]: ...

    def replace_route(self, dst: IPNetwork, *, protocol: int, type: str = "unicast",
                      gateway: IPAddress | None = None, dev: str | None = None,
                      onlink: bool = False, scope_link: bool = False) -> None: ...

    def sysctl_get(self, key: str) -> str: ...

    def sysctl_set(self, key: str, value: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PodWiring:
    """What one pod interface should look like."""

    host_veth: str
    netns: str  # path of the pod's network namespace
    ifname: str  # inside the pod, e.g. eth0
    addresses: tuple[IPInterface, ...]  # /32 and /128
    mtu: int = 1500


@dataclass(frozen=True, slots=True)
class WiredPod:
    host_veth: str
    host_mac: str
    ifname: str
    pod_mac: str
    pod_index: int


class PodWirer:
    def __init__(self, counts: CallCounts, protocol: int = ROUTE_PROTOCOL, *,
                 netlink: Opener[PodNetlink] | None = None,
                 netns_exists: Callable[[str], bool] = os.path.exists) -> None:
        self._open = netlink if netlink is not None else raw_opener(counts)
        self._netns_exists = netns_exists
        self.protocol = protocol

    # -- ADD -----------------------------------------------------------------
    def wire(self, w: PodWiring) -> WiredPod:
        if not self._netns_exists(w.netns):
            raise DataplaneError(f"pod network namespace {w.netns} does not exist")
        with self._open(None) as node, self._open(w.netns) as pod:
            if self._existing_pair(node, pod, w) is None:
                node.add_veth(w.host_veth, w.ifname, w.netns, mac=HOST_MAC, mtu=w.mtu)
            self._host_side(node, w)
            pod_link = self._pod_side(pod, w)
            self._host_routes(node, w)
        return WiredPod(w.host_veth, HOST_MAC, w.ifname, pod_link.mac, pod_link.index)

    def _existing_pair(self, node: PodNetlink, pod: PodNetlink, w: PodWiring) -> Link | None:
        """The host veth if it and the pod interface are each other's peers; else clear the way.
        A pair that is down was retired by a DEL (``retire``) and may be deleted any moment:
        it is deleted here and made afresh."""
        host = node.link(w.host_veth)
        inside = pod.link(w.ifname)
        if host is not None and host.up and inside is not None and inside.kind == "veth" \
                and host.peer_index == inside.index and inside.peer_index == host.index:
            return host
        if host is not None:
            node.delete_link(w.host_veth)  # half a pair, or paired elsewhere: start over
            inside = pod.link(w.ifname)
        if inside is not None:
            raise DataplaneError(
                f"{w.netns} already has an interface {w.ifname} that tabby did not create;"
                f" remove it or pick another CNI_IFNAME")
        return None

    def _host_side(self, node: PodNetlink, w: PodWiring) -> None:
        name = w.host_veth
        for key, value in (
                (f"net/ipv6/conf/{name}/accept_dad", "0"),  # before up: link-local at once
                (f"net/ipv4/conf/{name}/proxy_arp", "1"),
                (f"net/ipv4/neigh/{name}/proxy_delay", "0"),  # answer ARP without delay
        ):
            _sysctl_if_present(node, key, value)
        node.set_link(name, mac=HOST_MAC, mtu=w.mtu, up=True)

    def _pod_side(self, pod: PodNetlink, w: PodWiring) -> Link:
        _sysctl_if_present(pod, f"net/ipv6/conf/{w.ifname}/accept_dad", "0")
        pod.set_link("lo", up=True)
        pod.set_link(w.ifname, mtu=w.mtu, up=True)
        wanted = set(w.addresses)
        for present in pod.addresses(w.ifname):
            if present not in wanted and not present.ip.is_link_local:
                pod.delete_address(w.ifname, present)
        for address in w.addresses:
            pod.add_address(w.ifname, address, nodad=True)
        versions = {a.version for a in w.addresses}
        if 4 in versions:
            pod.replace_route(ipaddress.ip_network(GATEWAY_V4), protocol=self.protocol,
                              dev=w.ifname, scope_link=True)
            pod.replace_route(DEFAULT_V4, protocol=self.protocol, gateway=GATEWAY_V4,
                              dev=w.ifname)
        if 6 in versions:
            pod.replace_route(DEFAULT_V6, protocol=self.protocol, gateway=GATEWAY_V6,
                              dev=w.ifname)
        link = pod.link(w.ifname)
        if link is None:
            raise DataplaneError(f"{w.ifname} vanished from {w.netns} while wiring it")
        return link

    def _host_routes(self, node: PodNetlink, w: PodWiring) -> None:
        for address in w.addresses:
            node.replace_route(ipaddress.ip_network(address.ip), protocol=self.protocol,
                               dev=w.host_veth, scope_link=address.version == 4)

    # -- DEL -----------------------------------------------------------------
    def unwire(self, host_veth: str) -> bool:
        """Delete the pair (the kernel drops its routes with it); False if it was gone.
        The kernel waits for an RCU grace period per deletion (~15 ms, more when busy);
        CNI DEL uses ``retire`` and ``reap`` instead."""
        with self._open(None) as node:
            return node.delete_link(host_veth)

    def retire(self, host_veth: str) -> bool:
        """Take the pair out of service at once, in one request: the host end goes down
        (the kernel drops its routes, the pod end loses carrier) and into the link group
        ``RETIRED_GROUP``, which ``reap`` deletes. False if it was gone."""
        with self._open(None) as node:
            return node.retire_link(host_veth, RETIRED_GROUP)

    def reap(self) -> bool:
        """Delete every retired pair in one request (one RCU wait for all of them,
        whoever retired them: also a previous agent); False if there were none."""
        with self._open(None) as node:
            return node.delete_group(RETIRED_GROUP)

    def host_veths(self) -> list[str]:
        """Names of tabby's pod veths on this node (GC's inventory)."""
        with self._open(None) as node:
            return sorted(link.name for link in node.links()
                          if link.kind == "veth" and _HOST_VETH.match(link.name))

    # -- CHECK ---------------------------------------------------------------
    def inspect(self, w: PodWiring) -> list[str]:
        """What differs from ``w``, one line per problem; [] when all is in place."""
        problems: list[str] = []
        with self._open(None) as node:
            problems += self._inspect_host(node, w)
        if not self._netns_exists(w.netns):
            return [*problems, f"pod network namespace {w.netns} is gone"]
        with self._open(w.netns) as pod:
            problems += self._inspect_pod(pod, w)
        return problems

    def _inspect_host(self, node: PodNetlink, w: PodWiring) -> list[str]:
        host = node.link(w.host_veth)
        if host is None:
            return [f"host interface {w.host_veth} is missing"]
        problems = []
        if not host.up:
            problems.append(f"host interface {w.host_veth} is down")
        if host.mac != HOST_MAC:
            problems.append(f"host interface {w.host_veth} has MAC {host.mac}, not {HOST_MAC}")
        if _sysctl_or_none(node, f"net/ipv4/conf/{w.host_veth}/proxy_arp") not in ("1", None):
            problems.append(f"proxy_arp is off on {w.host_veth}")
        have = _route_view(node, host.index)
        for address in w.addresses:
            dst = ipaddress.ip_network(address.ip)
            if (dst, None) not in have:
                problems.append(f"host route {dst} dev {w.host_veth} is missing")
        return problems

    def _inspect_pod(self, pod: PodNetlink, w: PodWiring) -> list[str]:
        link = pod.link(w.ifname)
        if link is None:
            return [f"{w.ifname} is missing in {w.netns}"]
        problems = []
        if not link.up:
            problems.append(f"{w.ifname} in {w.netns} is down")
        present = set(pod.addresses(w.ifname))
        problems += [f"address {a} is missing on {w.ifname}" for a in w.addresses
                     if a not in present]
        have = _route_view(pod, link.index)
        versions = {a.version for a in w.addresses}
        expected: list[tuple[IPNetwork, IPAddress | None]] = []
        if 4 in versions:
            expected += [(ipaddress.ip_network(GATEWAY_V4), None), (DEFAULT_V4, GATEWAY_V4)]
        if 6 in versions:
            expected.append((DEFAULT_V6, GATEWAY_V6))
        for dst, gateway in expected:
            if (dst, gateway) not in have:
                via = f" via {gateway}" if gateway else ""
                problems.append(f"route {dst}{via} dev {w.ifname} is missing in the pod")
        return problems


def _route_view(nl: PodNetlink, index: int) -> set[tuple[IPNetwork, IPAddress | None]]:
    return {(r.dst, r.gateway) for version in (4, 6) for r in nl.routes(version)
            if r.oif == index and r.type == "unicast"}


def _sysctl_if_present(nl: PodNetlink, key: str, value: str) -> None:
    try:
        nl.sysctl_set(key, value)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:  # e.g. IPv6 disabled in that namespace
            raise


def _sysctl_or_none(nl: PodNetlink, key: str) -> str | None:
    try:
        return nl.sysctl_get(key)
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            return None
        raise
