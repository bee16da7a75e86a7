"""Fakes for the CNI plumbing: a pod handler that keeps state in memory, a metrics sink.

``FakePodHandler`` implements :class:`tabby.agent.cniserver.PodHandler` the way
the real agent behaves at its edges (idempotent ADD per container, DEL of an
unknown container succeeds, CHECK compares prevResult with what it handed
out, STATUS honours ``ready``, GC drops what is not listed) without touching
any kernel. Addresses come from the lab's pools, one per family per pod.
Behaviour switches for tests: ``fail(command, exc)`` raises ``exc`` from that
command until cleared; ``gate`` (a ``threading.Barrier``) makes ADD wait for
that many concurrent ADDs, which proves the server runs them in parallel.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabby.cni import wire
from tabby.cni.protocol import CNIError, CNIRequest
from tabby.cni.results import Interface, IPConfig, PodResult, Route

GATEWAY_V4 = ipaddress.IPv4Address("169.254.1.1")
GATEWAY_V6 = ipaddress.IPv6Address("fe80::ecee:eeff:feee:eeee")
HOST_MAC = "ee:ee:ee:ee:ee:ee"


def host_veth_name(container_id: str, ifname: str) -> str:
    digest = hashlib.sha1(f"{container_id}.{ifname}".encode()).hexdigest()
    return f"tab{digest[:11]}"


@dataclass(frozen=True, slots=True)
class Call:
    command: str
    container_id: str = ""
    ifname: str = ""
    netns: str = ""


class FakePodHandler:
    """An in-memory pod handler (thread-safe)."""

    def __init__(self, *, ipv4: bool = True, ipv6: bool = True,
                 pool_v4: str = "198.19.0.0/24", pool_v6: str = "fd7a:bb1e:1::/120") -> None:
        self.ipv4, self.ipv6 = ipv4, ipv6
        self._hosts_v4 = ipaddress.IPv4Network(pool_v4).hosts()
        self._hosts_v6 = ipaddress.IPv6Network(pool_v6).hosts()
        self.ready = True
        self.gate: threading.Barrier | None = None
        self.calls: list[Call] = []
        self.gc_lists: list[list[tuple[str, str]]] = []
        self.pods: dict[tuple[str, str], PodResult] = {}
        self._failures: dict[str, Exception] = {}
        self._lock = threading.Lock()

    def fail(self, command: str, exc: Exception | None) -> None:
        """Raise ``exc`` from ``command`` (ADD, DEL, CHECK, STATUS, GC); None clears."""
        with self._lock:
            if exc is None:
                self._failures.pop(command, None)
            else:
                self._failures[command] = exc

    def _enter(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
            failure = self._failures.get(call.command)
        if failure is not None:
            raise failure

    def add(self, req: CNIRequest) -> PodResult:
        self._enter(Call("ADD", req.container_id, req.ifname, req.netns))
        if self.gate is not None:
            self.gate.wait()
        key = (req.container_id, req.ifname)
        with self._lock:
            if key not in self.pods:
                self.pods[key] = self._result(req)
            return self.pods[key]

    def _result(self, req: CNIRequest) -> PodResult:
        ips: list[IPConfig] = []
        routes: list[Route] = []
        if self.ipv4:
            ips.append(IPConfig(ipaddress.IPv4Interface(f"{next(self._hosts_v4)}/32"),
                                GATEWAY_V4, 1))
            routes.append(Route(ipaddress.IPv4Network("0.0.0.0/0"), GATEWAY_V4))
        if self.ipv6:
            ips.append(IPConfig(ipaddress.IPv6Interface(f"{next(self._hosts_v6)}/128"),
                                GATEWAY_V6, 1))
            routes.append(Route(ipaddress.IPv6Network("::/0"), GATEWAY_V6))
        interfaces = (Interface(host_veth_name(req.container_id, req.ifname), HOST_MAC),
                      Interface(req.ifname, "0a:58:c6:13:00:01", req.netns, mtu=1500))
        return PodResult(interfaces, tuple(ips), tuple(routes))

    def delete(self, req: CNIRequest) -> None:
        self._enter(Call("DEL", req.container_id, req.ifname, req.netns))
        with self._lock:
            self.pods.pop((req.container_id, req.ifname), None)

    def check(self, req: CNIRequest) -> None:
        self._enter(Call("CHECK", req.container_id, req.ifname, req.netns))
        with self._lock:
            held = self.pods.get((req.container_id, req.ifname))
        if held is None:
            raise CNIError(wire.ERR_UNKNOWN_CONTAINER, f"container {req.container_id} is unknown")
        prev = req.prev_pod_result()
        if prev is not None and set(prev.addresses()) != set(held.addresses()):
            raise CNIError(wire.ERR_INTERNAL, "prevResult addresses differ from the pod's",
                           f"expected {[str(a) for a in held.addresses()]}")

    def status(self) -> None:
        self._enter(Call("STATUS"))
        if not self.ready:
            raise CNIError(wire.ERR_NOT_AVAILABLE, "the fake agent is not ready")

    def gc(self, valid: list[tuple[str, str]]) -> None:
        self._enter(Call("GC"))
        keep = set(valid)
        with self._lock:
            self.gc_lists.append(list(valid))
            for key in [k for k in self.pods if k not in keep]:
                del self.pods[key]

    def commands(self) -> list[str]:
        with self._lock:
            return [c.command for c in self.calls]


@dataclass(frozen=True, slots=True)
class Observation:
    command: str
    seconds: float
    ok: bool


class RecordingMetrics:
    """A MetricsSink that keeps every observation."""

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self._lock = threading.Lock()

    def observe(self, command: str, seconds: float, ok: bool) -> None:
        with self._lock:
            self.observations.append(Observation(command, seconds, ok))

    def count(self, command: str, ok: bool | None = None) -> int:
        with self._lock:
            return sum(1 for o in self.observations
                       if o.command == command and (ok is None or o.ok == ok))


@dataclass(frozen=True, slots=True)
class PluginRun:
    """The raw outcome of executing a plugin once."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_plugin(executable: str | os.PathLike[str], env: Mapping[str, str],
               stdin: bytes | str | Mapping[str, Any] = b"", *,
               timeout: float = 30.0) -> PluginRun:
    """Execute a plugin with exactly ``env`` (plus PATH) and ``stdin``; no checks."""
    if isinstance(stdin, Mapping):
        stdin = json.dumps(stdin)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run([str(executable)], input=data, capture_output=True, timeout=timeout,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                          check=False)
    return PluginRun(proc.returncode, proc.stdout.decode(errors="replace"),
                     proc.stderr.decode(errors="replace"))


def console_script() -> Path | None:
    """The pip-generated ``tabby-cni`` beside the running interpreter, if any."""
    candidate = Path(sys.executable).parent / "tabby-cni"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def short_tempdir(prefix: str = "tc-") -> Path:
    """A fresh directory under /tmp with a short path (unix socket paths max 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
