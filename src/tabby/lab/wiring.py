"""One lab pod's plumbing, done the way a container runtime does it.

    record = wire(state_file, record, pod)       # netns, lo up, CNI ADD, listener; recorded
    release(state_file, record, second_del=...)  # CNI DEL, listener stopped, netns deleted
    forget(state_file, record)                   # the record goes last

Shared by the lab's pod driver (``tabby apply``, ``tabby.lab.pods``) and the
kubelet stand-in (``tabby.lab.kubelet``); neither the store nor the API server
is touched here. A pod's namespace is ``<lab>_<ns>_<pod>``; CNI runs through
the node's conflist (``CNIRuntime``) with the CNI_ARGS a kubelet sends
(``sandbox``); one listener process answers on every declared port. Every
step is recorded in the lab's state as soon as it is done, so a half-wired pod
is still torn down exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import sys

from tabby.lab import listener, system
from tabby.lab.cni import CNIRuntime, Sandbox
from tabby.lab.state import PodRecord, Proc, StateFile
from tabby.model import Pod

__all__ = ["IFNAME", "forget", "listen", "pod_netns", "release", "runtime", "sandbox", "wire"]

IFNAME = "eth0"
LISTENER_TIMEOUT = 10.0
MAX_NETNS_NAME = 200


def pod_netns(lab: str, namespace: str, name: str) -> str:
    """``<lab>_<ns>_<pod>``: '_' is in no lab, namespace or pod name, so names never collide."""
    full = f"{lab}_{namespace}_{name}"
    if len(full) <= MAX_NETNS_NAME:
        return full
    return f"{lab}_{namespace}_{hashlib.sha256(name.encode()).hexdigest()[:20]}"


def sandbox(record: PodRecord, pod: Pod | None = None, *, netns: bool = True) -> Sandbox:
    """What the runtime passes for ``record``: CNI_NETNS empty once the netns is gone
    (as a kubelet's second DEL), portMappings from ``pod``'s hostPorts."""
    args = {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": record.namespace,
            "K8S_POD_NAME": record.name, "K8S_POD_INFRA_CONTAINER_ID": record.container_id,
            "K8S_POD_UID": record.uid}
    caps: dict[str, object] = {}
    if pod is not None:
        mappings = [{"hostPort": p.host_port, "containerPort": p.container_port,
                     "protocol": p.protocol.lower()} for p in pod.ports() if p.host_port]
        if mappings:
            caps["portMappings"] = mappings
    path = str(system.NETNS_DIR / record.netns) if netns else ""
    return Sandbox(container_id=record.container_id, netns=path,
                   ifname=record.ifname, args=args, capabilities=caps)


def runtime(state_file: StateFile, node: str) -> CNIRuntime:
    return CNIRuntime(state_file.read().node(node))


def wire(state_file: StateFile, record: PodRecord, pod: Pod) -> PodRecord:
    """Make the pod's namespace, run CNI ADD, start its listener; the record as it ends,
    written to the state after each step. Raises what failed (CNIError, LabError):
    undoing is the caller's (``release`` then ``forget``)."""
    system.add_netns([record.netns])
    system.ip_batch(["link set lo up"], record.netns)
    result = runtime(state_file, record.node).add(sandbox(record, pod))
    ips = tuple(ipaddress.ip_interface(ip["address"]).ip for ip in result.get("ips", []))
    record = dataclasses.replace(record, ips=ips)
    _record(state_file, record)
    if record.ports:
        record = dataclasses.replace(record, listener=listen(state_file, record))
        _record(state_file, record)
    return record


def listen(state_file: StateFile, record: PodRecord) -> Proc:
    """Start the pod's listener on its declared ports, inside its namespace; wait till ready."""
    ports = sorted({port for port, _ in record.ports})
    argv = system.in_netns(record.netns, [
        sys.executable, "-I", "-S", listener.__file__, "--name", record.name,
        *(f"--port={p}" for p in ports)])
    log = state_file.dir / "pods" / f"{record.namespace}_{record.name}.log"
    log.parent.mkdir(exist_ok=True)
    return system.spawn_ready(argv, f"listener {record.ref}", log, LISTENER_TIMEOUT)


def release(state_file: StateFile, record: PodRecord, *, second_del: bool = False) -> None:
    """Undo whatever of the pod exists, newest first: CNI DEL (with the netns while it
    exists), the listener, the namespace; with ``second_del`` one more DEL with an empty
    netns, as a kubelet and its CRI runtime send once the sandbox is gone. The record
    stays (``forget`` removes it)."""
    cni = runtime(state_file, record.node)
    present = record.netns in system.netns_list()
    cni.delete(sandbox(record, netns=present))
    if record.listener:
        system.stop([record.listener])
    system.delete_netns([record.netns])
    if second_del:
        cni.delete(sandbox(record, netns=False))


def forget(state_file: StateFile, record: PodRecord) -> None:
    """Remove the pod's record from the lab's state (if it is still this pod's)."""
    state_file.mutate(lambda s: s.without_pod(record.namespace, record.name)
                      if _same(s.pod(record.namespace, record.name), record) else s)


def _same(current: PodRecord | None, record: PodRecord) -> bool:
    return current is not None and current.container_id == record.container_id


def _record(state_file: StateFile, record: PodRecord) -> None:
    state_file.mutate(lambda s: s.with_pod(record))
