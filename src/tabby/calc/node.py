"""The node calculator: one Snapshot in, one frozen DesiredState out, per pass.

::

    Snapshot ──NodeCalculator.calculate──> DesiredState
                  routes    calc.routes.desired_routes
                  links     calc.vxlan.desired_devices     (VXLAN devices, their
                                                            addresses, FDB, neighbours)
                  nft       the table's features, merged:
                              policy       tabby.policy.nftables.PolicyRules
                              services     tabby.services.nft.ServiceRules
                              natOutgoing  calc.natoutgoing.natoutgoing_part
                              vxlan        calc.vxlan.vxlan_nft_part
                  bird      calc.bird.desired_bird (its origins: calc.bird._origins)
                  sysctls   node_sysctls
                  ipip      pools asking for IPIP (the agent checks the kernel can)

Every feature of the nftables table is listed in ``nft_parts``, here, in the order
their parts merge; nothing registers itself. The calculator owns every memo
the features keep between passes (policy's program and rendered chains, the
services' per-service shares) as instance state: a fresh calculator fed the
final snapshot of any sequence of updates gives an equal DesiredState
(tests/unit/test_calc_node.py replays random sequences to check). It does no
I/O and never writes to the store: what the agent publishes (VTEPs, endpoint
labels) is the publisher's job (``tabby.agent.publisher``).

A part that cannot be computed (two features declaring the same nft name, a
bug) is ``None`` with the reason in ``problems``: the agent leaves that part of
the kernel as it is and applies the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tabby.calc.bird import BirdConfig, desired_bird
from tabby.calc.ipip import ipip_pools
from tabby.calc.natoutgoing import natoutgoing_part
from tabby.calc.routes import Route, desired_routes
from tabby.calc.vxlan import VxlanDevice, desired_devices, vxlan_nft_part
from tabby.errors import TabbyError
from tabby.model import IPPool
from tabby.nft.model import Ruleset, merge
from tabby.policy.flowids import FlowLog
from tabby.policy.nftables import PolicyRules
from tabby.services.nft import ServiceRules
from tabby.snapshot import Snapshot

FAMILIES = (4, 6)


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything the node's kernel and BIRD should hold, for one snapshot."""

    node: str
    routes: frozenset[Route]
    links: tuple[VxlanDevice, ...]
    nft: Ruleset | None  # None: could not be computed (see problems); leave the table
    bird: BirdConfig | None  # None: the node runs no BGP (or it could not be computed)
    sysctls: Mapping[str, str] = field(default_factory=dict)
    ipip_pools: tuple[IPPool, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeSettings:
    node: str
    mtu: int = 1500  # the host interface's; VXLAN devices get this less their overhead
    bgp: bool = False  # BIRD spreads the routes (remote routes are its, not ours)
    flowlog: FlowLog | None = None  # policy logs flows to NFLOG (tabby.policy.flowlog)
    counters: bool = False  # per-rule named counters (tabby.agent.policymetrics reads them)


class NodeCalculator:
    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.node = settings.node
        self.policy = PolicyRules(settings.node, settings.flowlog, counters=settings.counters)
        self.services = ServiceRules(settings.node)

    def calculate(self, snapshot: Snapshot) -> DesiredState:
        node, problems = self.node, []
        links = desired_devices(snapshot, node, self.settings.mtu)
        try:
            nft: Ruleset | None = merge(self.nft_parts(snapshot, links))
        except TabbyError as exc:
            nft = None
            problems.append(f"nftables: computing the table: {exc}")
        bird = None
        if self.settings.bgp:
            try:
                bird = desired_bird(snapshot, node)
            except TabbyError as exc:
                problems.append(f"bird: computing bird.conf: {exc}")
        return DesiredState(
            node=node, routes=desired_routes(snapshot, node, bgp=self.settings.bgp),
            links=links, nft=nft, bird=bird,
            sysctls=node_sysctls(FAMILIES, flows=self.settings.flowlog is not None),
            ipip_pools=ipip_pools(snapshot, node), problems=tuple(problems))

    def nft_parts(self, snapshot: Snapshot, links: tuple[VxlanDevice, ...]) -> list[Ruleset]:
        """The table's features, each a part; ``merge`` joins them (a name declared twice
        is a bug and raises)."""
        return [
            self.policy.part(snapshot),
            self.services.part(snapshot),
            natoutgoing_part(snapshot, self.node),
            vxlan_nft_part(links),
        ]


def desired_state(snapshot: Snapshot, settings: NodeSettings) -> DesiredState:
    """A one-off calculation with a fresh calculator (tests, the CLI)."""
    return NodeCalculator(settings).calculate(snapshot)


def desired_ruleset(snapshot: Snapshot, node: str) -> Ruleset:
    """The node's whole nftables table, computed afresh (a DataplaneError if two
    features declare the same name)."""
    calculator = NodeCalculator(NodeSettings(node))
    return merge(calculator.nft_parts(snapshot, desired_devices(snapshot, node, 1500)))


def node_sysctls(families: tuple[int, ...] = FAMILIES, *, flows: bool = False
                 ) -> dict[str, str]:
    """Forwarding on for each family the node routes; with flow logs, conntrack counts
    each connection's packets and bytes (read when the flow ends)."""
    out = {"net/netfilter/nf_conntrack_acct": "1"} if flows else {}
    if 4 in families:
        out["net/ipv4/ip_forward"] = "1"
    if 6 in families:
        out["net/ipv6/conf/all/forwarding"] = "1"
    return out
