"""Controllers the agent runs after its routes, one per kind of node state.

Each controller turns a ``Snapshot`` into the desired state of one part of
the node (BIRD's config, VXLAN devices, the nftables table) and applies it by
difference. The agent calls ``sync`` on every pass, under the dataplane lock,
with ``full=True`` when it wants the kernel read back (first pass, periodic
resync, after an error); ``sync`` returns its problems as text (an empty list
when all went well) and never raises a TabbyError for a dataplane failure.

Add a controller by appending to ``build_controllers``; keep its wiring here
and its logic in its own package (calc for the pure half, dataplane or bgp
for the half that touches the system).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tabby.calc.snapshot import Snapshot

if TYPE_CHECKING:
    from tabby.agent.daemon import AgentConfig
    from tabby.agent.metrics import AgentMetrics
    from tabby.dataplane.netlink import CallCounts


class Controller(Protocol):
    name: str

    def sync(self, snapshot: Snapshot, *, full: bool) -> list[str]:
        """Make this part of the node match ``snapshot``; the problems met."""
        ...

    def close(self) -> None:
        """The agent is stopping: release resources, leave the dataplane as it is."""
        ...


def build_controllers(config: AgentConfig, counts: CallCounts,
                      metrics: AgentMetrics) -> list[Controller]:
    """Every controller this agent runs, in the order their syncs run."""
    from tabby.agent.nftables import NftController
    controllers: list[Controller] = [NftController(config.node)]
    return controllers
