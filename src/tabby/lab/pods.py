"""Pods in a lab, wired the way a kubelet and its runtime wire them.

    pods = LabPods("tabby", client)              # the lab must be up
    pods.apply_namespace(ns)                     # "created" | "configured" | "unchanged"
    pods.apply_pod(pod)                          # idem; new pods are wired, old ones relabelled
    pods.apply_pods([pod, ...], progress)        # the same, several at a time
    pods.delete_pod("default", "web")            # CNI DEL, listener stopped, netns deleted
    pods.delete_namespace("team-a")              # its pods first, then the object

A new pod: placed (``spec.nodeName``, else the node with the fewest pods),
recorded in the lab's state, written to the store (the agent reads its labels
and ports from there), given a namespace ``<lab>_<ns>_<pod>`` with lo up, then
the node's conflist is executed (CNI ADD) with the CNI_ARGS a kubelet sends;
one listener process answers on every declared port; last the Pod's status
(podIP(s), hostIP, phase Running) is written. A failure undoes the steps taken.
When that undo fails too (the datastore is down: CNI DEL cannot release), the
pod's record stays, so that ``lab down`` still removes all of it, and the next
apply of the pod clears what is left and wires it anew: a pod never stays
Pending because one apply met an outage. One apply or delete of a given pod
runs at a time, across processes (a flock per pod in ``<lab>/locks``).
Applying a pod that exists updates the object in place (labels, annotations):
no re-wiring; its containers and node cannot change. The plumbing itself
(netns, CNI, listener) is ``tabby.lab.wiring``, shared with the kubelet
stand-in (``tabby.lab.kubelet``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from tabby.errors import LabError, NotFound, TabbyError
from tabby.lab import services, system, wiring
from tabby.lab.state import LabState, PodRecord, StateFile, lab_dir, require
from tabby.lab.wiring import IFNAME, pod_netns, sandbox
from tabby.model import Namespace, Pod
from tabby.model.k8s import PodStatus
from tabby.store import open_store
from tabby.store.client import Client

__all__ = ["IFNAME", "LabPods", "exec_in_pod", "place", "pod_netns", "resolve", "sandbox"]

Progress = Callable[[str, int, int], None]
WORKERS = 4


class LabPods:
    def __init__(self, name: str, client: Client) -> None:
        require(name)
        self.name = name
        self.state_file = StateFile(lab_dir(name))
        self.client = client

    @classmethod
    def open(cls, name: str, client: Client | None = None) -> LabPods:
        """The pod driver of lab ``name``; with no client, one on the lab's datastore."""
        return cls(name, client or Client(open_store(require(name).datastore)))

    def close(self) -> None:
        self.client.store.close()

    def __enter__(self) -> LabPods:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- namespaces -------------------------------------------------------------

    def apply_namespace(self, ns: Namespace) -> str:
        return self.client.apply(ns)[1]

    def delete_namespace(self, name: str) -> None:
        """Delete the namespace's pods (wired ones through CNI DEL), then the object."""
        for pod in self.client.list(Pod, name):
            self.delete_pod(name, pod.meta.name)
        for record in self.state_file.read().pods:
            if record.namespace == name:
                self.delete_pod(name, record.name)
        self.client.delete(Namespace, name)

    # -- pods -------------------------------------------------------------------

    def apply_pod(self, pod: Pod) -> str:
        if pod.host_network:
            raise LabError(f"{pod.ref}: hostNetwork pods are not yet supported by the lab")
        with self._exclusive(pod.meta.namespace, pod.meta.name):
            return self._apply_pod(pod)

    def _apply_pod(self, pod: Pod) -> str:
        self._clear_unfinished(pod.meta.namespace, pod.meta.name)
        record = self._reserve(pod)
        if record is None:
            verb = self._reconfigure(pod)
            services.sync(self.name, self.client)  # labels may change what selects it
            return verb
        try:
            self._wire(pod, record)
        except BaseException as exc:
            try:
                self._unwire(self.state_file.read().pod(pod.meta.namespace, pod.meta.name))
            except TabbyError as undo:
                exc.add_note(f"undoing the half-wired pod failed too: {undo}; apply the pod"
                             " again (or delete it) once that is fixed")
            raise
        services.sync(self.name, self.client)  # Running now: its endpoints are ready
        return "created"

    def apply_pods(self, pods: Sequence[Pod],
                   progress: Progress | None = None) -> list[str | TabbyError]:
        """``apply_pod`` for each, a few at a time. Every pod is tried; per pod, in
        order, its result or the TabbyError it raised."""
        done = 0
        lock = threading.Lock()

        def one(pod: Pod) -> str | TabbyError:
            nonlocal done
            try:
                result: str | TabbyError = self.apply_pod(pod)
            except TabbyError as exc:
                result = exc
            with lock:
                done += 1
                if progress:
                    progress("pods", done, len(pods))
            return result

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            return list(pool.map(one, pods))

    def delete_pod(self, namespace: str, name: str) -> None:
        """CNI DEL through the chain, stop the listener, delete the namespace and the Pod.
        NotFound if the lab has no such pod."""
        with self._exclusive(namespace, name):
            self._delete_pod(namespace, name)

    def _delete_pod(self, namespace: str, name: str) -> None:
        record = self.state_file.read().pod(namespace, name)
        if record is None:
            self.client.delete(Pod, name, namespace)  # NotFound if absent
            services.sync(self.name, self.client)
            return
        services.sync(self.name, self.client, leaving=[(namespace, name)])  # endpoints first
        self._unwire(record)
        services.sync(self.name, self.client)

    # -- steps ------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, namespace: str, name: str) -> Iterator[None]:
        """One apply or delete of a pod at a time, across processes: a flock on a file
        named after the pod, which the kernel drops with its holder."""
        directory = self.state_file.dir / "locks"
        directory.mkdir(exist_ok=True)
        digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:32]
        fd = os.open(directory / digest, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _clear_unfinished(self, namespace: str, name: str) -> None:
        """Undo what an earlier apply of this pod left: one that failed and whose undo
        failed too (the datastore was down). Its record stays so that nothing leaks,
        but without this the pod would stay Pending for good, each apply "unchanged"."""
        record = self.state_file.read().pod(namespace, name)
        if record is not None and not self._finished(record):
            self._unwire(record)

    def _finished(self, record: PodRecord) -> bool:
        """Whether the apply that made ``record`` ran to its end: the pod's status, its
        last step, says Running for this very pod."""
        if not record.uid or not record.ips:
            return False
        stored = self.client.try_get(Pod, record.name, record.namespace)
        return (stored is not None and stored.meta.uid == record.uid
                and stored.status.phase == "Running")

    def _reserve(self, pod: Pod) -> PodRecord | None:
        """Place a new pod and record it; None if the lab already has it."""
        ns, name = pod.meta.namespace, pod.meta.name
        if self.client.try_get(Namespace, ns) is None:
            raise NotFound(f"{pod.ref}: namespace {ns!r} not found; apply the Namespace first")
        new: list[PodRecord] = []

        def reserve(state: LabState) -> LabState:
            if state.pod(ns, name) is not None:
                return state
            node = place(state, pod.node_name)
            record = PodRecord(namespace=ns, name=name, uid="", node=node,
                               netns=pod_netns(self.name, ns, name),
                               container_id=secrets.token_hex(32), ifname=IFNAME,
                               ports=tuple((p.container_port, p.protocol) for p in pod.ports()))
            new.append(record)
            return state.with_pod(record)

        self.state_file.mutate(reserve)
        return new[0] if new else None

    def _wire(self, pod: Pod, record: PodRecord) -> None:
        spec = {**pod.raw_spec, "nodeName": record.node}
        stored, _ = self.client.apply(dataclasses.replace(
            pod, node_name=record.node, raw_spec=spec, status=PodStatus(phase="Pending")))
        record = dataclasses.replace(record, uid=stored.meta.uid)
        record = wiring.wire(self.state_file, record, pod)
        ips = record.ips
        host = self.state_file.read().topology.node(record.node).addresses()[0].ip
        status = PodStatus(phase="Running", pod_ips=ips, host_ip=str(host))
        self.client.mutate(Pod, record.name, record.namespace,
                           lambda p: dataclasses.replace(p, status=status))

    def _reconfigure(self, pod: Pod) -> str:
        record = self.state_file.read().pod(pod.meta.namespace, pod.meta.name)
        assert record is not None
        stored = self.client.get(Pod, pod.meta.name, pod.meta.namespace)
        if pod.node_name not in ("", record.node):
            raise LabError(f"{pod.ref}: spec.nodeName cannot change (it runs on {record.node});"
                           " delete the pod and apply it again")
        if pod.ports() != stored.ports():  # the listener and the endpoint were made for these
            raise LabError(f"{pod.ref}: the containers' ports cannot change on a running pod;"
                           " delete the pod and apply it again")
        spec = {**pod.raw_spec, "nodeName": record.node}
        return self.client.apply(dataclasses.replace(
            pod, node_name=record.node, raw_spec=spec, status=stored.status))[1]

    def _unwire(self, record: PodRecord | None) -> None:
        """Undo whatever of the pod exists, newest first; the record goes last."""
        if record is None:
            return
        wiring.release(self.state_file, record)
        with contextlib.suppress(NotFound):
            self.client.delete(Pod, record.name, record.namespace)
        wiring.forget(self.state_file, record)


# -- the surface ``tabby apply`` / ``tabby delete`` call when a lab is up ------------

def apply_namespace(lab: LabState, client: Client, ns: Namespace) -> str:
    return LabPods(lab.name, client).apply_namespace(ns)


def apply_pod(lab: LabState, client: Client, pod: Pod) -> str:
    return LabPods(lab.name, client).apply_pod(pod)


def apply_pods(lab: LabState, client: Client, pods: Sequence[Pod],
               progress: Progress | None = None) -> list[str | TabbyError]:
    return LabPods(lab.name, client).apply_pods(pods, progress)


def delete_pod(lab: LabState, client: Client, namespace: str, name: str) -> None:
    LabPods(lab.name, client).delete_pod(namespace, name)


def delete_namespace(lab: LabState, client: Client, name: str) -> None:
    LabPods(lab.name, client).delete_namespace(name)


def place(state: LabState, wanted: str) -> str:
    """The node named by ``spec.nodeName``, else the one with fewest pods (first on ties)."""
    names = [n.name for n in state.nodes]
    if wanted:
        if wanted not in names:
            raise LabError(f"spec.nodeName {wanted!r} is not a node of lab {state.name}"
                           f" (nodes: {', '.join(names)})")
        return wanted
    load = {name: 0 for name in names}
    for pod in state.pods:
        load[pod.node] = load.get(pod.node, 0) + 1
    return min(names, key=lambda name: load[name])


def resolve(state: LabState, ref: str) -> PodRecord:
    """The pod ``NS/POD`` (or ``POD`` in ``default``) of the lab; LabError if absent."""
    namespace, _, name = ref.rpartition("/")
    record = state.pod(namespace or "default", name)
    if record is None:
        raise LabError(f"lab {state.name} has no pod {namespace or 'default'}/{name}")
    return record


def exec_in_pod(state: LabState, ref: str, argv: Sequence[str]) -> int:
    """Run ``argv`` in the pod's namespace with this process's stdio; its exit code
    (128+N when killed by signal N)."""
    if not argv:
        raise LabError("lab exec: name a command to run (tabby lab exec NS/POD -- CMD...)")
    record = resolve(state, ref)
    code = subprocess.run(system.in_netns(record.netns, argv), check=False).returncode
    return 128 - code if code < 0 else code
