"""A node's BGP sessions as BIRD sees them (``tabby node status``, like ``calicoctl``'s).

    node_status(socket) -> NodeStatus       BIRD's version, router id, and one
                                            PeerStatus per ``protocol bgp``

The peer type comes from the session's description, which tabby's bird.conf
sets to ``node-to-node mesh``, ``global``, ``node specific`` or ``route
reflector client``; the state and info columns are BIRD's own (``up`` /
``Established``, ``start`` / ``Active Socket: Connection refused``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabby.bgp.control import BirdControl, ProtocolInfo, Reply, protocols


@dataclass(frozen=True, slots=True)
class PeerStatus:
    name: str  # BIRD's protocol name
    address: str
    type: str
    state: str
    since: str
    info: str
    as_number: str

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def established(self) -> bool:
        return self.info.startswith("Established")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "family": f"ipv{self.family}",
                "type": self.type, "state": self.state, "since": self.since,
                "info": self.info, "asNumber": self.as_number}


@dataclass(frozen=True, slots=True)
class NodeStatus:
    socket: str
    version: str
    router_id: str
    peers: tuple[PeerStatus, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"socket": self.socket, "bird": {"running": True, "version": self.version,
                                                "routerId": self.router_id},
                "peers": [p.to_dict() for p in self.peers]}


_TYPES = {"Mesh": "node-to-node mesh", "Global": "global", "Node": "node specific"}


def peer_status(p: ProtocolInfo) -> PeerStatus:
    kind = p.details.get("Description") or _TYPES.get(p.name.split("_", 1)[0], "")
    return PeerStatus(name=p.name, address=p.details.get("Neighbor address", ""), type=kind,
                      state=p.state, since=p.since, info=p.info,
                      as_number=p.details.get("Neighbor AS", ""))


def parse_status(status: list[Reply]) -> tuple[str, str]:
    """(version, router id) from ``show status``."""
    version = router_id = ""
    for reply in status:
        text = reply.text.strip()
        if text.startswith("BIRD "):
            version = text.split()[1]
        elif text.startswith("Router ID is "):
            router_id = text.removeprefix("Router ID is ")
    return version, router_id


def node_status(socket: Path | str, timeout: float = 5.0) -> NodeStatus:
    """Ask the BIRD behind ``socket``; BirdError if it does not answer."""
    with BirdControl(socket, timeout) as bird:
        version, router_id = parse_status(bird.command("show status"))
        found = protocols(bird.command("show protocols all"))
    peers = tuple(peer_status(p) for p in found if p.proto == "BGP")
    return NodeStatus(str(socket), version, router_id, peers)
