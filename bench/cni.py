"""CNI ADD and DEL latency: tabby-cni beside the reference bridge + host-local.

tabby: a one-node lab (``tabby.lab``: the node's namespace, its SQLite
datastore, its agent), and the node's own ``tabby-cni`` launcher (written by
``tabby.cni.install.write_plugin``: it execs the real interpreter) with the
first plugin of the node's conflist as its config. The Pod objects are in the
store before ADD, as in a cluster. The peer: ``/usr/lib/cni/bridge`` with
``host-local`` IPAM (dataDir in a temp dir, 198.19.0.0/16), in a node
namespace of its own. Both are executed from a thread standing in their
node's namespace (setns), with the CNI_ARGS a kubelet sends, one fresh pod
namespace per pod (``tb-pt-<i>``, ``tb-pr-<i>``).

Rounds: a warm-up ADD+DEL each; N pods one at a time, tabby and peer
interleaved call by call (ADD all, then DEL all); then N pods from 8 workers
(peer first, then tabby; ADD, then DEL); last, VERSION calls (start-up
alone, beside the bare interpreter's start-up: a script with the launcher's
``#!`` line that does nothing, the floor under any Python plugin). Each round
(and each DEL half) starts once the agent has been idle for a second (no
reconcile pass, read from its /metrics): the Pod writes that prepare a round
wake it. After each half the nodes' interfaces are counted (N more veths after
ADD, as many as before after DEL). tabby's DEL answers before the kernel has
deleted the pair (the agent's reaper does that in the background, many pairs
per request), so after the DELs the count is polled, and how long the last
pairs took to go is reported. Everything made is removed at the end, also
after a failure: pod namespaces, the peer's node, the lab (agent, datastore,
namespaces), the temp dir.

Goals (issue 15): ADD p50 within 1.25x of the peer (ratio 0.8), p95 within
1.5x (0.67), DEL p50 and the 8-concurrent wall times no slower (1.0).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench import netns
from bench.cnidrive import Target, concurrent, sequential
from bench.netns import BenchError
from bench.report import Row
from bench.session import Session
from tabby.lab.state import NodeRecord

SECTION = "CNI ADD and DEL latency"
LAB = "tb-cni"
PEER_NODE = "tb-ref-node"
PEER_BRIDGE = "tbbr0"
TABBY_PODS, PEER_PODS = "tb-pt-", "tb-pr-"
PEER_NAME = "bridge + host-local"
REFERENCE = Path("/usr/lib/cni")
WORKERS = 8
NAMESPACE = "default"
AGENT_METRICS = "http://127.0.0.1:9099/metrics"  # in the node's namespace (tabby.lab.builder)
SETTLE_QUIET, SETTLE_TIMEOUT = 1.0, 30.0
REAP_TIMEOUT = 30.0  # seconds the retired pairs may take to be deleted after the DELs
GOAL_P50, GOAL_P95, GOAL_SAME = 0.8, 1 / 1.5, 1.0


@dataclass(slots=True)
class Fleet:
    """Pod namespaces ``<prefix><i>`` and the container ids wired into them, per round."""

    prefix: str
    count: int
    netns_of: dict[str, str] = field(default_factory=dict)  # container id -> namespace
    args_of: dict[str, str] = field(default_factory=dict)  # container id -> CNI_ARGS

    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]

    def round(self, pods: list[tuple[str, str]]) -> list[str]:
        """Fresh container ids for (pod name, uid) in slot order."""
        cids = []
        for slot, (pod, uid) in zip(self.names(), pods, strict=True):
            cid = secrets.token_hex(32)
            self.netns_of[cid] = slot
            self.args_of[cid] = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};"
                                 f"K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid};"
                                 f"K8S_POD_UID={uid}")
            cids.append(cid)
        return cids

    def pod_netns(self, cid: str) -> str:
        return str(netns.NETNS_DIR / self.netns_of[cid])

    def cni_args(self, cid: str) -> str:
        return self.args_of[cid]


def tabby_target(node: NodeRecord, fleet: Fleet) -> Target:
    conflist = json.loads(node.cni_conflist.read_text())
    plugin = conflist["plugins"][0]
    config = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
    binary = node.cni_bin_dir / plugin["type"]
    return Target("tabby-cni", str(binary), config, str(node.cni_bin_dir),
                  runtime_netns=node.netns, pod_netns=fleet.pod_netns, cni_args=fleet.cni_args)


def peer_target(tmp: Path, fleet: Fleet) -> Target:
    config = {"cniVersion": "1.0.0", "name": "tb-bridge", "type": "bridge",
              "bridge": PEER_BRIDGE, "isGateway": True, "ipMasq": False, "mtu": 1500,
              "ipam": {"type": "host-local", "dataDir": str(tmp / "host-local"),
                       "ranges": [[{"subnet": "198.19.0.0/16"}]],
                       "routes": [{"dst": "0.0.0.0/0"}]}}
    return Target(PEER_NAME, str(REFERENCE / "bridge"), config, str(REFERENCE),
                  runtime_netns=PEER_NODE, pod_netns=fleet.pod_netns, cni_args=fleet.cni_args)


class Bench:
    def __init__(self, session: Session, count: int, tmp: Path) -> None:
        self.session = session
        self.count = count
        self.tmp = tmp
        self.tabby_pods = Fleet(TABBY_PODS, count)
        self.peer_pods = Fleet(PEER_PODS, count)
        self.datastore = ""
        self.node: NodeRecord | None = None

    # -- setting up and tearing down ----------------------------------------------

    def cleanup(self) -> None:
        """Remove whatever this benchmark (or a killed earlier run) left."""
        from tabby.lab import builder
        from tabby.lab.state import load

        netns.sweep([TABBY_PODS, PEER_PODS, PEER_NODE])
        if load(LAB) is not None:
            builder.down(LAB)

    def setup(self) -> tuple[Target, Target]:
        from tabby.lab import builder
        from tabby.lab.topology import plan

        self.cleanup()
        state = builder.Lab(plan(LAB, nodes=1)).up()
        self.datastore = state.datastore
        self.node = state.nodes[0]
        netns.add([PEER_NODE, *self.tabby_pods.names(), *self.peer_pods.names()])
        netns.sysctl(PEER_NODE, {"net.ipv4.ip_forward": "1"})
        netns.ip_batch(["link set lo up"], PEER_NODE)
        return tabby_target(self.node, self.tabby_pods), peer_target(self.tmp, self.peer_pods)

    def new_round(self, tag: str) -> tuple[list[str], list[str]]:
        """Pods ``bench-<tag>-<i>`` written to tabby's store; container ids of both fleets."""
        from tabby.model import Pod
        from tabby.store import open_store
        from tabby.store.client import Client

        client = Client(open_store(self.datastore))
        written = []
        try:
            for i in range(self.count):
                name = f"bench-{tag}-{i}"
                pod = Pod.from_manifest({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": NAMESPACE,
                                 "labels": {"app": "bench"}},
                    "spec": {"nodeName": self.lab_node().name,
                             "containers": [{"name": "main", "image": "busybox"}]}})
                stored, _ = client.apply(pod)
                written.append((name, stored.meta.uid))
        finally:
            client.store.close()
        peer = [(name, str(uuid.uuid4())) for name, _ in written]
        self.settle()
        return self.tabby_pods.round(written), self.peer_pods.round(peer)

    def lab_node(self) -> NodeRecord:
        if self.node is None:
            raise BenchError("the lab is not up")
        return self.node

    def veths(self) -> tuple[int, int]:
        """Pod veths on tabby's node and on the peer's node."""
        tabby = [n for n in link_names(self.lab_node().netns) if n.startswith("tab")]
        peer = [n for n in link_names(PEER_NODE) if n.startswith("veth")]
        return len(tabby), len(peer)

    def expect_veths(self, want: tuple[int, int], when: str) -> None:
        got = self.veths()
        if got != want:
            raise BenchError(f"after {when}: {got[0]} tabby and {got[1]} bridge veths on the"
                             f" nodes, expected {want[0]} and {want[1]}")

    def await_veths(self, want: tuple[int, int], when: str) -> float:
        """Poll until the nodes hold ``want`` veths (tabby deletes retired pairs in the
        background); seconds it took."""
        start = time.monotonic()
        try:
            netns.wait_for(f"the veth count after {when}", lambda: self.veths() == want,
                           REAP_TIMEOUT)
        except BenchError:
            self.expect_veths(want, when)  # names the counts
            raise
        return time.monotonic() - start

    def agent_metrics(self) -> dict[str, float]:
        """The node agent's /metrics: ``name{labels}`` -> value."""
        pages: list[str] = []
        errors: list[Exception] = []

        def fetch() -> None:
            try:
                with netns.entered(self.lab_node().netns), \
                        urllib.request.urlopen(AGENT_METRICS, timeout=5.0) as resp:
                    pages.append(resp.read().decode())
            except Exception as exc:  # raised below, in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=fetch)
        thread.start()
        thread.join()
        if not pages:
            raise BenchError(f"the agent's metrics ({AGENT_METRICS} in"
                             f" {self.lab_node().netns}) did not answer: {errors}")
        series = (line.rsplit(" ", 1) for line in pages[0].splitlines()
                  if line and not line.startswith("#"))
        return {name: float(value) for name, value in series}

    def agent_passes(self) -> int:
        """Reconcile passes the node's agent has made."""
        return int(sum(v for k, v in self.agent_metrics().items()
                       if k.startswith("tabby_syncs_total")))

    def agent_time(self, command: str) -> tuple[float, float]:
        """(seconds, requests) the agent has spent on CNI ``command`` so far."""
        m = self.agent_metrics()
        key = f'tabby_cni_request_duration_seconds_{{}}{{{{command="{command}"}}}}'
        return m.get(key.format("sum"), 0.0), m.get(key.format("count"), 0.0)

    def settle(self) -> None:
        """Wait until the agent has made no pass for a while (the Pod writes of a new
        round each wake it), so a round starts with an idle agent."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        last, since = self.agent_passes(), time.monotonic()
        while time.monotonic() - since < SETTLE_QUIET:
            if time.monotonic() > deadline:
                raise BenchError(f"the agent kept reconciling for {SETTLE_TIMEOUT:g}s")
            time.sleep(0.1)
            now = self.agent_passes()
            if now != last:
                last, since = now, time.monotonic()

    # -- rounds ---------------------------------------------------------------------

    def warm_up(self, tabby: Target, peer: Target) -> None:
        t_ids, p_ids = self.new_round("warm")
        sequential([tabby, peer], "ADD", [t_ids[:1], p_ids[:1]])
        sequential([tabby, peer], "DEL", [t_ids[:1], p_ids[:1]])

    def one_at_a_time(self, tabby: Target, peer: Target) -> None:
        t_ids, p_ids = self.new_round("seq")
        self.session.log(f"{self.count} pods one at a time (ADD, then DEL), interleaved")
        before = self.veths()
        agent_before = self.agent_time("ADD")
        add = sequential([tabby, peer], "ADD", [t_ids, p_ids])
        agent_add = _mean_since(agent_before, self.agent_time("ADD"))
        self.expect_veths((before[0] + self.count, before[1] + self.count), "sequential ADDs")
        self.settle()
        agent_before = self.agent_time("DEL")
        delete = sequential([tabby, peer], "DEL", [t_ids, p_ids])
        agent_del = _mean_since(agent_before, self.agent_time("DEL"))
        drained = self.await_veths(before, "sequential DELs")
        note = f"{self.count} pods one at a time, tabby and peer interleaved call by call"
        self.session.add(
            _ms("ADD p50", add[0].p50_ms, add[1].p50_ms,
                f"{note}; of tabby's, the agent's own mean {agent_add:.1f} ms", goal=GOAL_P50),
            _ms("ADD p95", add[0].p95_ms, add[1].p95_ms, note, goal=GOAL_P95),
            _ms("DEL p50", delete[0].p50_ms, delete[1].p50_ms,
                f"{note}; of tabby's, the agent's own mean {agent_del:.1f} ms; the last"
                f" pairs gone {drained * 1000:.0f} ms after the last DEL", goal=GOAL_SAME),
            _ms("DEL p95", delete[0].p95_ms, delete[1].p95_ms, note, goal=GOAL_P95))

    def start_up(self, tabby: Target, peer: Target) -> None:
        """What an exec costs before any work: VERSION, which each plugin answers itself,
        and the interpreter alone (a script with tabby-cni's #! line that does nothing)."""
        ids = [f"version-{i}" for i in range(self.count // 2)]
        bare = [dataclasses.replace(t, pod_netns=_no_pod, cni_args=_no_pod) for t in (tabby, peer)]
        floor = dataclasses.replace(bare[0], name="interpreter",
                                    binary=str(self.interpreter_floor(tabby)))
        runs = sequential([*bare, floor], "VERSION", [ids, ids, ids])
        self.session.add(
            Row(SECTION, "exec start-up (VERSION) p50", runs[0].p50_ms, "bridge",
                runs[1].p50_ms, "ms", False,
                f"{len(ids)} calls, interleaved; each plugin answers VERSION itself"
                " (tabby-cni without the agent): the floor under every call"),
            Row(SECTION, "interpreter start-up p50 (python3 -I -S, nothing run)",
                runs[2].p50_ms, "bridge", runs[1].p50_ms, "ms", False,
                "the floor under any Python plugin, measured with the two above"))

    def interpreter_floor(self, tabby: Target) -> Path:
        """A script with tabby-cni's launcher's first line (its interpreter and flags)
        that does nothing."""
        shebang = Path(tabby.binary).read_text().splitlines()[0]
        script = self.tmp / "python-floor"
        script.write_text(f"{shebang}\n")
        script.chmod(0o755)
        return script

    def all_at_once(self, tabby: Target, peer: Target) -> None:
        t_ids, p_ids = self.new_round("conc")
        self.session.log(f"{self.count} pods from {WORKERS} workers (ADD, then DEL)")
        before = self.veths()
        peer_add = concurrent(peer, "ADD", p_ids, WORKERS)
        passes = self.agent_passes()
        tabby_add = concurrent(tabby, "ADD", t_ids, WORKERS)
        passes = self.agent_passes() - passes
        self.expect_veths((before[0] + self.count, before[1] + self.count), "concurrent ADDs")
        self.settle()
        peer_del = concurrent(peer, "DEL", p_ids, WORKERS)
        tabby_del = concurrent(tabby, "DEL", t_ids, WORKERS)
        drained = self.await_veths(before, "concurrent DELs")
        for verb, t, p in (("ADD", tabby_add, peer_add), ("DEL", tabby_del, peer_del)):
            reaped = (f"; the last pairs gone {drained * 1000:.0f} ms after the last DEL"
                      if verb == "DEL" else f"; the agent made {passes} passes for them")
            self.session.add(Row(
                SECTION, f"{WORKERS} concurrent: wall time for {self.count} {verb}s", t.wall,
                PEER_NAME, p.wall, "s", False,
                f"per call p50 {t.p50_ms:.0f} ms vs {p.p50_ms:.0f} ms{reaped}", GOAL_SAME))


def _no_pod(container_id: str) -> str:
    return ""


def _mean_since(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Mean milliseconds per request between two (seconds, requests) readings."""
    count = after[1] - before[1]
    return (after[0] - before[0]) / count * 1000 if count else 0.0


def _ms(what: str, tabby: float, peer: float, note: str, goal: float | None = None) -> Row:
    return Row(SECTION, what, tabby, PEER_NAME, peer, "ms", False, note, goal)


def link_names(ns: str) -> list[str]:
    out = netns.run(["ip", "-n", ns, "-o", "link", "show"])
    return [line.split(": ", 2)[1].split("@")[0] for line in out.splitlines() if ": " in line]


def run(session: Session) -> None:
    count = 20 if session.quick else 100
    for plugin in ("bridge", "host-local"):
        if not (REFERENCE / plugin).is_file():
            raise BenchError(f"{REFERENCE / plugin} is missing (containernetworking-plugins)")
    tmp = Path(tempfile.mkdtemp(prefix="tb-cni-"))
    bench = Bench(session, count, tmp)
    try:
        session.log("one-node lab, peer node, pod namespaces")
        tabby, peer = bench.setup()
        bench.warm_up(tabby, peer)
        with session.part("sequential"):
            bench.one_at_a_time(tabby, peer)
        with session.part(f"{WORKERS} concurrent"):
            bench.all_at_once(tabby, peer)
        with session.part("exec start-up"):
            bench.start_up(tabby, peer)
    finally:
        try:
            bench.cleanup()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
