"""What a lab made, recorded as it is made: /run/tabby/labs/<name>/state.json.

The builder and the pod driver add every namespace, link and process to the
record *before* (namespaces, links) or right after (processes) making it, so a
lab that failed half-way, or whose builder was killed, is still torn down
exactly by ``tabby lab down``. Writers hold an exclusive ``flock`` on the lab's
``lock`` file and replace ``state.json`` atomically; readers need no lock.

A process is recorded with its start time (``/proc/<pid>/stat`` field 22), so
a recycled PID is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabby.errors import LabError
from tabby.lab.topology import Topology, plan

ROOT = Path("/run/tabby/labs")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    start: int  # clock ticks after boot when it started; guards against PID reuse
    role: str  # "agent node-1", "listener default/web", "etcd e1", ...

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "role": self.role}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Proc:
        return cls(int(d["pid"]), int(d["start"]), str(d["role"]))


@dataclass(frozen=True, slots=True)
class Link:
    netns: str
    name: str


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    netns: str
    dir: Path
    agent: Proc | None = None

    @property
    def cni_conflist(self) -> Path:
        return self.dir / "net.d" / "10-tabby.conflist"

    @property
    def cni_bin_dir(self) -> Path:
        return self.dir / "bin"

    @property
    def cni_socket(self) -> Path:
        return self.dir / "cni.sock"

    @property
    def agent_log(self) -> Path:
        return self.dir / "agent.log"


@dataclass(frozen=True, slots=True)
class PodRecord:
    namespace: str
    name: str
    uid: str
    node: str
    netns: str
    container_id: str
    ifname: str = "eth0"
    ips: tuple[IPAddress, ...] = ()
    ports: tuple[tuple[int, str], ...] = ()  # (port, "TCP"|"UDP"|"SCTP") as declared
    listener: Proc | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ip(self, version: int) -> IPAddress | None:
        return next((ip for ip in self.ips if ip.version == version), None)


@dataclass(frozen=True, slots=True)
class LabState:
    name: str
    dir: Path
    phase: str  # "building", "up", "down" (tearing down)
    options: dict[str, Any]  # plan()'s arguments
    datastore: str  # the store URL the lab's agents use
    netns: tuple[str, ...] = ()  # fabric namespaces made (pods' are in ``pods``)
    links: tuple[Link, ...] = ()
    procs: tuple[Proc, ...] = ()  # lab-level processes (etcd, relay); agents are in ``nodes``
    nodes: tuple[NodeRecord, ...] = ()
    pods: tuple[PodRecord, ...] = ()

    @property
    def topology(self) -> Topology:
        return plan(**self.options)

    def node(self, name: str) -> NodeRecord:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"lab {self.name}: no node {name!r}")

    def pod(self, namespace: str, name: str) -> PodRecord | None:
        return next((p for p in self.pods if (p.namespace, p.name) == (namespace, name)), None)

    def all_procs(self) -> tuple[Proc, ...]:
        """Every process the lab started, pods' first, agents, then the rest."""
        listeners = tuple(p.listener for p in self.pods if p.listener)
        agents = tuple(n.agent for n in self.nodes if n.agent)
        return (*listeners, *agents, *self.procs)

    def all_netns(self) -> tuple[str, ...]:
        """Every namespace the lab made, pods' first."""
        return (*(p.netns for p in self.pods), *self.netns)

    def with_pod(self, pod: PodRecord) -> LabState:
        others = tuple(p for p in self.pods if (p.namespace, p.name) != (pod.namespace, pod.name))
        return dataclasses.replace(self, pods=(*others, pod))

    def without_pod(self, namespace: str, name: str) -> LabState:
        return dataclasses.replace(self, pods=tuple(
            p for p in self.pods if (p.namespace, p.name) != (namespace, name)))

    def with_node(self, node: NodeRecord) -> LabState:
        nodes = tuple(node if n.name == node.name else n for n in self.nodes)
        if node not in nodes:
            nodes = (*nodes, node)
        return dataclasses.replace(self, nodes=nodes)


def lab_dir(name: str) -> Path:
    return ROOT / name


def load(name: str) -> LabState | None:
    """The recorded state of lab ``name``, or None if no such lab exists."""
    return read_state(lab_dir(name) / "state.json")


def read_state(path: Path) -> LabState | None:
    name = path.parent.name
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise LabError(f"lab {name}: {path} is unreadable ({exc}); remove the lab's namespaces"
                       f" and {path.parent} by hand") from exc


def require(name: str) -> LabState:
    state = load(name)
    if state is None:
        raise LabError(f"no lab named {name!r} is up (start one with: tabby lab up --name {name})")
    return state


def names() -> list[str]:
    if not ROOT.is_dir():
        return []
    return sorted(p.parent.name for p in ROOT.glob("*/state.json"))


class StateFile:
    """The one writer of a lab's state file: read-modify-write under a flock."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "state.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self) -> LabState:
        state = read_state(self.path)
        if state is None:
            raise LabError(f"lab {self.dir.name}: its state file {self.path} is gone")
        return state

    def write(self, state: LabState) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(to_dict(state), indent=1) + "\n")
        tmp.replace(self.path)

    def mutate(self, change: Callable[[LabState], LabState]) -> LabState:
        with self.locked():
            state = change(self.read())
            self.write(state)
            return state


# -- JSON form ----------------------------------------------------------------

def to_dict(s: LabState) -> dict[str, Any]:
    return {
        "name": s.name, "dir": str(s.dir), "phase": s.phase, "options": s.options,
        "datastore": s.datastore, "netns": list(s.netns),
        "links": [{"netns": link.netns, "name": link.name} for link in s.links],
        "procs": [p.to_dict() for p in s.procs],
        "nodes": [{"name": n.name, "netns": n.netns, "dir": str(n.dir),
                   "agent": n.agent.to_dict() if n.agent else None} for n in s.nodes],
        "pods": [_pod_dict(p) for p in s.pods],
    }


def _pod_dict(p: PodRecord) -> dict[str, Any]:
    return {"namespace": p.namespace, "name": p.name, "uid": p.uid, "node": p.node,
            "netns": p.netns, "containerID": p.container_id, "ifname": p.ifname,
            "ips": [str(ip) for ip in p.ips], "ports": [list(port) for port in p.ports],
            "listener": p.listener.to_dict() if p.listener else None}


def from_dict(d: dict[str, Any]) -> LabState:
    return LabState(
        name=d["name"], dir=Path(d["dir"]), phase=d["phase"], options=dict(d["options"]),
        datastore=d["datastore"], netns=tuple(d["netns"]),
        links=tuple(Link(x["netns"], x["name"]) for x in d["links"]),
        procs=tuple(Proc.from_dict(p) for p in d["procs"]),
        nodes=tuple(NodeRecord(n["name"], n["netns"], Path(n["dir"]),
                               Proc.from_dict(n["agent"]) if n["agent"] else None)
                    for n in d["nodes"]),
        pods=tuple(PodRecord(
            namespace=p["namespace"], name=p["name"], uid=p["uid"], node=p["node"],
            netns=p["netns"], container_id=p["containerID"], ifname=p["ifname"],
            ips=tuple(ipaddress.ip_address(ip) for ip in p["ips"]),
            ports=tuple((int(port), str(proto)) for port, proto in p["ports"]),
            listener=Proc.from_dict(p["listener"]) if p["listener"] else None)
            for p in d["pods"]),
    )
