"""A real Kubernetes control plane on loopback: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, with TLS and RBAC on.

    with ControlPlane(directory, service_ranges=["198.18.128.0/20"]) as cp:
        cp.admin_kubeconfig                 # Path: system:masters client cert
        cp.kubeconfig("tabby-node-1", "system:node:node-1", ["system:nodes"])
        cp.stop_apiserver(); cp.start_apiserver()   # fault tests

Everything listens on 127.0.0.1 only (free ports picked at start), so a lab
reaches it from its node namespaces through the datastore relay. Every
process is started in a session of its own and recorded by PID
(``pids``); ``stop()`` ends exactly those, nothing else. The programs are the
ones ``scripts/build-kubernetes`` built (``tabby.kube.binaries``).

What runs is what a kubeadm cluster runs, minus kubelets: the API server with
``--authorization-mode=Node,RBAC`` and the NodeRestriction admission plugin,
service-account tokens signed by the control plane's key, the controller
manager with one service account per controller, and the scheduler. Leader
election is off (one of each).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tabby.errors import LabError
from tabby.kube import binaries
from tabby.kube.pki import PKI, SERVICE_NAMES, write_kubeconfig
from tabby.testing.etcd import EtcdCluster, end_process, free_ports

__all__ = ["ControlPlane"]

HOST = "127.0.0.1"
START_TIMEOUT = 90.0
_POLL = 0.1


class ControlPlane:
    def __init__(self, directory: Path, *, service_ranges: Sequence[str],
                 node_port_range: str = "30000-32767", etcd_url: str = "",
                 api_port: int = 0, start_timeout: float = START_TIMEOUT,
                 extra_sans: Sequence[str] = ()) -> None:
        self.dir = directory
        self.service_ranges = list(service_ranges)
        self.node_port_range = node_port_range
        self.start_timeout = start_timeout
        self.extra_sans = list(extra_sans)
        self._etcd_url = etcd_url
        self._etcd: EtcdCluster | None = None
        self.api_port = api_port
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pki: PKI | None = None

    # -- addresses and identities ---------------------------------------------

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.api_port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def etcd_url(self) -> str:
        """etcd's client URL (http://127.0.0.1:PORT)."""
        return self._etcd_url

    @property
    def etcd(self) -> EtcdCluster | None:
        return self._etcd

    @property
    def pids(self) -> dict[str, int]:
        """PID of each running program, by role (``kube-apiserver``, ``etcd e0``, ...)."""
        out = {role: p.pid for role, p in self._procs.items() if p.poll() is None}
        if self._etcd is not None:
            for index, pid in self._etcd.pids.items():
                out[f"etcd {self._etcd.members[index].name}"] = pid
        return out

    def kubeconfig(self, name: str, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig with a client certificate for ``user`` in ``groups``."""
        assert self.pki is not None, "start() first"
        pair = self.pki.client(name, user, groups)
        return write_kubeconfig(self.dir / f"{name}.kubeconfig", self.server, self.pki.ca_path,
                                pair, user=user)

    def log_path(self, role: str) -> Path:
        return self.dir / f"{role}.log"

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> ControlPlane:
        """Certificates, etcd (unless given), then the three programs; each waited for."""
        bin_dir = binaries.bin_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        try:
            self.pki = PKI.create(self.dir / "pki")
            if not self._etcd_url:
                self._etcd = EtcdCluster(1, base_dir=str(self.dir)).start()
                self._etcd_url = self._etcd.members[0].client_url
            if not self.api_port:
                self.api_port = free_ports(1)[0]
            first_ips = [_first_ip(r) for r in self.service_ranges]
            self._serving = self.pki.server("apiserver", [HOST, "::1", *first_ips,
                                                          *self.extra_sans, *SERVICE_NAMES])
            self._apiserver_client = self.pki.client(
                "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"])
            self.kubeconfig("admin", "kubernetes-admin", ["system:masters"])
            self._bin = bin_dir
            self.start_apiserver()
            cm = self.kubeconfig("controller-manager", "system:kube-controller-manager")
            sched = self.kubeconfig("scheduler", "system:kube-scheduler")
            self._spawn("kube-controller-manager", self._controller_manager_argv(cm))
            self._spawn("kube-scheduler", self._scheduler_argv(sched))
            self._wait_healthy("kube-controller-manager", self._cm_port)
            self._wait_healthy("kube-scheduler", self._sched_port)
            return self
        except BaseException:
            self.stop()
            raise

    def start_apiserver(self) -> None:
        """Start (or start again, on its old port and data) the API server; wait until ready."""
        if "kube-apiserver" in self._procs and self._procs["kube-apiserver"].poll() is None:
            raise LabError("kube-apiserver is already running")
        self._spawn("kube-apiserver", self._apiserver_argv())
        self._wait_ready()

    def stop_apiserver(self, sig: int = signal.SIGKILL) -> None:
        """End the API server (SIGKILL by default: a crash, not a shutdown)."""
        self._end("kube-apiserver", sig)

    def stop(self) -> None:
        """End exactly the processes this control plane started (scheduler first)."""
        for role in ("kube-scheduler", "kube-controller-manager", "kube-apiserver"):
            self._end(role, signal.SIGTERM)
        if self._etcd is not None:
            self._etcd.stop()
            self._etcd = None

    def __enter__(self) -> ControlPlane:
        if not self._procs:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- command lines -----------------------------------------------------------

    def _apiserver_argv(self) -> list[str]:
        assert self.pki is not None
        pki = self.pki
        return [
            str(self._bin / "kube-apiserver"),
            f"--etcd-servers={self._etcd_url}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={self.api_port}",
            f"--service-cluster-ip-range={','.join(self.service_ranges)}",
            f"--service-node-port-range={self.node_port_range}",
            f"--tls-cert-file={self._serving.cert}",
            f"--tls-private-key-file={self._serving.key}",
            f"--client-ca-file={pki.ca_path}",
            f"--kubelet-client-certificate={self._apiserver_client.cert}",
            f"--kubelet-client-key={self._apiserver_client.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub_path}",
            f"--service-account-signing-key-file={pki.sa_key_path}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            "--anonymous-auth=true",  # /readyz and /livez for probes, as kubeadm leaves it
            "--profiling=false",
            "--endpoint-reconciler-type=none",  # no 'kubernetes' endpoints to a loopback address
            "--enable-priority-and-fairness=false",
            "--v=1",
        ]

    def _controller_manager_argv(self, kubeconfig: Path) -> list[str]:
        assert self.pki is not None
        self._cm_port = free_ports(1)[0]
        return [
            str(self._bin / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={self._cm_port}",
            f"--service-account-private-key-file={self.pki.sa_key_path}",
            f"--root-ca-file={self.pki.ca_path}",
            f"--cluster-signing-cert-file={self.pki.ca_path}",
            f"--cluster-signing-key-file={self.pki.dir / 'ca.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={','.join(self.service_ranges)}",
            "--allocate-node-cidrs=false",  # tabby's IPAM hands out pod addresses, not podCIDRs
            "--leader-elect=false",
            "--v=1",
        ]

    def _scheduler_argv(self, kubeconfig: Path) -> list[str]:
        self._sched_port = free_ports(1)[0]
        return [
            str(self._bin / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={self._sched_port}",
            "--leader-elect=false",
            "--v=1",
        ]

    # -- processes ---------------------------------------------------------------

    def _spawn(self, role: str, argv: list[str]) -> None:
        with open(self.log_path(role), "ab") as log:
            self._procs[role] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT,
                                                 start_new_session=True)

    def _end(self, role: str, sig: int) -> None:
        proc = self._procs.pop(role, None)
        if proc is not None:
            end_process(proc, sig, grace=10.0)

    def _check_alive(self, role: str) -> None:
        proc = self._procs.get(role)
        if proc is None or proc.poll() is not None:
            raise LabError(f"{role} exited at start:\n{self.log_tail(role)}")

    def log_tail(self, role: str, lines: int = 20) -> str:
        try:
            text = self.log_path(role).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_path))
        self._poll("kube-apiserver", f"{self.server}/readyz", context)

    def _wait_healthy(self, role: str, port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # self-signed serving certs of their own
        self._poll(role, f"https://{HOST}:{port}/healthz", context)

    def _poll(self, role: str, url: str, context: ssl.SSLContext) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while True:
            self._check_alive(role)
            try:
                with urllib.request.urlopen(url, timeout=2.0, context=context) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise LabError(f"{role} not ready after {self.start_timeout:.0f}s ({last}):\n"
                               f"{self.log_tail(role)}")
            time.sleep(_POLL)


def _first_ip(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))
