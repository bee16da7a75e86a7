"""Routes between tabby's values and ``rtnl``'s messages, for both kernel adapters.

``Netlink`` (pyroute2 for the rest) and ``RawNetlink`` (pod wiring) read and
write routes the same way, over a ``nlsock.NetlinkSocket`` of their namespace:

    read_routes(sock, counts, netns, 4, protocol)         -> [KernelRoute, ...]
    change_routes(sock, counts, netns, changes, index)    -> [RouteOutcome, ...]

and both inherit their route calls from ``RouteCalls``, which makes them so.

``change_routes`` sends every change in as few ``sendmsg`` as fit and maps each
answer back to its change: a refused route fails alone, a delete of a route
already gone is no error. Both count what they do in ``CallCounts``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Sequence

from tabby.dataplane.netns import where
from tabby.dataplane.nlsock import NetlinkSocket, Request
from tabby.dataplane.nlvalues import (
    FAMILY,
    MAIN_TABLE,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RTNH_F_ONLINK,
    CallCounts,
    IPAddress,
    IPNetwork,
    KernelRoute,
    RouteChange,
    RouteOutcome,
)
from tabby.dataplane.rtnl import (
    RTM_GETROUTE,
    RTM_NEWROUTE,
    RawRoute,
    decode_route,
    dump_request,
    encode_route,
)
from tabby.errors import NetlinkError

__all__ = ["ROUTE_TYPES", "ROUTE_TYPE_CODES", "RouteCalls", "change_routes", "kernel_route",
           "read_routes", "route_request"]

ROUTE_TYPES = {1: "unicast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
ROUTE_TYPE_CODES = {name: code for code, name in ROUTE_TYPES.items()}


def route_request(change: RouteChange, oif: int | None) -> Request:
    """The request making ``change`` (``oif``: the index of ``change.dev``)."""
    dst = change.dst
    return encode_route(
        delete=change.delete, family=FAMILY[dst.version], dst=dst.network_address.packed,
        dst_len=dst.prefixlen, table=MAIN_TABLE, protocol=change.protocol, scope=change.scope,
        type=ROUTE_TYPE_CODES.get(change.type, 0), flags=RTNH_F_ONLINK if change.onlink else 0,
        gateway=None if change.gateway is None else change.gateway.packed, oif=oif,
        priority=change.priority)


def kernel_route(raw: RawRoute) -> KernelRoute:
    v4 = raw.family == socket.AF_INET
    network = ipaddress.IPv4Network if v4 else ipaddress.IPv6Network
    rtype = ROUTE_TYPES.get(raw.type, "other")
    return KernelRoute(
        dst=network((raw.dst or bytes(4 if v4 else 16), raw.dst_len)), type=rtype,
        gateway=ipaddress.ip_address(raw.gateway) if raw.gateway else None,
        oif=None if rtype == "blackhole" else raw.oif, protocol=raw.protocol,
        scope=raw.scope, priority=raw.priority, onlink=bool(raw.flags & RTNH_F_ONLINK))


def read_routes(sock: NetlinkSocket, counts: CallCounts, netns: str | None, version: int,
                protocol: int | None) -> list[KernelRoute]:
    """Main-table routes of one family, optionally only those with ``protocol``."""
    try:
        got = sock.dump(RTM_GETROUTE, dump_request(FAMILY[version]))
    except OSError as exc:
        counts.add("route_dump", failed=True)
        code = exc.errno or errno.EIO
        detail = f" ({exc.strerror})" if exc.strerror else ""
        raise NetlinkError(f"route_dump ipv{version}{where(netns)}: {os.strerror(code)}"
                           f"{detail}", code) from exc
    counts.add("route_dump")
    raw = (decode_route(body) for kind, body in got if kind == RTM_NEWROUTE)
    return [kernel_route(r) for r in raw if r.table == MAIN_TABLE
            and (protocol is None or r.protocol == protocol)]


def change_routes(sock: NetlinkSocket, counts: CallCounts, netns: str | None,
                  changes: Sequence[RouteChange], index: Callable[[str], int]
                  ) -> list[RouteOutcome]:
    """Make ``changes`` in order, many per send; one outcome each. A refused change (a bad
    gateway, a missing device: ``index`` raises NetlinkError) fails alone."""
    outcomes: list[RouteOutcome | None] = [None] * len(changes)
    requests, sent = [], []
    for i, change in enumerate(changes):
        try:
            requests.append(route_request(change, None if change.dev is None
                                          else index(change.dev)))
            sent.append(i)
        except NetlinkError as exc:  # a device that is not there
            outcomes[i] = RouteOutcome(change, False, exc)
    try:
        answers = sock.batch(requests)
    except OSError as exc:
        counts.add("route_batch", failed=True)
        code = exc.errno or errno.EIO
        raise NetlinkError(f"route_batch of {len(requests)} changes{where(netns)}:"
                           f" {os.strerror(code)}", code) from exc
    for i, (code, text) in zip(sent, answers, strict=True):
        outcomes[i] = _outcome(changes[i], code, text, netns)
    done = [o for o in outcomes if o is not None]
    tally: dict[tuple[str, bool], int] = {}
    for o in done:
        key = (o.change.op, not o.done)
        tally[key] = tally.get(key, 0) + 1
    for (op, failed), times in tally.items():
        counts.add(op, failed, times)
    return done


def _outcome(change: RouteChange, code: int, text: str, netns: str | None) -> RouteOutcome:
    if not code:
        return RouteOutcome(change, True)
    if change.delete and code in (errno.ESRCH, errno.ENOENT):
        return RouteOutcome(change, False)  # already gone: the answer we want
    detail = f" ({text})" if text else ""
    return RouteOutcome(change, False, NetlinkError(
        f"{change.op} {change}{where(netns)}: {os.strerror(code)}{detail}", code))


class RouteCalls:
    """The route calls of a kernel adapter, over the raw socket ``_nl`` of its namespace.
    The adapter sets ``_nl``, ``_counts`` and ``netns`` and looks links up (``_index``)."""

    _nl: NetlinkSocket
    _counts: CallCounts
    netns: str | None

    def _index(self, name: str) -> int:
        raise NotImplementedError

    def routes(self, version: int, protocol: int | None = None) -> list[KernelRoute]:
        """Main-table routes of one family, optionally only those with ``protocol``."""
        return read_routes(self._nl, self._counts, self.netns, version, protocol)

    def replace_route(self, dst: IPNetwork, *, protocol: int, type: str = "unicast",
                      gateway: IPAddress | None = None, dev: str | None = None,
                      onlink: bool = False, scope_link: bool = False) -> None:
        """Add or overwrite the main-table route to ``dst`` (RTM_NEWROUTE, NLM_F_REPLACE)."""
        (outcome,) = self.change_routes([RouteChange(
            dst, protocol, type, gateway, dev, onlink,
            RT_SCOPE_LINK if scope_link else RT_SCOPE_UNIVERSE)])
        if outcome.error is not None:
            raise outcome.error

    def delete_route(self, route: KernelRoute) -> bool:
        """Delete exactly this kernel route; False if it was already gone."""
        (outcome,) = self.change_routes([RouteChange.removal(route)])
        if outcome.error is not None:
            raise outcome.error
        return outcome.done

    def change_routes(self, changes: Sequence[RouteChange]) -> list[RouteOutcome]:
        """Make ``changes`` in order, many per send; one outcome each. A refused change
        (a bad gateway, a missing device) fails alone: the others still go in."""
        return change_routes(self._nl, self._counts, self.netns, changes, self._index)
