"""The route reconciler: make the main table hold exactly tabby's desired routes.

    RouteReconciler(counts).apply(desired: frozenset[Route]) -> RouteSync

A pass reads back what the kernel has (both families, main table), diffs it
against ``desired`` and makes the smallest change: ``replace`` for a missing
or different route, ``delete`` for one of ours nobody wants. When ``desired``
equals what the last clean pass installed, the pass is skipped without
touching the kernel (most store events do not change this node's routes),
unless the caller asks for ``full=True`` (the agent does so periodically, to
repair routes changed behind its back). After any error the next pass is a
full one. A full pass costs one route dump per family and one link dump (again
before the sweep, when the first read held routes of ours that may have to go).
An incremental pass after a clean one looks only at what changed since it: the
table of the changed routes' families and the links they name, one lookup each
(with 60 pods the full read took 28 ms, the narrow one a few: CNI ADD waits for
this pass).

Writes go to the kernel in batches (``Netlink.change_routes``: hundreds of
requests per send, one outcome each), replacements first, then deletions; a
route the kernel refuses fails alone, is reported in ``errors`` and ``failed``,
and the rest of the batch still goes in. 10,000 routes into a fresh namespace
took 219 ms beside ``ip -batch``'s 313 ms in the same run (one pyroute2 request
per route, and a second dump before the sweep: 20.5 s).

Ownership is marked by the route protocol number ``ROUTE_PROTOCOL``:

- routes with any other protocol (the kernel's, BIRD's, an operator's) are
  never changed or deleted; a desired route whose destination is already
  held by such a route is skipped and counted as a conflict;
- leftovers with our protocol are deleted only once a pass has installed
  everything it could without error (the first full sync). A restarted agent
  thus replaces routes in place and never flushes: running pods keep their
  traffic flowing while it catches up.

A desired route through a device that does not exist (yet) is skipped and
counted as unresolved, not treated as an error: the pod's veth may be on its
way, and retrying cannot help until it is.

Kernel access goes through the ``netlink`` opener (``RouteNetlink`` names the
calls a pass makes); tests hand in ``tabby.testing.fakes.FakeNetlink.open``.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tabby.calc.routes import Route, route_sort_key
from tabby.dataplane.netlink import (
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    CallCounts,
    KernelRoute,
    Link,
    Opener,
    RouteChange,
    RouteOutcome,
    opener,
)
from tabby.marks import ROUTE_PROTOCOL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

"""tabby's route protocol number (``ip route ... proto 77``).

Unassigned in iproute2's ``rt_protos`` (kernel 0-4, zebra 11, bird 12, bgp 186,
...) and distinct from BIRD's 12 and from Calico's Felix (80), so tabby's routes
can be told apart from the kernel's, BIRD's and a neighbouring Calico's.
"""


class RouteNetlink(Protocol):
    """The kernel calls a route pass makes (``tabby.dataplane.netlink.Netlink`` has them)."""

    def routes(self, version: int, protocol: int | None = None) -> list[KernelRoute]: ...

    def links(self) -> list[Link]: ...

    def link(self, name: str) -> Link | None: ...

    def change_routes(self, changes: Sequence[RouteChange]) -> list[RouteOutcome]: ...


@dataclass(slots=True)
class RouteSync:
    """What one pass did."""

    replaced: list[Route] = field(default_factory=list)
    deleted: list[KernelRoute] = field(default_factory=list)
    unchanged: int = 0
    conflicts: list[Route] = field(default_factory=list)  # held by a foreign route
    unresolved: list[Route] = field(default_factory=list)  # device missing
    errors: list[str] = field(default_factory=list)
    failed: list[Route] = field(default_factory=list)  # the kernel refused these
    swept: bool = False  # leftovers were considered for deletion

    @property
    def changes(self) -> int:
        return len(self.replaced) + len(self.deleted)


@dataclass(frozen=True, slots=True)
class _Table:
    ours: Mapping[IPNetwork, tuple[KernelRoute, ...]]
    foreign: frozenset[IPNetwork]
    names: Mapping[int, str]  # ifindex -> name
    link_names: frozenset[str]  # links present


class RouteReconciler:
    def __init__(self, counts: CallCounts, protocol: int = ROUTE_PROTOCOL,
                 netns: str | None = None, *,
                 netlink: Opener[RouteNetlink] | None = None) -> None:
        self._open = netlink if netlink is not None else opener(counts)
        self.protocol = protocol
        self._netns = netns
        self.synced = False  # a pass completed without error: leftovers may go
        self._installed: frozenset[Route] | None = None  # desired of the last clean pass

    def apply(self, desired: frozenset[Route], full: bool = False) -> RouteSync:
        result = RouteSync()
        if not full and desired == self._installed:
            result.unchanged = len(desired)
            return result
        previous, self._installed = self._installed, None
        with self._open(self._netns) as nl:
            if not full and previous is not None and self.synced:
                self._apply_changes(nl, previous, desired, result)
            else:
                self._apply_all(nl, desired, result)
        if not result.errors and not result.unresolved and not result.conflicts:
            self._installed = desired
        return result

    def _apply_all(self, nl: RouteNetlink, desired: frozenset[Route], result: RouteSync) -> None:
        """Read both tables and every link; ensure every desired route; sweep the rest."""
        table = self._read(nl)
        routes, unique = _ordered(desired)
        right = self._ensure_all(nl, table, routes, result)
        if not result.errors and not self.synced:
            self.synced = True
        if self.synced:
            result.swept = True
            # Nothing to sweep when each route of ours read above was wanted, alone at its
            # destination and right already: the writes only added or fixed wanted routes.
            # The second read (10,000 routes' worth on a big node) is then skipped.
            if not unique or right != len(table.ours):
                self._sweep(nl, desired, result)

    def _apply_changes(self, nl: RouteNetlink, previous: frozenset[Route],
                       desired: frozenset[Route], result: RouteSync) -> None:
        """An incremental pass after a clean one: only what changed since, read narrowly.

        The kernel held ``previous`` at the end of the last clean pass, so only the routes
        added or removed since are looked at: the tables of their families only, and the
        links they name only (a full read of the links and both tables cost ~28 ms with 60
        pods, twice a pass; this is what CNI ADD waits for). Leftovers that appeared
        behind the agent's back are the periodic full pass's to sweep."""
        added, removed = desired - previous, previous - desired
        families = {r.dst.version for r in (*added, *removed)}
        links = [link for link in (nl.link(dev) for dev in sorted(
            {r.dev for r in added if r.dev is not None})) if link is not None]
        table = self._table(nl, sorted(families), links)
        result.unchanged = len(desired) - len(added)
        self._ensure_all(nl, table, _ordered(added)[0], result)
        kept = {r.dst for r in desired}
        # an old route whose destination is still wanted was replaced in place above
        self._delete(nl, (kr for route in removed if route.dst not in kept
                          for kr in table.ours.get(route.dst, ())), result)

    def _read(self, nl: RouteNetlink) -> _Table:
        return self._table(nl, (4, 6), nl.links())

    def _table(self, nl: RouteNetlink, versions: Iterable[int], links: list[Link]) -> _Table:
        ours: dict[IPNetwork, list[KernelRoute]] = {}
        foreign: set[IPNetwork] = set()
        for version in versions:
            for kr in nl.routes(version):
                if kr.protocol == self.protocol:
                    ours.setdefault(kr.dst, []).append(kr)
                elif kr.type != "other":
                    foreign.add(kr.dst)
        return _Table(ours={k: tuple(v) for k, v in ours.items()}, foreign=frozenset(foreign),
                      names={link.index: link.name for link in links},
                      link_names=frozenset(link.name for link in links))

    def _ensure_all(self, nl: RouteNetlink, table: _Table, routes: list[Route],
                    result: RouteSync) -> int:
        """Every route not already right goes to the kernel in one batch (many per send);
        the kernel answers each, so a refused route fails alone and is reported. Returns
        how many routes were right already as the only route of ours to their destination."""
        changes: list[RouteChange] = []
        pending: list[Route] = []
        right = 0
        for route in routes:
            present = table.ours.get(route.dst, ())
            if any(_matches(route, kr, table.names) for kr in present):
                result.unchanged += 1
                right += len(present) == 1
                continue
            change = self._change(table, route, result)
            if change is not None:
                changes.append(change)
                pending.append(route)
        if not changes:
            return right
        for route, outcome in zip(pending, nl.change_routes(changes), strict=True):
            if outcome.error is not None:
                result.errors.append(str(outcome.error))
                result.failed.append(route)
            else:
                result.replaced.append(route)
        return right

    def _change(self, table: _Table, route: Route, result: RouteSync) -> RouteChange | None:
        """The kernel write ``route`` needs, or None (not ours to write, or not yet)."""
        if route.dst in table.foreign:  # a replace could overwrite the foreign route
            result.conflicts.append(route)
            return None
        if route.dev is not None and route.dev not in table.link_names:
            result.unresolved.append(route)
            return None
        link_scope = route.dev is not None and route.gateway is None and route.dst.version == 4
        return RouteChange(route.dst, self.protocol, route.type, route.gateway, route.dev,
                           route.onlink, RT_SCOPE_LINK if link_scope else RT_SCOPE_UNIVERSE)

    def _delete(self, nl: RouteNetlink, routes: Iterable[KernelRoute],
                result: RouteSync) -> None:
        doomed = list(routes)
        if not doomed:
            return
        outcomes = nl.change_routes([RouteChange.removal(kr) for kr in doomed])
        for kr, outcome in zip(doomed, outcomes, strict=True):
            if outcome.error is not None:
                result.errors.append(str(outcome.error))
            elif outcome.done:
                result.deleted.append(kr)

    def _sweep(self, nl: RouteNetlink, desired: frozenset[Route], result: RouteSync) -> None:
        """Delete our routes nobody wants (and our duplicates of wanted ones), re-read first."""
        table = self._read(nl)
        wanted = {r.dst: r for r in desired}
        failed = {r.dst for r in (*result.conflicts, *result.failed)}
        doomed: list[KernelRoute] = []
        for dst, present in table.ours.items():
            route = wanted.get(dst)
            keep = None
            if route is not None:
                keep = next((kr for kr in present if _matches(route, kr, table.names)), None)
                if keep is None and dst in failed:
                    continue  # our old route stays until the new one can go in
            doomed.extend(kr for kr in present if kr is not keep)
        self._delete(nl, doomed, result)


def _ordered(routes: Iterable[Route]) -> tuple[list[Route], bool]:
    """``route_sort_key`` order, computed cheaply: by destination alone unless two routes
    share one (``route_sort_key`` renders every route as text: 90 ms for 10,000); and
    whether every destination is unique."""
    keyed = sorted(((r.dst.version, int(r.dst.network_address), r.dst.prefixlen), i, r)
                   for i, r in enumerate(routes))
    if all(a[0] != b[0] for a, b in itertools.pairwise(keyed)):
        return [r for _, _, r in keyed], True
    return sorted((r for _, _, r in keyed), key=route_sort_key), False


def _matches(route: Route, kr: KernelRoute, names: Mapping[int, str]) -> bool:
    if route.type != kr.type or kr.onlink != route.onlink:
        return False
    if route.type == "blackhole":
        return True
    if route.gateway != kr.gateway:
        return False
    if route.dev is None:
        return True
    return kr.oif is not None and names.get(kr.oif) == route.dev
