"""The kubelet stand-in's pure half: the documents it writes, and its keyed work queue."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from tabby.errors import Compacted, Conflict, Forbidden, NotFound, Unavailable
from tabby.kube.binaries import KUBERNETES_VERSION
from tabby.lab.kubelet.api import WorkQueue, status_error
from tabby.lab.kubelet.documents import (
    NodeFacts,
    backoff,
    lease_object,
    node_status,
    pod_status,
    qos_class,
    status_current,
)

T0 = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
FACTS = NodeFacts("node-1", ("198.18.0.11", "fd7a:bb1e::11"), 4, 8_000_000, "6.1.0", "b", "m")


def pod(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "default", "uid": "u1", "generation": 1},
            "spec": {"containers": [{"name": "web", "image": "pause"}], **spec},
            "status": status or {}}


def test_node_status_lists_every_family_and_says_ready() -> None:
    status = node_status(FACTS, T0 + timedelta(seconds=30), T0)
    assert status["addresses"] == [{"type": "InternalIP", "address": "198.18.0.11"},
                                   {"type": "InternalIP", "address": "fd7a:bb1e::11"},
                                   {"type": "Hostname", "address": "node-1"}]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    assert ready["lastHeartbeatTime"] == "2026-12-06T12:00:30Z"
    assert ready["lastTransitionTime"] == "2026-12-06T12:00:00Z"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "MemoryPressure": "False", "DiskPressure": "False", "PIDPressure": "False",
        "Ready": "True"}
    assert status["capacity"] == {"cpu": "4", "memory": "8000000Ki", "pods": "110"}
    assert status["nodeInfo"]["kubeletVersion"] == KUBERNETES_VERSION
    assert status["nodeInfo"]["containerRuntimeVersion"] == "tabby-lab://"


def test_lease_names_its_holder_and_owner() -> None:
    lease = lease_object("node-1", "n-uid", T0, "42")
    assert lease["metadata"]["resourceVersion"] == "42"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "n-uid"
    assert lease["spec"] == {"holderIdentity": "node-1", "leaseDurationSeconds": 40,
                             "renewTime": "2026-12-06T12:00:00.000000Z"}


def test_pod_status_is_running_and_ready() -> None:
    status = pod_status(pod({"qosClass": "BestEffort"}), ("198.19.0.1", "fd7a:bb1e:1::1"),
                        ("198.18.0.11",), "abc", T0)
    assert status["phase"] == "Running" and status["podIP"] == "198.19.0.1"
    assert status["podIPs"] == [{"ip": "198.19.0.1"}, {"ip": "fd7a:bb1e:1::1"}]
    assert status["hostIPs"] == [{"ip": "198.18.0.11"}]
    assert {c["type"] for c in status["conditions"]} == {
        "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"}
    (container,) = status["containerStatuses"]
    assert container["containerID"] == "tabby-lab://abc" and container["ready"]
    assert container["state"] == {"running": {"startedAt": "2026-12-06T12:00:00Z"}}


def test_pod_status_keeps_start_and_transition_times() -> None:
    old = {"startTime": "2026-12-06T11:00:00Z", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-06T10:59:59Z"},
        {"type": "Ready", "status": "False", "lastTransitionTime": "2026-12-06T11:00:00Z"}]}
    status = pod_status(pod(old), ("198.19.0.1",), ("198.18.0.11",), "abc", T0)
    times = {c["type"]: c["lastTransitionTime"] for c in status["conditions"]}
    assert status["startTime"] == "2026-12-06T11:00:00Z"
    assert times["PodScheduled"] == "2026-12-06T10:59:59Z"  # was True already
    assert times["Ready"] == "2026-12-06T12:00:00Z"  # turned True now


def test_status_current_needs_running_ready_and_the_same_addresses() -> None:
    written = pod_status(pod(), ("198.19.0.1",), ("198.18.0.11",), "abc", T0)
    assert status_current(pod(written), ("198.19.0.1",))
    assert not status_current(pod(written), ("198.19.0.2",))
    assert not status_current(pod({"phase": "Pending"}), ("198.19.0.1",))


def test_qos_class() -> None:
    def with_resources(**resources: Any) -> dict[str, Any]:
        return {"containers": [{"name": "c", "resources": resources}]}

    assert qos_class(with_resources()) == "BestEffort"
    assert qos_class(with_resources(requests={"cpu": "1"})) == "Burstable"
    both = {"cpu": "1", "memory": "1Gi"}
    assert qos_class(with_resources(limits=both)) == "Guaranteed"
    assert qos_class(with_resources(limits=both, requests={"cpu": "500m"})) == "Burstable"


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [backoff(n) for n in (1, 2, 3, 7, 20)] == [1.0, 2.0, 4.0, 60.0, 60.0]


def test_status_codes_map_onto_the_error_tree() -> None:
    assert isinstance(status_error("x", 404, "gone"), NotFound)
    assert isinstance(status_error("x", 409, "exists"), Conflict)
    assert isinstance(status_error("x", 410, "too old"), Compacted)
    assert isinstance(status_error("x", 503, "busy"), Unavailable)
    status = '{"kind": "Status", "code": 403, "message": "nodes is forbidden: User x"}'
    error = status_error("create node n", 403, status)
    assert isinstance(error, Forbidden)
    assert str(error) == "create node n: nodes is forbidden: User x"


def test_work_queue_never_hands_one_key_to_two_workers() -> None:
    queue = WorkQueue()
    key = ("default", "web")
    queue.add(key)
    queue.add(key)  # queued once
    assert queue.get() == key
    queue.add(key)  # while held: queued again only when done
    queue.add(("default", "db"))
    assert queue.get() == ("default", "db")
    got: list[tuple[str, str] | None] = []
    waiter = threading.Thread(target=lambda: got.append(queue.get()))
    waiter.start()
    waiter.join(0.2)
    assert got == []  # "web" is held
    queue.done(key)
    waiter.join(5.0)
    assert got == [key]
    queue.shut_down()
    assert queue.get() is None
