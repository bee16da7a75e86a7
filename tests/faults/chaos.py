"""The kill -9 half of the fault suite: a lab, a fault by PID, pod churn, an echo flow.

    with lab("tcha", "--nodes", "2"):                # tabby lab up; lab down, checked, after
        churn = LabChurn("tcha")                     # or KubeChurn (kubectl, API server)
        flow = EchoFlow.start("tcha", *churn.flow_pods())
        with churn:                                  # threads creating and deleting pods
            fault.kill(); fault.recover()            # AgentFault, BirdFault, RestartFault
        churn.finish(); flow.stop()                  # every churned pod deleted; the figures

A fault signals the PID the lab recorded, never a name, and what it killed is
started again as the lab started it: an agent by ``start_agent`` (the lab's own
argv builders: ``tabby.lab.builder`` has no function starting one agent), an etcd
member or kube-apiserver with the command line read from ``/proc/<pid>/cmdline``,
BIRD by the agent's supervisor. What runs here is recorded in the lab's state, so
``lab down`` stops it even if a test dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from tabby.errors import LabError, NotFound, TabbyError
from tabby.kube import binaries
from tabby.lab import bgp, builder, datastore, system
from tabby.lab.pods import LabPods
from tabby.lab.state import LabState, PodRecord, Proc, StateFile, lab_dir, require
from tabby.model import Pod
from tests.netns.test_lab_cluster import assert_torn_down, ensure_gone, tabby
from tests.waiting import wait_for, wait_seconds

NODES = ("node-1", "node-2")
RESTART_TIMEOUT = 90.0


@contextlib.contextmanager
def lab(name: str, *flags: str) -> Iterator[LabState]:
    """``tabby lab up --name NAME FLAGS``; on the way out ``lab down``, checked torn down."""
    ensure_gone(name)
    try:
        tabby("lab", "up", "--name", name, *flags, lab=name)
        yield require(name)
    finally:
        state = StateFile(lab_dir(name)).read() if lab_dir(name).exists() else None
        tabby("lab", "down", "--name", name, check=False, lab=name)
        if state is not None:
            assert_torn_down(state)


def record(lab_name: str, proc: Proc) -> None:
    StateFile(lab_dir(lab_name)).mutate(
        lambda s: dataclasses.replace(s, procs=(*(p for p in s.procs if p.role != proc.role),
                                                proc)))


def cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def kill9(proc: Proc) -> None:
    assert system.alive(proc), f"{proc.role} (pid {proc.pid}) is not running"
    os.kill(proc.pid, signal.SIGKILL)
    assert not system.wait_gone([proc], 10.0), f"{proc.role} survived SIGKILL"


# -- faults ---------------------------------------------------------------------------

class Fault(Protocol):
    name: str

    def kill(self) -> None:
        """SIGKILL the process, by the PID the lab recorded."""

    def recover(self) -> None:
        """Have it started again; return once it serves (AssertionError if it does not)."""


def start_agent(lab_name: str, node_name: str, timeout: float = RESTART_TIMEOUT) -> Proc:
    """Start node ``node_name``'s agent as ``Lab._agents`` does (same argv builders),
    record it, and wait until it serves CNI STATUS."""
    state_file = StateFile(lab_dir(lab_name))
    state = state_file.read()
    node, t = state.node(node_name), state.topology
    url = datastore.node_url(state, node.name)
    if t.datastore == "kubernetes":
        argv = builder.manifest_argv(state, "DaemonSet", url, node)
    else:
        argv = [*builder.agent_argv(url, node, t.mtu), *bgp.agent_flags(t, node)]
    proc = system.spawn(system.in_netns(node.netns, argv), f"agent {node.name}", node.agent_log)
    node = dataclasses.replace(node, agent=proc)
    state = state_file.mutate(functools.partial(LabState.with_node, node=node))
    builder.wait_agents(dataclasses.replace(state, nodes=(node,)), timeout,
                        lambda *_: None)
    return proc


class AgentFault:
    def __init__(self, lab_name: str, node: str) -> None:
        self.lab, self.node, self.name = lab_name, node, f"agent of {node}"

    def kill(self) -> None:
        agent = require(self.lab).node(self.node).agent
        assert agent is not None, f"{self.node} has no agent"
        kill9(agent)

    def recover(self) -> None:
        start_agent(self.lab, self.node)


class BirdFault:
    """BIRD of one node; the agent's supervisor starts a new one (graceful restart)."""

    def __init__(self, lab_name: str, node: str) -> None:
        self.lab, self.node, self.name = lab_name, node, f"BIRD of {node}"
        self.killed: Proc | None = None

    def _bird(self) -> Proc | None:
        return next((p for p in bgp.birds(require(self.lab)) if p.role == f"bird {self.node}"),
                    None)

    def kill(self) -> None:
        self.killed = self._bird()
        assert self.killed is not None, f"no BIRD runs for {self.node}"
        kill9(self.killed)

    def recover(self) -> None:
        wait_for(f"a new BIRD on {self.node}", lambda: (
            (new := self._bird()) is not None and self.killed is not None
            and new.pid != self.killed.pid), RESTART_TIMEOUT)
        bgp.wait_sessions(require(self.lab), RESTART_TIMEOUT, lambda *_: None)


class RestartFault:
    """A lab-level process (an etcd member, kube-apiserver): killed by its recorded PID,
    started again with the command line it ran, re-recorded, waited for with ``ready``."""

    def __init__(self, lab_name: str, role: str, ready: Callable[[list[str]], bool]) -> None:
        self.lab, self.role, self.name, self.ready = lab_name, role, role, ready
        self.argv: list[str] = []

    def proc(self) -> Proc:
        return next(p for p in require(self.lab).procs if p.role == self.role)

    def kill(self) -> None:
        proc = self.proc()
        self.argv = cmdline(proc.pid)
        kill9(proc)

    def recover(self) -> None:
        log = lab_dir(self.lab) / f"restarted-{self.role.replace(' ', '-')}.log"
        new = system.spawn(self.argv, self.role, log)
        record(self.lab, new)

        def up() -> bool:
            assert system.alive(new), f"{self.role} exited:\n{system.tail(log)}"
            return self.ready(self.argv)
        wait_for(f"{self.role} to serve again", up, RESTART_TIMEOUT, 0.2)


# -- the long-lived flow ----------------------------------------------------------------

ECHO_PORT = 7007
ECHO_SERVER = r"""
import socketserver, sys
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
server = socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[1])), Echo)
print("ready", flush=True)
server.serve_forever()
"""
# Sends "<seq>\n" every argv[3] seconds over one connection until stdin closes, waits up to
# 5 s for what is outstanding, then prints {"sent", "echoed", "lost", "max_rtt_ms", "error"}.
ECHO_CLIENT = r"""
import json, socket, sys, threading, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
conn.settimeout(None)
out, rtts, error, lock, stop = {}, [], [], threading.Lock(), threading.Event()
def read():
    try:
        for line in conn.makefile("rb"):
            with lock:
                rtts.append(time.monotonic() - out.pop(int(line)))
        error.append("closed by the server")
    except (OSError, ValueError, KeyError) as e:
        error.append(repr(e))
threading.Thread(target=read, daemon=True).start()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("ready", flush=True)
seq = 0
while not stop.wait(float(sys.argv[3])) and not error:
    with lock:
        out[seq] = time.monotonic()
    try:
        conn.sendall(b"%d\n" % seq)
    except OSError as e:
        error.append(repr(e))
    seq += 1
end = time.monotonic() + 5
while out and not error and time.monotonic() < end:
    time.sleep(0.05)
with lock:
    print(json.dumps({"sent": seq, "echoed": len(rtts), "lost": len(out),
                      "max_rtt_ms": round(max(rtts, default=0) * 1000, 1),
                      "error": error[0] if error else ""}), flush=True)
"""


@dataclasses.dataclass
class EchoFlow:
    """A TCP connection from pod ``b`` to pod ``a``, one echo every ``every`` seconds."""

    lab: str
    server: Proc
    client: subprocess.Popen[str]

    @classmethod
    def start(cls, lab_name: str, a: PodRecord, b: PodRecord, every: float = 0.02) -> EchoFlow:
        log = lab_dir(lab_name) / "chaos-echo.log"
        server = system.spawn_ready(system.in_netns(a.netns, [
            sys.executable, "-I", "-S", "-c", ECHO_SERVER, str(ECHO_PORT)]),
            "chaos echo server", log)
        record(lab_name, server)
        client = subprocess.Popen(system.in_netns(b.netns, [
            sys.executable, "-I", "-S", "-c", ECHO_CLIENT, str(a.ip(4)),
            str(ECHO_PORT), str(every)]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        record(lab_name, Proc(client.pid, system.start_time(client.pid) or 0,
                              "chaos echo client"))
        assert client.stdout is not None
        line = system.read_line(client.stdout.fileno(), 10.0)
        assert line == "ready", f"echo client did not connect: {line!r}"
        return cls(lab_name, server, client)

    def stop(self) -> dict[str, Any]:
        """End the flow; its figures (an ``error`` if it broke)."""
        try:
            out, err = self.client.communicate(input="", timeout=30)
        finally:
            if self.client.poll() is None:
                self.client.kill()
                self.client.wait()
            system.stop([self.server])
        try:
            figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"sent": 0, "echoed": 0, "lost": 0, "max_rtt_ms": 0,
                    "error": f"no figures: {out!r} {err[-300:]!r}"}
        return figures


# -- pod churn ----------------------------------------------------------------------------

class Refused(Exception):
    """kubectl said no (expected while the API server is down)."""


class Churn:
    """``threads`` threads, each creating pods on alternate nodes and deleting its own
    older ones (it keeps ``keep``), until the ``with`` block ends; ``finish`` then deletes
    every churned pod. A refusal (a TabbyError of the lab, a kubectl error) is expected
    while a fault lasts; any other exception is a crash and counts as lost."""

    PREFIX = "churn-"

    def __init__(self, lab_name: str, threads: int = 4, keep: int = 2) -> None:
        self.lab, self.threads, self.keep = lab_name, threads, keep
        self.outcomes: list[tuple[str, str]] = []  # (pod, "ok" | "refused: ..." | "crashed: ...")
        self.placed: dict[str, str] = {}  # pod -> the node it was created on
        self.deletes: list[str] = []  # outcomes of deletes while churning
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._loop, args=(t,), daemon=True)
                         for t in range(threads)]

    # what a datastore mode does; each raises on a refusal
    def create(self, name: str, node: str, app: str = "churn") -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def remaining(self) -> list[str]:
        """Churned pods the lab or its datastore still has."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the driver holds (a store connection)."""

    def tried(self) -> int:
        return len(self.outcomes)

    def count(self, kind: str) -> int:
        return sum(1 for _, o in self.outcomes if o.startswith(kind))

    def flow_pods(self) -> tuple[PodRecord, PodRecord]:
        """Pods ``flow-a`` on node-1 and ``flow-b`` on node-2, wired; never churned."""
        for name, node in (("flow-a", NODES[0]), ("flow-b", NODES[1])):
            self.create(name, node, "flow")
        found: list[PodRecord] = []

        def wired() -> bool:
            state = require(self.lab)
            found[:] = [r for n in ("flow-a", "flow-b") if (r := state.pod("default", n))
                        and r.ips]
            return len(found) == 2
        wait_for("the flow pods wired", wired, 120.0, 0.2)
        return found[0], found[1]

    def _loop(self, t: int) -> None:
        live: list[str] = []
        i = 0
        while not self._stop.is_set():
            name, i = f"{self.PREFIX}{t}-{i}", i + 1
            self.placed[name] = NODES[(t + i) % 2]
            self.outcomes.append((name, attempt(self.create, name, self.placed[name])))
            live.append(name)
            if len(live) > self.keep:
                self.deletes.append(attempt(self.delete, live.pop(0)))

    def __enter__(self) -> Churn:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=300)

    def finish(self, timeout: float = 180.0) -> float:
        """Delete every churned pod (retrying refusals); the seconds that took."""
        def done() -> bool:
            for name in self.remaining():
                attempt(self.delete, name)
            return not self.remaining()
        return wait_seconds("every churned pod deleted", done, timeout, 0.5)


def attempt(fn: Callable[..., None], *args: str) -> str:
    try:
        fn(*args)
    except (TabbyError, Refused) as exc:
        return f"refused: {exc}"[:300]
    except Exception as exc:  # a crash of what the lab drives is a finding
        return f"crashed: {type(exc).__name__}: {exc}"[:300]
    return "ok"


def pod(name: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [
                {"name": "main", "image": "registry.k8s.io/pause:3.10",
                 "ports": [{"containerPort": 80}]}]}}


class LabChurn(Churn):
    """Pods through the lab's pod driver (``tabby apply``'s path: sqlite and etcd labs)."""

    def __init__(self, lab_name: str, threads: int = 4, keep: int = 2) -> None:
        super().__init__(lab_name, threads, keep)
        self.pods = LabPods.open(lab_name)

    def create(self, name: str, node: str, app: str = "churn") -> None:
        self.pods.apply_pod(Pod.from_manifest(pod(name, node, {"app": app})))

    def delete(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.pods.delete_pod("default", name)

    def remaining(self) -> list[str]:
        names = {r.name for r in require(self.lab).pods}
        names |= {p.meta.name for p in self.pods.client.list(Pod, "default")}
        return sorted(n for n in names if n.startswith(self.PREFIX))

    def close(self) -> None:
        self.pods.close()


class KubeChurn(Churn):
    """Pods through the lab's real API server with kubectl; its kubelet stand-ins wire them."""

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        kubeconfig = str(lab_dir(self.lab) / "k8s" / "admin.kubeconfig")
        try:
            return system.run([binaries.program("kubectl"), "--kubeconfig", kubeconfig,
                               "--request-timeout=5s", *args], stdin=stdin, timeout=60)
        except LabError as exc:
            raise Refused(str(exc)[-300:]) from exc

    def create(self, name: str, node: str, app: str = "churn") -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(pod(name, node, {"app": app})))

    def delete(self, name: str) -> None:
        self.kubectl("delete", "pod", name, "--wait=false", "--ignore-not-found")

    def remaining(self) -> list[str]:
        names = {r.name for r in require(self.lab).pods}
        with contextlib.suppress(Refused):
            listed = json.loads(self.kubectl("get", "pods", "-o", "json"))["items"]
            names |= {p["metadata"]["name"] for p in listed}
        return sorted(n for n in names if n.startswith(self.PREFIX))
