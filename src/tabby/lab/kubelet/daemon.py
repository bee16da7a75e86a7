"""The stand-in's loops: registration and heartbeat, list+watch into a cache, and the
workers that make the lab match the cache one pod at a time (``Kubelet.sync``)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tabby.errors import Compacted, Conflict, LabError, NotFound, TabbyError
from tabby.lab import wiring
from tabby.lab.kubelet.api import KubeApi, WorkQueue
from tabby.lab.kubelet.documents import (
    Json,
    Key,
    NodeFacts,
    backoff,
    key_of,
    lease_object,
    node_labels,
    node_object,
    node_status,
    pod_status,
    rfc3339,
    status_current,
    terminating,
)
from tabby.lab.state import LabState, PodRecord, StateFile, lab_dir, require
from tabby.model import Pod

__all__ = ["Kubelet", "node_facts"]

Clock = Callable[[], datetime]
log = logging.getLogger("tabby.lab.kubelet")

WORKERS = 4
LEASE_INTERVAL = 10.0  # a kubelet's default lease renew interval
STATUS_INTERVAL = 30.0  # within the node lifecycle controller's grace period


def utcnow() -> datetime:
    return datetime.now(UTC)


def node_facts(lab: str, node: str) -> NodeFacts:
    """The node's fabric addresses (from the lab's topology) and this machine's facts."""
    plan = require(lab).topology.node(node)
    meminfo = Path("/proc/meminfo").read_text().split()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return NodeFacts(node, tuple(str(a.ip) for a in plan.addresses()), os.cpu_count() or 1,
                     int(meminfo[meminfo.index("MemTotal:") + 1]), os.uname().release, boot,
                     hashlib.sha256(f"{lab}/{node}".encode()).hexdigest()[:32])


class Kubelet:
    def __init__(self, lab: str, node: str, api: KubeApi, *, workers: int = WORKERS,
                 clock: Clock = utcnow) -> None:
        self.lab = lab
        self.node = node
        self.api = api
        self.workers = workers
        self.clock = clock
        self.state_file = StateFile(lab_dir(lab))
        self.facts = node_facts(lab, node)
        self.families = require(lab).topology.families
        self.queue = WorkQueue()
        self.stopping = threading.Event()
        self.synced = threading.Event()  # registered and the first list queued
        self._pods: dict[Key, Json] = {}
        self._lock = threading.Lock()
        self._failures: dict[Key, int] = {}
        self._known: set[str] = set()  # uids of pods this process wired or adopted
        self._node_uid = ""
        self._lease: Json | None = None
        self._ready_since = clock()

    # -- the process ------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Register, then heartbeat, watch and sync pods until ``stop()``; returns once the
        workers finished what they held. ``on_ready`` is called after the first list."""
        if not self._register():
            return
        loops = [threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True),
                 threading.Thread(target=self._watch, name="watch", daemon=True)]
        workers = [threading.Thread(target=self._work, name=f"worker-{i + 1}")
                   for i in range(self.workers)]
        for thread in (*loops, *workers):
            thread.start()
        while not self.stopping.is_set():
            if self.synced.wait(0.2):
                if on_ready:
                    on_ready()
                break
        self.stopping.wait()
        log.info("stopping: pods are left as they are")
        self.queue.shut_down()
        for thread in workers:
            thread.join()

    def stop(self) -> None:
        self.stopping.set()

    # -- node and lease -------------------------------------------------------------

    def _register(self) -> bool:
        failures = 0
        while not self.stopping.is_set():
            try:
                self._register_once()
                return True
            except TabbyError as exc:
                failures += 1
                log.warning("registering node %s: %s; again in %.0fs", self.node, exc,
                            backoff(failures))
                self.stopping.wait(backoff(failures))
        return False

    def _register_once(self) -> None:
        try:
            node = self.api.create_node(node_object(self.facts))
            log.info("registered node %s (%s)", self.node, ", ".join(self.facts.addresses))
        except Conflict:
            node = self.api.patch_node(self.node, {"metadata": {"labels": node_labels(self.node)}})
            log.info("node %s exists: updated it", self.node)
        self._node_uid = node["metadata"]["uid"]
        self._post_status()
        self._renew_lease()

    def _post_status(self) -> None:
        self.api.patch_node_status(self.node,
                                   node_status(self.facts, self.clock(), self._ready_since))

    def _renew_lease(self) -> None:
        now = self.clock()
        if self._lease is not None:
            version = self._lease["metadata"]["resourceVersion"]
            try:
                self._lease = self.api.replace_lease(
                    lease_object(self.node, self._node_uid, now, version))
                return
            except (Conflict, NotFound):
                self._lease = None
        try:
            version = self.api.get_lease(self.node)["metadata"]["resourceVersion"]
            self._lease = self.api.replace_lease(
                lease_object(self.node, self._node_uid, now, version))
        except NotFound:
            self._lease = self.api.create_lease(lease_object(self.node, self._node_uid, now))

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(LEASE_INTERVAL):
            try:
                self._renew_lease()
            except TabbyError as exc:
                log.warning("renewing the lease: %s", exc)
            if time.monotonic() - last_status >= STATUS_INTERVAL:
                try:
                    self._post_status()
                    last_status = time.monotonic()
                except TabbyError as exc:
                    log.warning("posting node status: %s", exc)

    # -- list and watch -----------------------------------------------------------------

    def _watch(self) -> None:
        version, failures = "", 0
        while not self.stopping.is_set():
            try:
                if not version:
                    version = self._relist()
                    self.synced.set()
                for event in self.api.watch_pods(self.node, version):
                    version = self._on_event(event) or version
                    failures = 0
                    if self.stopping.is_set():
                        return
            except Compacted:
                log.info("watch: resourceVersion %s is too old; listing again", version)
                version = ""
            except Exception as exc:  # the watch must outlive any one failure
                failures += 1
                log.warning("watching pods: %s; again in %.0fs", exc, backoff(failures),
                            exc_info=not isinstance(exc, TabbyError))
                self.stopping.wait(backoff(failures))

    def _relist(self) -> str:
        listing = self.api.list_pods(self.node)
        fresh = {key_of(p): p for p in listing["items"]}
        with self._lock:
            keys = set(self._pods) | set(fresh)
            self._pods = fresh
        keys |= {(r.namespace, r.name) for r in self.state_file.read().pods
                 if r.node == self.node}
        for key in sorted(keys):
            self.queue.add(key)
        version: str = listing["metadata"]["resourceVersion"]
        log.info("listed %d pods bound to %s (resourceVersion %s)", len(fresh), self.node, version)
        return version

    def _on_event(self, event: Json) -> str:
        obj = event.get("object") or {}
        version: str = (obj.get("metadata") or {}).get("resourceVersion", "")
        if event.get("type") == "BOOKMARK":
            return version
        key = key_of(obj)
        with self._lock:
            if event.get("type") == "DELETED":
                self._pods.pop(key, None)
            else:
                self._pods[key] = obj
        self.queue.add(key)
        return version

    # -- workers ---------------------------------------------------------------------------

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            try:
                self.sync(key)
            except Exception as exc:  # one pod's failure never ends a worker
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                log.warning("%s/%s: %s; again in %.0fs", *key, exc, backoff(failures),
                            exc_info=not isinstance(exc, TabbyError))
                self.queue.add_after(key, backoff(failures))
            else:
                self._failures.pop(key, None)
            finally:
                self.queue.done(key)

    def sync(self, key: Key) -> None:
        """Make the lab match the cached pod ``key`` (None: gone from the API)."""
        namespace, name = key
        with self._lock:
            pod = self._pods.get(key)
        record = self.state_file.read().pod(namespace, name)
        if record is not None and record.node != self.node:
            if pod is not None and not terminating(pod):
                raise LabError(f"{namespace}/{name}: the lab still has a pod of that name wired"
                               f" on {record.node}; waiting for it to go")
            record = None
        if record is not None and (pod is None or record.uid != pod["metadata"]["uid"]):
            self._teardown(record)
            record = None
        if pod is None:
            return
        uid = pod["metadata"]["uid"]
        if terminating(pod):
            if record is not None:
                self._teardown(record)
            try:
                self.api.delete_pod(namespace, name, uid)
                log.info("%s/%s: deleted", namespace, name)
            except (NotFound, Conflict):
                pass  # gone already, or a new pod of that name
            return
        if record is not None and not record.ips:  # its CNI ADD failed, and the undo too
            self._teardown(record)
            record = None
        model = Pod.from_manifest({**pod, "apiVersion": "v1", "kind": "Pod"})
        if model.host_network:
            ips, container_id = self.facts.addresses, uid.replace("-", "")
        else:
            if record is None:
                record = self._start(pod, model)
            elif record.uid not in self._known:
                log.info("%s: adopted as wired before (%s; netns %s)", record.ref,
                         ", ".join(map(str, record.ips)), record.netns)
            self._known.add(record.uid)
            ips, container_id = self._ordered(record), record.container_id
        if not status_current(pod, ips):
            self._write_status(pod, ips, container_id)

    def _start(self, pod: Json, model: Pod) -> PodRecord:
        """Record, then wire the pod; a failure undone, posted as an Event and raised."""
        namespace, name = key_of(pod)
        record = PodRecord(
            namespace=namespace, name=name, uid=pod["metadata"]["uid"], node=self.node,
            netns=wiring.pod_netns(self.lab, namespace, name),
            container_id=secrets.token_hex(32), ifname=wiring.IFNAME,
            ports=tuple((p.container_port, p.protocol) for p in model.ports()))

        def reserve(state: LabState) -> LabState:
            current = state.pod(namespace, name)
            if current is not None:  # wired meanwhile (by the stand-in of another node)
                raise LabError(f"{record.ref}: the lab already has a pod of that name on"
                               f" {current.node}; waiting for it to go")
            return state.with_pod(record)

        self.state_file.mutate(reserve)
        began = time.monotonic()
        try:
            record = wiring.wire(self.state_file, record, model)
        except BaseException as exc:
            try:
                self._teardown(self.state_file.read().pod(namespace, name) or record)
            except TabbyError as undo:
                exc.add_note(f"undoing the half-wired pod failed too: {undo}")
            if isinstance(exc, TabbyError):
                self._event(pod, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {exc}")
            raise
        log.info("%s/%s: wired in %.2fs (%s; netns %s)", namespace, name,
                 time.monotonic() - began, ", ".join(map(str, record.ips)), record.netns)
        return record

    def _teardown(self, record: PodRecord) -> None:
        wiring.release(self.state_file, record, second_del=True)
        wiring.forget(self.state_file, record)
        log.info("%s: torn down (uid %s)", record.ref, record.uid)

    def _ordered(self, record: PodRecord) -> tuple[str, ...]:
        """The pod's addresses, the lab's first family first (podIPs[0] is podIP)."""
        rank = {v: i for i, v in enumerate(self.families)}
        return tuple(str(ip) for ip in sorted(record.ips, key=lambda ip: rank.get(ip.version, 9)))

    def _write_status(self, pod: Json, ips: tuple[str, ...], container_id: str) -> None:
        namespace, name = key_of(pod)
        now = self.clock()
        status = pod_status(pod, ips, self.facts.addresses, container_id, now)
        self.api.patch_pod_status(namespace, name,
                                  {"metadata": {"uid": pod["metadata"]["uid"]}, "status": status})
        created = pod["metadata"].get("creationTimestamp", "")
        age = ""
        if created:
            since = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            age = f", {(now - since).total_seconds():.0f}s after creation"
        log.info("%s/%s: Running and Ready (%s%s)", namespace, name, ", ".join(ips), age)

    def _event(self, pod: Json, reason: str, message: str) -> None:
        namespace, name = key_of(pod)
        stamp = rfc3339(self.clock())
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace,
                               "name": name, "uid": pod["metadata"]["uid"],
                               "resourceVersion": pod["metadata"].get("resourceVersion", "")},
            "reason": reason, "message": message[:1024], "type": "Warning",
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet", "reportingInstance": self.node,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            self.api.create_event(namespace, body)
        except TabbyError as exc:
            log.warning("%s/%s: posting event %s: %s", namespace, name, reason, exc)

