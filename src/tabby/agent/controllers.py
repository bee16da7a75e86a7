"""Controllers the agent runs before its routes, one per kind of node state.

Each controller turns a ``Snapshot`` into the desired state of one part of
the node (BIRD's config, VXLAN devices, the nftables table) and applies it by
difference. The agent calls ``sync`` on every pass, under the dataplane lock,
with ``full=True`` when it wants the kernel read back (first pass, periodic
resync, after an error); ``sync`` returns its problems as text (an empty list
when all went well) and never raises a TabbyError for a dataplane failure.
They run before the routes so that a device routes go through (VXLAN) is in
place first. A controller may also offer ``health_notes()`` (``HasHealth``):
problems that leave the node up but some pods out, shown by ``/healthz``.

Add a controller by appending to ``build_controllers``; keep its wiring here
and its logic in its own package (calc for the pure half, dataplane or bgp
for the half that touches the system).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tabby.snapshot import Snapshot

if TYPE_CHECKING:
    from tabby.agent.daemon import AgentConfig
    from tabby.agent.metrics import AgentMetrics
    from tabby.dataplane.netlink import CallCounts
    from tabby.store.client import Client


class Controller(Protocol):
    name: str

    def sync(self, snapshot: Snapshot, *, full: bool) -> list[str]:
        """Make this part of the node match ``snapshot``; the problems met."""
        ...

    def close(self) -> None:
        """The agent is stopping: release resources, leave the dataplane as it is."""
        ...


@runtime_checkable
class HasHealth(Protocol):
    def health_notes(self) -> tuple[str, ...]:
        """Problems for /healthz that do not make the agent unready."""
        ...


def build_controllers(config: AgentConfig, counts: CallCounts,
                      metrics: AgentMetrics, client: Client) -> list[Controller]:
    """Every controller this agent runs, in the order their syncs run."""
    from tabby.agent.nftables import NftController
    from tabby.agent.vxlan import VxlanController
    controllers: list[Controller] = [VxlanController(config.node, client, counts, config.mtu),
                                     NftController(config.node)]
    if config.bgp == "bird":
        from tabby.bgp.controller import BirdController
        controllers.append(BirdController.in_directory(config.node, config.bgp_dir))
    return controllers
