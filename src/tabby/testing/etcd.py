"""A real etcd v3 cluster on loopback, for tests, the lab and benchmarks.

    with EtcdCluster(3) as cluster:            # started, healthy
        store = EtcdStore(cluster.endpoints)   # ["127.0.0.1:PORT", ...]
        cluster.kill(0)                        # SIGKILL member 0 (by its PID)
        cluster.restart(0)                     # same data dir: it rejoins

Every member gets its own data dir under one temporary directory and free
ports on ``host``. The cluster records the PID of each process it starts;
``stop()`` ends exactly those and removes the directory it made, nothing
else. Election timing defaults to 50 ms heartbeats and a 500 ms election
timeout (loopback is fast), so losing the leader costs well under a second.

``command_prefix`` runs each member under a wrapper that execs it (e.g.
``["ip", "netns", "exec", "NS"]``), so the recorded PID is still etcd's.

``tls=True`` runs the cluster as Calico's is run: a CA of its own
(``<dir>/pki``, made with ``tabby.store.pki``) signs each member's serving
and peer certificates (SANs: ``host``, 127.0.0.1, localhost) and one client
certificate; clients and peers speak https and must present a certificate
of that CA (``--client-cert-auth``, ``--peer-client-cert-auth``). ``url`` is
then ``etcds://...?ca=...&cert=...&key=...``, ``store_tls`` the same files
for ``EtcdStore(endpoints, tls=...)``, ``ca`` the CA (to sign more). The
plain mode (the default) is what the Kubernetes control plane runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tabby.errors import LabError
from tabby.store.etcdtls import EtcdTLS
from tabby.store.pki import CertificateAuthority, CertPair

__all__ = ["EtcdCluster", "EtcdMember", "end_process", "free_ports"]

_POLL = 0.05


@dataclass(frozen=True, slots=True)
class EtcdMember:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    tls: bool = False

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (a hint, not a lease)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


class EtcdCluster:
    def __init__(self, size: int = 3, *, binary: str = "etcd", host: str = "127.0.0.1",
                 base_dir: str | None = None, heartbeat_ms: int = 50, election_ms: int = 500,
                 start_timeout: float = 20.0, command_prefix: Sequence[str] = (),
                 tls: bool = False) -> None:
        if size < 1:
            raise LabError(f"etcd cluster: size must be at least 1, not {size}")
        self.size = size
        self.binary = binary
        self.host = host
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.start_timeout = start_timeout
        self.command_prefix = tuple(command_prefix)
        self.tls = tls
        self.ca: CertificateAuthority | None = None
        self.client_pair: CertPair | None = None  # the client certificate clients present
        self._member_pairs: dict[str, tuple[CertPair, CertPair]] = {}  # serving, peer
        self._context: ssl.SSLContext | None = None  # for our own health checks
        self._base_dir = base_dir
        self.dir: Path | None = None
        self.members: tuple[EtcdMember, ...] = ()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._token = ""

    # -- the public surface -------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        """The datastore URL for ``tabby.store.open_store``."""
        tls = self.store_tls
        if tls is None:
            return "etcd://" + ",".join(self.endpoints)
        return "etcds://" + ",".join(self.endpoints) + "?" + tls.query()

    @property
    def store_tls(self) -> EtcdTLS | None:
        """The CA and client certificate a store needs (None in plain mode)."""
        if self.ca is None or self.client_pair is None:
            return None
        return EtcdTLS(self.ca.ca_path, self.client_pair.cert, self.client_pair.key)

    @property
    def pids(self) -> dict[int, int]:
        """PID of each running member, by index."""
        return {i: p.pid for i, p in self._procs.items() if p.poll() is None}

    def start(self, attempts: int = 3) -> EtcdCluster:
        """Start every member and wait until all report healthy; LabError if not."""
        if self.members:
            raise LabError("etcd cluster: already started")
        if shutil.which(self.binary) is None:
            raise LabError(f"etcd cluster: {self.binary!r} not found (apt-get install etcd-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="tabby-etcd-", dir=self._base_dir))
        if self.tls:
            self._make_pki(self.dir / "pki")
        for attempt in range(1, attempts + 1):
            self._plan(attempt)
            try:
                for i in range(self.size):
                    self._spawn(i, state="new")
                self.wait_healthy(range(self.size), self.start_timeout)
                return self
            except LabError:
                self._end_processes()
                if attempt == attempts:
                    self.stop()
                    raise
        raise AssertionError("unreachable")

    def alive(self, index: int) -> bool:
        proc = self._procs.get(index)
        return proc is not None and proc.poll() is None

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (by its recorded PID) and reap it."""
        proc = self._procs.pop(index, None)
        if proc is None:
            raise LabError(f"etcd cluster: member {index} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, index: int, timeout: float | None = None) -> None:
        """Start a stopped member again on its old data dir and ports; wait until healthy."""
        if self.alive(index):
            raise LabError(f"etcd cluster: member {index} is still running")
        self._procs.pop(index, None)
        self._spawn(index, state="existing")
        self.wait_healthy([index], self.start_timeout if timeout is None else timeout)

    def wait_healthy(self, indexes: Sequence[int] | range | None = None,
                     timeout: float = 20.0) -> None:
        """Poll ``/health`` of the given members (default: all running) until each says true."""
        todo = set(self.pids if indexes is None else indexes)
        deadline = time.monotonic() + timeout
        while todo:
            for i in sorted(todo):
                proc = self._procs.get(i)
                if proc is None or proc.poll() is not None:
                    raise LabError(f"etcd cluster: member {i} exited\n{self.log_tail(i)}")
                if _healthy(self.members[i], self._context):
                    todo.discard(i)
            if todo and time.monotonic() > deadline:
                tails = "\n".join(self.log_tail(i) for i in sorted(todo))
                raise LabError(f"etcd cluster: members {sorted(todo)} not healthy after"
                               f" {timeout:.0f}s\n{tails}")
            if todo:
                time.sleep(_POLL)

    def log_tail(self, index: int, lines: int = 15) -> str:
        try:
            text = self.members[index].log_path.read_text(errors="replace")
        except (OSError, IndexError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """End exactly the processes this cluster started and remove its directory."""
        self._end_processes()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.members = ()
        self.ca, self.client_pair, self._context = None, None, None
        self._member_pairs = {}

    def __enter__(self) -> EtcdCluster:
        if not self.members:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------

    def _make_pki(self, directory: Path) -> None:
        hosts = list(dict.fromkeys([self.host, "127.0.0.1", "localhost"]))
        self.ca = CertificateAuthority.create(directory, "tabby-etcd-ca")
        # Both usages on both: a member dials its peers with its peer certificate,
        # and etcd's HTTP gateway dials its own gRPC port with the serving one.
        self._member_pairs = {
            f"e{i}": (self.ca.server(f"e{i}-server", hosts, client_auth=True),
                      self.ca.server(f"e{i}-peer", hosts, client_auth=True))
            for i in range(self.size)}
        self.client_pair = self.ca.client("client", "tabby")
        context = ssl.create_default_context(cafile=str(self.ca.ca_path))
        context.load_cert_chain(str(self.client_pair.cert), str(self.client_pair.key))
        self._context = context

    def _plan(self, attempt: int) -> None:
        assert self.dir is not None
        ports = free_ports(2 * self.size, self.host)
        self._token = f"tabby-{os.getpid()}-{int(time.time() * 1000)}-{attempt}"
        members = []
        for i in range(self.size):
            data = self.dir / f"a{attempt}" / f"e{i}"
            data.parent.mkdir(parents=True, exist_ok=True)
            members.append(EtcdMember(f"e{i}", self.host, ports[2 * i], ports[2 * i + 1],
                                      data, data.parent / f"e{i}.log", self.tls))
        self.members = tuple(members)

    def _command(self, member: EtcdMember, state: str) -> list[str]:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            *self.command_prefix, self.binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self._token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
            *self._tls_flags(member),
        ]

    def _tls_flags(self, member: EtcdMember) -> list[str]:
        if self.ca is None:
            return []
        serving, peer = self._member_pairs[member.name]
        ca = str(self.ca.ca_path)
        return ["--cert-file", str(serving.cert), "--key-file", str(serving.key),
                "--trusted-ca-file", ca, "--client-cert-auth",
                "--peer-cert-file", str(peer.cert), "--peer-key-file", str(peer.key),
                "--peer-trusted-ca-file", ca, "--peer-client-cert-auth"]

    def _spawn(self, index: int, state: str) -> None:
        member = self.members[index]
        with open(member.log_path, "ab") as log:
            self._procs[index] = subprocess.Popen(
                self._command(member, state), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def _end_processes(self) -> None:
        # One at a time: a leader told to stop hands leadership over first, and
        # waits seconds for it if the member it picked is stopping too.
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            end_process(proc)


def end_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                grace: float = 5.0) -> None:
    """Send ``sig`` to a child we started (by its PID), wait ``grace`` seconds for it to
    exit, SIGKILL it if it has not, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _healthy(member: EtcdMember, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(member.client_url + "/health", timeout=1.0,
                                    context=context) as resp:
            body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return str(body.get("health")) == "true"
