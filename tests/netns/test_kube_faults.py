"""Kubernetes mode with the API server gone: fail static, CNI answers, nothing lost.

A 2-node lab ``kf1`` on the Kubernetes datastore (``tabby lab up --datastore
kubernetes``), a Deployment of 4 pods and a NetworkPolicy (so every node's nft
table lists every web pod's address: an agent's table shows what its watch saw).

kube-apiserver is ended with SIGKILL by the PID the lab recorded and started
again with the command line read from ``/proc/<pid>/cmdline`` (same port, same
etcd, same log); the lab's record is updated so that ``lab down`` stops the new
process. The ``outage`` fixture keeps it down for ``DOWN`` seconds, and meanwhile
probes every pod pair, runs a CNI ADD of a new container and a CNI DEL of one
added before (tabby-cni driven directly through the node's conflist, as a runtime
would), then starts it again, retries the DEL and creates a pod. The tests check
what it recorded. ``test_churn_across_a_restart`` scales and deletes pods with
kubectl while the API server dies and returns, then waits until the lab, the
API and IPAM agree again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tabby.dataplane.pods import host_veth_name
from tabby.errors import ConfigError
from tabby.ipam import IPAM
from tabby.kube import binaries
from tabby.lab import system
from tabby.lab.state import LabState, Proc, StateFile, lab_dir, load, require
from tabby.model import WorkloadEndpoint
from tabby.store import open_store
from tabby.store.client import Client
from tests.waiting import wait_for, wait_seconds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "kf1"
NS = "kf"
NODES = ("node-1", "node-2")
TABBY = str(Path(sys.executable).parent / "tabby")
ROLE = "kube-apiserver"
DOWN = 20.0  # seconds the outage fixture keeps the API server down
CNI_BOUND = 30.0  # an ADD or DEL with the API server down must answer within this
NETWORK = "k8s-pod-network"

MANIFESTS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: web, image: registry.k8s.io/pause:3.10, ports: [{{containerPort: 8080}}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-from-web, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]
    ports: [{{port: 8080, protocol: TCP}}]
"""


def pod_manifest(name: str, node: str) -> str:
    """A lone web pod bound to ``node`` (no scheduler: after an API server restart
    kube-scheduler's own backoff takes 40-60 s before it binds pods again)."""
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [
            {"name": "web", "image": "registry.k8s.io/pause:3.10",
             "ports": [{"containerPort": 8080}]}]}})


# -- commands ------------------------------------------------------------------------

def run(argv: list[str], *, check: bool = True, stdin: str | None = None, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}"
                             f"{done.stderr}")
    return done


def tabby(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([TABBY, "--lab", LAB, *args], check=check, timeout=120)


def kubectl(*args: str, check: bool = True, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    kubeconfig = str(lab_dir(LAB) / "k8s" / "admin.kubeconfig")
    return run([binaries.program("kubectl"), "--kubeconfig", kubeconfig, "--request-timeout=5s",
                *args], check=check, stdin=stdin, timeout=30)


def api_pods() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
    return items


def probes() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(tabby("lab", "probe", "-o", "json").stdout)["probes"]
    return found


def client() -> Client:
    return Client(open_store(require(LAB).datastore))


def agent_tails(lines: int = 15) -> str:
    """Every node's agent log tail, for a failure message (the lab dir goes with the lab)."""
    state = load(LAB)
    return "".join(f"\n--- {n.name} agent.log:\n{system.tail(n.agent_log, lines)}"
                   for n in (state.nodes if state is not None else ()))


# -- the API server, by PID -----------------------------------------------------------

class ApiServer:
    """The lab's kube-apiserver, killed and started again by its recorded PID."""

    def __init__(self) -> None:
        self.state_file = StateFile(lab_dir(LAB))
        self.argv: list[str] = []

    def proc(self) -> Proc:
        return next(p for p in self.state_file.read().procs if p.role == ROLE)

    def kill(self) -> None:
        proc = self.proc()
        assert system.alive(proc), f"{ROLE} (pid {proc.pid}) is not running"
        raw = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        self.argv = [a.decode() for a in raw.split(b"\0") if a]
        os.kill(proc.pid, signal.SIGKILL)
        assert not system.wait_gone([proc], 10.0), f"{ROLE} survived SIGKILL"

    def start(self) -> float:
        """Start it again, record it, wait for /readyz; the seconds that took."""
        began = time.monotonic()
        new = system.spawn(self.argv, ROLE, lab_dir(LAB) / "k8s" / f"{ROLE}.log")
        self.state_file.mutate(lambda s: dataclasses.replace(
            s, procs=tuple(new if p.role == ROLE else p for p in s.procs)))
        port = next(a.split("=", 1)[1] for a in self.argv if a.startswith("--secure-port="))
        context = ssl.create_default_context(cafile=str(lab_dir(LAB) / "k8s" / "pki" / "ca.crt"))

        def ready() -> bool:
            assert system.alive(new), system.tail(lab_dir(LAB) / "k8s" / f"{ROLE}.log")
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=2,
                                            context=context) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False
        wait_for(f"{ROLE} to be ready again", ready, 60.0, 0.1)
        return time.monotonic() - began


# -- one node's view --------------------------------------------------------------------

def netns_of(node: str) -> str:
    return f"{LAB}-{node}"


def routes(node: str) -> list[str]:
    out = [run(["ip", f"-{v}", "-n", netns_of(node), "route", "show", "proto", "77"]).stdout
           for v in (4, 6)]
    return sorted(line for text in out for line in text.splitlines())


def nft_table(node: str) -> str:
    return run(["ip", "netns", "exec", netns_of(node), "nft", "list", "table", "inet",
                "tabby"]).stdout


def veths(node: str) -> set[str]:
    return {n for n in system.link_names(netns_of(node)) if n.startswith("tab")}


@dataclasses.dataclass(frozen=True)
class CNIAnswer:
    rc: int
    out: dict[str, Any]
    seconds: float


def cni(node: str, command: str, cid: str, netns: str, pod: str) -> CNIAnswer:
    """tabby-cni run as a runtime on ``node`` runs it: the node's conflist, in its netns."""
    record = require(LAB).node(node)
    conflist = json.loads(record.cni_conflist.read_text())
    config = {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"],
              "name": conflist["name"]}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": str(record.cni_bin_dir),
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod}",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    began = time.monotonic()
    done = run(["ip", "netns", "exec", record.netns, str(record.cni_bin_dir / "tabby-cni")],
               check=False, stdin=json.dumps(config), env=env, timeout=120)
    out = json.loads(done.stdout) if done.stdout.strip() else {}
    return CNIAnswer(done.returncode, out, time.monotonic() - began)


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    try:
        binaries.bin_dir()
    except ConfigError as exc:
        pytest.skip(str(exc))
    if load(LAB) is not None:
        tabby("lab", "down", "--name", LAB)
    run([TABBY, "lab", "up", "--name", LAB, "--nodes", str(len(NODES)), "--datastore",
         "kubernetes"], timeout=180)
    try:
        kubectl("apply", "-f", "-", stdin=MANIFESTS)
        wait_for("4 web pods Running", lambda: running_pods() == 4, 60.0)
        yield require(LAB)
    finally:
        run([TABBY, "lab", "down", "--name", LAB], check=False, timeout=120)


def running_pods() -> int:
    return sum(1 for p in api_pods() if p.get("status", {}).get("phase") == "Running"
               and p["status"].get("podIPs"))


@dataclasses.dataclass
class Outage:
    before: dict[str, tuple[list[str], str]]  # node -> (routes, nft table)
    after: dict[str, tuple[list[str], str]] = dataclasses.field(default_factory=dict)
    probe_runs: list[list[dict[str, Any]]] = dataclasses.field(default_factory=list)
    agents_alive: dict[str, bool] = dataclasses.field(default_factory=dict)
    log_lines: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    add: CNIAnswer | None = None
    add_leftovers: list[str] = dataclasses.field(default_factory=list)
    delete: CNIAnswer | None = None
    delete_leftovers: list[str] = dataclasses.field(default_factory=list)
    direct_veth: str = ""
    direct_ip: str = ""
    retried_delete: CNIAnswer | None = None
    restart_seconds: float = 0.0
    reconnect_seconds: float = 0.0
    reconnect_failure: str = ""
    handles_after: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    wep_pods_after: set[str] = dataclasses.field(default_factory=set)


@pytest.fixture(scope="module")
def outage(lab: LabState) -> Iterator[Outage]:
    api = ApiServer()
    direct, new = f"{LAB}x-direct", f"{LAB}x-new"
    cid_direct, cid_new = "f0" * 32, "f1" * 32
    system.add_netns([direct, new])
    try:
        added = cni("node-1", "ADD", cid_direct, f"/run/netns/{direct}", "kf-direct")
        assert added.rc == 0, added.out
        veth = host_veth_name(cid_direct, "eth0")
        wait_for("node-1's agent to program the new endpoint",
                 lambda: veth in nft_table("node-1"), 10.0)
        o = Outage(before=settled())
        o.direct_veth = veth
        o.direct_ip = added.out["ips"][0]["address"].split("/")[0]
        for _ in range(2):
            failed = [f"{p['from']} -> {p['to']}" for p in probes() if not p["connected"]]
            assert not failed, f"before the outage: {failed}{agent_tails()}"
        logs = {n.name: n.agent_log.stat().st_size for n in lab.nodes}
        answers: dict[str, CNIAnswer] = {}

        def call(key: str, *args: str) -> None:
            answers[key] = cni(*args)

        threads = [threading.Thread(target=call, args=("add", "node-1", "ADD", cid_new,
                                                        f"/run/netns/{new}", "kf-new")),
                   threading.Thread(target=call, args=("del", "node-1", "DEL", cid_direct,
                                                        f"/run/netns/{direct}", "kf-direct"))]
        api.kill()
        down_at = time.monotonic()
        try:
            for t in threads:
                t.start()
            while time.monotonic() - down_at < DOWN:
                o.probe_runs.append(probes())
            for t in threads:
                t.join(timeout=120)
            o.add, o.delete = answers.get("add"), answers.get("del")
            o.after = {n: (routes(n), nft_table(n)) for n in NODES}
            o.add_leftovers = leftovers("node-1", cid_new, new)
            o.delete_leftovers = leftovers("node-1", cid_direct, direct, o.direct_ip)
            o.agents_alive = {n.name: system.alive(n.agent) for n in lab.nodes if n.agent}
            for n in lab.nodes:
                with n.agent_log.open() as f:
                    f.seek(logs[n.name])
                    o.log_lines[n.name] = f.read().splitlines()
        finally:
            o.restart_seconds = api.start()
        kubectl("apply", "-f", "-", stdin=pod_manifest("after", "node-2"))
        try:  # recorded, not raised: the tests say what failed
            o.reconnect_seconds = wait_seconds("pod 'after' in every node's nft table",
                                               lambda: everywhere("after"), 60.0,
                                               detail=agent_tails)
        except AssertionError as exc:
            o.reconnect_seconds = -1.0
            o.reconnect_failure = str(exc)
        o.retried_delete = cni("node-1", "DEL", cid_direct, f"/run/netns/{direct}", "kf-direct")
        cni("node-1", "DEL", cid_new, f"/run/netns/{new}", "kf-new")
        ipam = IPAM(client())
        o.handles_after = {cid: tuple(map(str, ipam.addresses_of(f"{NETWORK}.{cid}.eth0")))
                           for cid in (cid_direct, cid_new)}
        o.wep_pods_after = {w.spec.pod for w in client().list(WorkloadEndpoint)}
        print(f"\nADD with the API server down failed after {o.add.seconds if o.add else -1:.1f}s;"
              f" DEL answered after {o.delete.seconds if o.delete else -1:.1f}s; API server"
              f" ready {o.restart_seconds:.1f}s after its start; a new pod in every node's"
              f" table {o.reconnect_seconds:.1f}s after that")
        yield o
    finally:
        api_up_or_start(api)
        system.delete_netns([direct, new])


def settled() -> dict[str, tuple[list[str], str]]:
    """Every node's routes and nft table, once two looks a second apart agree."""
    views: list[dict[str, tuple[list[str], str]]] = []

    def same() -> bool:
        views.append({n: (routes(n), nft_table(n)) for n in NODES})
        return len(views) > 1 and views[-1] == views[-2]
    wait_for("the dataplane to settle", same, 20.0, 1.0)
    return views[-1]


def api_up_or_start(api: ApiServer) -> None:
    """Leave the API server running for the next test, whatever happened."""
    if api.argv and not system.alive(api.proc()):
        api.start()


def everywhere(pod: str) -> bool:
    """The pod is Running and every node's nft table lists its address."""
    found = [p for p in api_pods() if p["metadata"]["name"] == pod]
    ips = [i["ip"] for i in (found[0].get("status", {}).get("podIPs") or [])] if found else []
    return bool(ips) and all(ips[0] in nft_table(n) for n in NODES)


def leftovers(node: str, cid: str, pod_netns: str, ip: str = "") -> list[str]:
    """What remains on ``node`` of container ``cid``: its veth, a route, the pod's eth0."""
    veth = host_veth_name(cid, "eth0")
    found = [f"veth {veth}"] if veth in veths(node) else []
    found += [f"route {r}" for r in routes(node) if veth in r or (ip and r.startswith(ip + " "))]
    if "eth0" in system.link_names(pod_netns):
        found.append(f"eth0 in {pod_netns}")
    return found


# -- the outage ----------------------------------------------------------------------------

def test_pods_keep_talking_while_the_api_server_is_down(outage: Outage) -> None:
    assert len(outage.probe_runs) >= 3, "too few probe rounds in the outage"
    for run_ in outage.probe_runs:
        failed = [f"{p['from']} -> {p['to']}" for p in run_ if not p["connected"]]
        assert len(run_) == 12 and not failed, failed


def test_routes_and_nft_table_are_left_as_they_were(outage: Outage) -> None:
    for node in NODES:
        before_routes, before_nft = outage.before[node]
        after_routes, after_nft = outage.after[node]
        # the DEL (node-1) took its own pod's veth and host route; nothing else moved
        expected = [r for r in before_routes if outage.direct_veth not in r]
        assert after_routes == expected, node
        # per-rule counters count the outage's probes; the rules and sets must not move
        assert _uncounted(after_nft) == _uncounted(before_nft), node


def _uncounted(table: str) -> str:
    return re.sub(r"packets \d+ bytes \d+", "packets - bytes -", table)


def test_agents_stay_up_and_retry_with_backoff(outage: Outage) -> None:
    assert outage.agents_alive == {n: True for n in NODES}
    for node, lines in outage.log_lines.items():
        assert not [x for x in lines if "Traceback" in x], "\n".join(lines[-30:])
        retries = [x for x in lines if "retrying in" in x]
        # the watch gives up after the store's 15 s; then one attempt per backoff, not a loop
        assert 1 <= len(retries) <= 6, (node, retries)


def test_add_fails_with_a_cni_error_and_leaves_nothing(outage: Outage) -> None:
    add = outage.add
    assert add is not None and add.rc != 0
    assert add.out.get("code") == 11, add.out  # try again later
    assert "datastore" in add.out["msg"] and "unavailable" in add.out["msg"], add.out
    assert "API server" in add.out.get("details", ""), add.out
    assert add.seconds < CNI_BOUND, add.seconds
    assert outage.add_leftovers == []
    assert outage.handles_after["f1" * 32] == ()


def test_del_unwires_at_once_and_a_retry_releases(outage: Outage) -> None:
    delete = outage.delete
    assert delete is not None and delete.seconds < CNI_BOUND, delete
    assert delete.rc == 0 or delete.out.get("code") == 11, delete.out
    assert outage.delete_leftovers == []
    retried = outage.retried_delete
    assert retried is not None and retried.rc == 0, retried
    assert outage.handles_after["f0" * 32] == ()
    assert "kf-direct" not in outage.wep_pods_after


def test_agents_reconnect_by_themselves(outage: Outage) -> None:
    # the fixture created pod 'after' once the API server was back: both agents saw it
    assert outage.reconnect_seconds >= 0, outage.reconnect_failure


# -- churn across a restart --------------------------------------------------------------

class Churn:
    """kubectl in a loop: scale the Deployment, create and delete lone pods, delete a web
    pod (its replacement comes up); failures while the API server is down are expected."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []  # the first few, for the report
        self.thread = threading.Thread(target=self.run, name="churn", daemon=True)

    def run(self) -> None:
        step = 0
        while not self.stop.is_set():
            step += 1
            commands: list[tuple[list[str], str | None]] = [
                (["scale", "-n", NS, "deployment/web", f"--replicas={(2, 6, 3, 5)[step % 4]}"],
                 None),
                (["apply", "-f", "-"], pod_manifest(f"solo-{step}", NODES[step % 2])),
                (["delete", "pod", "-n", NS, f"solo-{step - 2}", "--wait=false",
                  "--ignore-not-found"], None),
            ]
            for args, stdin in commands:
                done = kubectl(*args, check=False, stdin=stdin)
                if done.returncode == 0:
                    self.ok += 1
                else:
                    self.failed += 1
                    if len(self.errors) < 5:
                        self.errors.append(f"{args[0]}: {done.stderr.strip()[:200]}")

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def disagreements() -> list[str]:
    """Where the API, the lab's pods, the agents' endpoints and IPAM disagree ([] if none)."""
    pods = {p["metadata"]["name"]: p for p in api_pods()}
    state = require(LAB)
    records = {r.name: r for r in state.pods if r.namespace == NS}
    problems = []
    for name, pod in pods.items():
        status = pod.get("status", {})
        if pod["metadata"].get("deletionTimestamp") or status.get("phase") != "Running":
            problems.append(f"pod {name}: {status.get('phase')}, terminating or not Running")
        ips = sorted(i["ip"] for i in status.get("podIPs") or [])
        record = records.get(name)
        if record is None or record.uid != pod["metadata"]["uid"]:
            problems.append(f"pod {name}: not wired by the lab")
        elif not ips or ips != sorted(map(str, record.ips)):
            problems.append(f"pod {name}: API says {ips}, the lab wired {record.ips}")
    problems += [f"netns of {n}: no such pod in the API" for n in set(records) - set(pods)]
    wired = {r.netns for r in state.pods}
    stray = {n for n in system.netns_list() if n.startswith(f"{LAB}_")} - wired
    problems += [f"netns {n}: no pod record" for n in sorted(stray)]
    weps = {w.spec.pod: w for w in client().list(WorkloadEndpoint, NS)}
    problems += [f"endpoint of {n}: no such pod" for n in set(weps) - set(pods)]
    for name, wep in weps.items():
        record = records.get(name)
        if record is not None and wep.spec.container_id != record.container_id:
            problems.append(f"endpoint of {name}: container {wep.spec.container_id}")
    for node in NODES:
        want = {w.spec.interface_name for w in weps.values() if w.spec.node == node}
        problems += [f"{node}: veth {v} of no endpoint" for v in sorted(veths(node) - want)]
    if problems:
        return problems
    check = tabby("ipam", "check", check=False)
    if check.returncode != 0:
        return [f"ipam check: {check.stdout}{check.stderr}"]
    failed = [f"{p['from']} -> {p['to']}" for p in probes() if not p["connected"]]
    return [f"probe {f} failed" for f in failed]


def test_churn_across_a_restart(lab: LabState, outage: Outage) -> None:
    api = ApiServer()
    with Churn() as churn:
        wait_for("churn under way", lambda: churn.ok >= 9, 60.0)
        api.kill()
        try:
            down_at = time.monotonic()
            ok_before = churn.ok
            wait_for("4 s of outage with the agents up", lambda: time.monotonic() - down_at > 4
                     and all(system.alive(n.agent) for n in lab.nodes if n.agent), 10.0)
        finally:
            api.start()
        restarted = time.monotonic()
        wait_for("churn going again", lambda: churn.ok >= ok_before + 15, 60.0)
    kubectl("scale", "-n", NS, "deployment/web", "--replicas=4")
    last: list[str] = []

    def agreed() -> bool:
        nonlocal last
        # `kubectl scale` returns before kube-controller-manager acts on it (seconds, just
        # after the API server's restart): with the churn's last scale at 5 or 6 Running
        # web pods, everything else agreed before the surplus went (5 web pods seen)
        web = sum(1 for p in api_pods() if p["metadata"]["name"].startswith("web-"))
        last = [f"{web} web pods in the API, the Deployment wants 4"] if web != 4 else []
        last = last or disagreements()
        return not last
    try:
        wait_for("the API, the lab, the endpoints and IPAM to agree", agreed, 120.0, 0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n" + "\n".join(last) + agent_tails()) from None
    print(f"\nchurn: {churn.ok} kubectl calls went through, {churn.failed} failed; converged"
          f" {time.monotonic() - restarted:.1f}s after the API server's restart;"
          f" failures: {churn.errors}")
    assert sum(1 for p in api_pods() if p["metadata"]["name"].startswith("web-")) == 4
    assert all(system.alive(n.agent) for n in require(LAB).nodes if n.agent)
