"""The lab as a container runtime: each node's conflist, and calling it.

``cni_conflist`` is what the lab writes per node; ``CNIRuntime(node)`` executes
that conflist the way libcni does (``tabby.cni.runtime``): ADD in order with
prevResult chaining, DEL in reverse with the cached result, STATUS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabby.cni import install
from tabby.cni.runtime import ConfList, Invocation, Runtime, exec_plugin, netns_exec
from tabby.errors import TabbyError
from tabby.lab.state import NodeRecord

CNI_VERSION = "1.1.0"  # what tabby-cni speaks at best
VERSIONS_NEWEST_FIRST = ("1.1.0", "1.0.0")
NETWORK = "k8s-pod-network"
PORTMAP = Path("/usr/lib/cni/portmap")


def cni_conflist(socket: Path, mtu: int, *, portmap_version: str | None,
                 ) -> dict[str, Any]:
    """The conflist a runtime on a lab node uses: the one ``tabby install-cni`` writes
    on a cluster (tabby-cni, then portmap for hostPorts when installed)."""
    return install.conflist(NETWORK, socket, mtu, portmap_version=portmap_version)


def portmap_version(binary: Path = PORTMAP) -> str | None:
    """The newest cniVersion tabby-cni and the reference portmap share, or None."""
    for version in VERSIONS_NEWEST_FIRST:
        if portmap_supports(version, binary):
            return version
    return None


def portmap_supports(version: str = CNI_VERSION, binary: Path = PORTMAP) -> bool:
    """Whether the reference portmap plugin accepts configs of ``version``."""
    if not binary.exists():
        return False
    try:
        answer = exec_plugin(binary, Invocation("VERSION"), {"cniVersion": version})
    except TabbyError:
        return False
    return version in (answer or {}).get("supportedVersions", [])


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What the runtime knows of one pod sandbox when it calls CNI."""

    container_id: str
    netns: str  # path, e.g. /run/netns/<name>; "" for the runtime's second DEL
    ifname: str
    args: Mapping[str, str]
    capabilities: Mapping[str, Any] = field(default_factory=dict)  # e.g. portMappings


class CNIRuntime:
    """A lab node's runtime side: its conflist, CNI_PATH = its cniBinDir, plugins run
    inside the node's namespace (where a runtime on that node runs them), results
    cached in the node's directory. Errors are ``CNIError`` (a TabbyError)."""

    def __init__(self, node: NodeRecord) -> None:
        self.node = node
        self.runtime = Runtime(ConfList.load(node.cni_conflist), [node.cni_bin_dir],
                               exec_prefix=netns_exec(node.netns),
                               cache_dir=node.dir / "results")

    def add(self, sandbox: Sandbox) -> dict[str, Any]:
        return self.runtime.add(sandbox.container_id, sandbox.netns, sandbox.ifname,
                                args=sandbox.args, capability_args=sandbox.capabilities)

    def delete(self, sandbox: Sandbox) -> None:
        self.runtime.delete(sandbox.container_id, sandbox.netns, sandbox.ifname,
                            args=sandbox.args, capability_args=sandbox.capabilities)

    def ready(self) -> bool:
        """Whether every plugin of the chain answers STATUS with success."""
        try:
            self.runtime.status()
        except TabbyError:
            return False
        return True
