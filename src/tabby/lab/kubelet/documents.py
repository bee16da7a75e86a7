"""The objects a kubelet writes, computed: pure functions, no I/O.

    node_object(facts)                        the Node to create
    node_status(facts, now, ready_since)      its whole status (Ready, addresses, nodeInfo)
    lease_object(node, uid, now)              Lease kube-node-lease/<node>
    pod_status(pod, ips, host_ips, id, now)   a running, ready pod's status
    status_current(pod, ips)                  whether the pod already says so

Times come in as values (the caller owns the clock).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tabby.kube.binaries import KUBERNETES_VERSION

Json = dict[str, Any]
Key = tuple[str, str]  # a pod's (namespace, name)

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40
RUNTIME = "tabby-lab://"
POD_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready",
                  "PodScheduled")
BACKOFF_FIRST, BACKOFF_MOST = 1.0, 60.0


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the stand-in reports of its node."""

    name: str
    addresses: tuple[str, ...]  # InternalIPs: the node's fabric addresses, lab family order
    cpu: int
    memory_ki: int
    kernel: str
    boot_id: str
    machine_id: str


def node_labels(name: str) -> dict[str, str]:
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64"}


def node_object(facts: NodeFacts) -> Json:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": facts.name, "labels": node_labels(facts.name)}}


def node_status(facts: NodeFacts, now: datetime, ready_since: datetime) -> Json:
    """The Node's whole status: lists in it are replaced, not merged (addresses repeat
    the type InternalIP per family, which a strategic merge would collapse)."""
    resources = {"cpu": str(facts.cpu), "memory": f"{facts.memory_ki}Ki", "pods": "110"}
    conditions = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory",
         "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady",
         "the tabby lab's kubelet stand-in is posting ready status (no containers run here)"),
    ]
    return {
        "addresses": [*({"type": "InternalIP", "address": a} for a in facts.addresses),
                      {"type": "Hostname", "address": facts.name}],
        "capacity": resources, "allocatable": dict(resources),
        "conditions": [{"type": kind, "status": status, "reason": reason, "message": message,
                        "lastHeartbeatTime": rfc3339(now),
                        "lastTransitionTime": rfc3339(ready_since)}
                       for kind, status, reason, message in conditions],
        "nodeInfo": {"machineID": facts.machine_id, "systemUUID": facts.machine_id,
                     "bootID": facts.boot_id, "kernelVersion": facts.kernel,
                     "osImage": "tabby lab", "containerRuntimeVersion": RUNTIME,
                     "kubeletVersion": KUBERNETES_VERSION, "kubeProxyVersion": "",
                     "operatingSystem": "linux", "architecture": "amd64"},
    }


def lease_object(node: str, node_uid: str, now: datetime, resource_version: str = "") -> Json:
    meta: Json = {"name": node, "namespace": LEASE_NAMESPACE, "ownerReferences": [
        {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_DURATION,
                     "renewTime": micro_time(now)}}


def qos_class(spec: Json) -> str:
    """The pod's QoS class from its containers' cpu/memory requests and limits (quantities
    compared as written: the API server's own answer, when the pod has one, is preferred)."""
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]

    def part(c: Json, kind: str) -> dict[str, str]:
        given = (c.get("resources") or {}).get(kind) or {}
        return {k: str(v) for k, v in given.items() if k in ("cpu", "memory")}

    if not any(part(c, "requests") or part(c, "limits") for c in containers):
        return "BestEffort"
    if all(set(part(c, "limits")) == {"cpu", "memory"}
           and all(part(c, "requests").get(k, v) == v for k, v in part(c, "limits").items())
           for c in containers):
        return "Guaranteed"
    return "Burstable"


def pod_status(pod: Json, ips: Sequence[str], host_ips: Sequence[str], container_id: str,
               now: datetime) -> Json:
    """What a kubelet writes once a pod's containers run and are ready: transition times
    and the start time kept from the pod's current status where they already hold."""
    spec, old = pod["spec"], pod.get("status") or {}
    stamp = rfc3339(now)
    started = old.get("startTime") or stamp
    generation = pod["metadata"].get("generation")
    previous = {c.get("type"): c for c in old.get("conditions") or []}

    def condition(kind: str) -> Json:
        was = previous.get(kind) or {}
        since = was.get("lastTransitionTime") if was.get("status") == "True" else None
        out: Json = {"type": kind, "status": "True", "lastProbeTime": None,
                     "lastTransitionTime": since or stamp}
        if generation:
            out["observedGeneration"] = generation
        return out

    def container(c: Json, state: Json, *, started_: bool) -> Json:
        return {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                "containerID": f"{RUNTIME}{container_id}", "ready": True, "started": started_,
                "restartCount": 0, "state": state}

    status: Json = {
        "phase": "Running", "podIP": ips[0] if ips else None,
        "podIPs": [{"ip": ip} for ip in ips],
        "hostIP": host_ips[0] if host_ips else None,
        "hostIPs": [{"ip": ip} for ip in host_ips], "startTime": started,
        "qosClass": old.get("qosClass") or qos_class(spec),
        "conditions": [condition(kind) for kind in POD_CONDITIONS],
        "containerStatuses": [container(c, {"running": {"startedAt": started}}, started_=True)
                              for c in spec.get("containers") or []],
    }
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                           "finishedAt": started}}
    inits = [container(c, done, started_=False) for c in spec.get("initContainers") or []]
    if inits:
        status["initContainerStatuses"] = inits
    if generation:
        status["observedGeneration"] = generation
    return status


def status_current(pod: Json, ips: Sequence[str]) -> bool:
    """Whether the pod's status already says Running and Ready with these addresses."""
    st = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in st.get("conditions") or [])
    return (st.get("phase") == "Running" and ready
            and [p.get("ip") for p in st.get("podIPs") or []] == list(ips))


def terminating(pod: Json) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def key_of(pod: Json) -> Key:
    return pod["metadata"]["namespace"], pod["metadata"]["name"]


def backoff(failures: int) -> float:
    return float(min(BACKOFF_MOST, BACKOFF_FIRST * 2 ** max(0, failures - 1)))
