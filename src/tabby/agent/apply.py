"""The agent's half of a pass: a DesiredState applied through one reconciler per object.

::

    DesiredState.links   -> VxlanReconciler   VXLAN devices, addresses, FDB, neighbours
                 .nft     -> NftReconciler     the ``inet tabby`` table, by difference
                 .bird    -> BirdController    bird.conf, BIRD (``--bgp bird`` only)
                 .routes  -> RouteReconciler   main-table routes of protocol 77
                 .sysctls -> SysctlReconciler  (full passes only)
                 .ipip_pools                   refused here if the kernel has no IPIP

In that order: a device routes go through exists before the routes. Every
reconciler gets ``full=True`` when the agent wants the kernel read back (first
pass, periodic resync, after an error) and returns its problems as text; one
part failing does not stop the others. A part the calculator could not compute
(``None``) is left as it is in the kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from tabby.bgp.controller import BirdController
from tabby.calc.ipip import refusal
from tabby.calc.node import DesiredState
from tabby.dataplane.netlink import CallCounts
from tabby.dataplane.nft import NftReconciler
from tabby.dataplane.routes import RouteReconciler, RouteSync
from tabby.dataplane.rtlink import raw_opener
from tabby.dataplane.sysctls import SysctlReconciler
from tabby.dataplane.vxlan import VxlanReconciler, ipip_supported

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Applied:
    routes: RouteSync
    problems: list[str] = field(default_factory=list)
    nft_seconds: float = 0.0
    nft_mode: str = "none"  # full | delta | none (nothing sent)
    nft_failed: bool = False


class NodeApplier:
    def __init__(self, counts: CallCounts, *, bird: BirdController | None = None,
                 links: VxlanReconciler | None = None, nft: NftReconciler | None = None,
                 routes: RouteReconciler | None = None,
                 sysctls: SysctlReconciler | None = None,
                 ipip: Callable[[], bool] = ipip_supported) -> None:
        self.links = links or VxlanReconciler(counts)
        self.nft = nft or NftReconciler()
        self.bird = bird
        # raw sockets: a pyroute2 handle per pass cost ~1 ms of every ADD's pass
        self.routes = routes or RouteReconciler(counts, netlink=raw_opener(counts))
        self.sysctls = sysctls or SysctlReconciler(counts)
        self.ipip = ipip  # can this kernel make IPIP links (a probe, cached)
        self._notes: tuple[str, ...] = ()

    def apply(self, desired: DesiredState, *, full: bool) -> Applied:
        problems = list(desired.problems)
        links = self.links.apply(desired.links, full=full)
        for change in links.changes:
            log.info("vxlan: %s", change)
        problems += (f"vxlan: {p}" for p in links.errors)
        self._check_ipip(desired)
        nft_seconds, nft_mode, nft_failed = 0.0, "none", False
        if desired.nft is not None:
            nft = self.nft.apply(desired.nft, full=full)
            nft_seconds, nft_mode, nft_failed = nft.seconds, nft.mode, bool(nft.errors)
            problems += (f"nftables: {p}" for p in nft.errors)
            if nft.mode != "none" and not nft.errors:
                log.info("nftables: %s update, %d lines, %.1f ms", nft.mode, nft.script_lines,
                         nft.seconds * 1000)
        if self.bird is not None and desired.bird is not None:
            problems += (f"bird: {p}" for p in self.bird.apply(desired.bird, full=full))
        routes = self.routes.apply(desired.routes, full=full)
        problems += routes.errors
        if full:
            problems += self.sysctls.apply(desired.sysctls).errors
        return Applied(routes, problems, nft_seconds, nft_mode, nft_failed)

    def health_notes(self) -> tuple[str, ...]:
        """Problems that leave the node up but some pods out (for /healthz)."""
        bird = self.bird.health_notes() if self.bird is not None else ()
        return (*self._notes, *bird)

    def close(self) -> None:
        if self.bird is not None:
            self.bird.close()

    def _check_ipip(self, desired: DesiredState) -> None:
        """Pools asking for IPIP on a kernel without it: said once in the log, and kept
        in ``health_notes`` (CNI ADD refuses pods from such pools)."""
        pools = desired.ipip_pools
        notes = tuple(refusal(p) for p in pools) if pools and not self.ipip() else ()
        for note in notes:
            if note not in self._notes:
                log.error("%s", note)
        self._notes = notes
