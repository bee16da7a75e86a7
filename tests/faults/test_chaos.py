"""kill -9 under pod churn (agent, BIRD, an etcd member, the API server); etcd's quorum.

Each fault test brings up its own lab (prefix ``tch``), starts a TCP echo flow
between two pods never churned (node-1 and node-2), has four threads create and
delete pods on both nodes, and in the middle kills one process by the PID the lab
recorded, keeps it down while the churn goes on, and starts it again
(``tests.faults.chaos``). After the churn, with every churned pod deleted:
``tabby ipam check`` clean; no ``tab*`` veth, route of protocol 77, element of
pol-wl-ifaces or pol-src4/6, or WorkloadEndpoint of a gone pod; no echo lost.
Refusals while a fault lasts (CNI "try again later", kubectl errors) are
expected; a crash is a loss. Each test prints its Tally and figures. ``make
test`` runs the agent kill only; the rest need TABBY_FAULTS_N >= 200.

The quorum test is issue 14's "after etcd lost quorum and came back, lab pods
stayed Pending forever and one address leaked": two of three members killed for
40 s during pod creation; applied again, every pod must end Running, and deleting
them must leave nothing. The causes, fixed: the lab's pod driver kept a pod
whose undo failed (CNI DEL, datastore down) and answered every later apply
"unchanged" (``tabby.lab.pods``); IPAM gave back a handle's count when a block
write failed unanswered, although etcd commits such a write once it has a quorum
again: an allocation no handle names (``tabby.ipam.engine``; ``records`` no
longer takes a second address when such a write is retried). ``LostReplyStore``
pins the IPAM half without root.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import ssl
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tabby.dataplane.pods import host_veth_name
from tabby.errors import ConfigError, Conflict, StoreError, Unavailable
from tabby.ipam import IPAM
from tabby.ipam import blocks as blk
from tabby.ipam.report import check
from tabby.kube import binaries
from tabby.lab import system
from tabby.lab.pods import LabPods
from tabby.lab.state import lab_dir, require
from tabby.marks import ROUTE_PROTOCOL, VETH_PREFIX
from tabby.model import IPAMBlock, IPPool, Pod, WorkloadEndpoint
from tabby.store import open_store
from tabby.store.base import Item, Key, Value
from tabby.store.client import Client
from tabby.store.memory import MemoryStore
from tests.faults import chaos
from tests.faults.chaos import (
    AgentFault,
    BirdFault,
    Churn,
    EchoFlow,
    Fault,
    KubeChurn,
    LabChurn,
    RestartFault,
)
from tests.faults.fuzz import SCALE, Tally
from tests.netns.test_lab_cluster import tabby
from tests.waiting import wait_for

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
FULL = pytest.mark.skipif(SCALE < 200, reason="runs with TABBY_FAULTS_N >= 200 (make faults);"
                          " make test's slice runs the agent kill only")
PODS = max(16, SCALE // 4)
NFT_SETS = ("pol-wl-ifaces", "pol-src4", "pol-src6")
QUORUM_OUTAGE = 40.0  # > the agent's 15 s store timeout twice: ADD and its undo both fail


# -- one fault under churn ------------------------------------------------------------------


def under_churn(lab: str, flags: list[str], fault_of: Callable[[str], Fault],
                churn_of: Callable[[str], Churn], hold: float) -> Tally:
    """The scenario of this module's docstring; the Tally, printed with the figures."""
    figures: dict[str, Any] = {}
    with chaos.lab(lab, "--nodes", "2", *flags):
        churn = churn_of(lab)
        try:
            flow = EchoFlow.start(lab, *churn.flow_pods())
            fault = fault_of(lab)
            tally = Tally(f"kill -9 {fault.name} mid-churn")
            try:
                with churn:
                    wait_for("churn under way", lambda: churn.tried() >= PODS // 3, 300)
                    fault.kill()
                    down_at, at_kill = time.monotonic(), churn.tried()
                    wait_for(f"churn with {fault.name} down", lambda: churn.tried() >= at_kill
                             + churn.threads and time.monotonic() - down_at >= hold, 300)
                    tally.check(f"{fault.name} started again", fault.recover)
                    figures["down"] = time.monotonic() - down_at
                    at_back = churn.tried()
                    wait_for("churn after the fault", lambda: churn.tried() >= max(
                        PODS, at_back + PODS // 3), 900)
            finally:
                figures["flow"] = flow.stop()
            tally.check("every churned pod deleted", functools.partial(finish, churn, figures))
        finally:
            churn.close()
        for name, outcome in churn.outcomes:
            tally.check(f"pod {name}", functools.partial(crashed, outcome))
        tally.check("echo flow", lambda: None if figures["flow"]["lost"] == 0 and not
                    figures["flow"]["error"] else json.dumps(figures["flow"]))
        tally.check("tabby ipam check", lambda: settled(lambda: ipam_problems(lab)))
        tally.check("no leftovers", lambda: settled(lambda: leftovers(lab)))
    flow_figures = figures["flow"]
    print(f"\n{tally.report()}\n  pods tried {churn.tried()}: created {churn.count('ok')},"
          f" refused {churn.count('refused')}; deletes refused while churning"
          f" {sum(1 for d in churn.deletes if d != 'ok')}; {fault.name} down"
          f" {figures.get('down', -1):.1f}s; echo flow: sent {flow_figures['sent']}, lost"
          f" {flow_figures['lost']}, slowest echo {flow_figures['max_rtt_ms']} ms"
          f" {flow_figures['error']}; churned pods deleted in {figures.get('deleted', -1):.1f}s")
    return tally


def finish(churn: Churn, figures: dict[str, Any]) -> None:
    figures["deleted"] = churn.finish()


def crashed(outcome: str) -> str | None:
    return outcome if outcome.startswith("crashed") else None


def settled(look: Callable[[], list[Any]], timeout: float = 60.0) -> str | None:
    """None once ``look`` finds nothing (polled: agents sweep on their next pass)."""
    last: list[Any] = []

    def clean() -> bool:
        last[:] = look()
        return not last
    try:
        wait_for("a clean look", clean, timeout, 0.5)
    except AssertionError:
        return f"{len(last)} left after {timeout:g}s: {last[:8]}"
    return None


def assert_held(tally: Tally) -> None:
    assert tally.tried > 0 and not tally.lost, "\n".join(tally.lost[:10])


@ROOT
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_agent_kill_mid_churn() -> None:
    assert_held(under_churn("tcha", [], lambda lab: AgentFault(lab, "node-1"), LabChurn, 2.0))


@ROOT
@FULL
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bird_kill_mid_churn() -> None:
    assert_held(under_churn("tchb", ["--bgp", "mesh"], lambda lab: BirdFault(lab, "node-1"),
                            LabChurn, 2.0))


@ROOT
@FULL
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_etcd_member_kill_mid_churn() -> None:
    def leader(lab: str) -> RestartFault:  # the member whose loss costs an election
        return RestartFault(lab, etcd_roles(lab)[0], etcd_healthy(lab))
    assert_held(under_churn("tche", ["--datastore", "etcd"], leader, LabChurn, 3.0))


@ROOT
@FULL
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_apiserver_kill_mid_churn() -> None:
    try:
        binaries.bin_dir()
    except ConfigError as exc:
        pytest.skip(str(exc))

    def apiserver(lab: str) -> RestartFault:
        return RestartFault(lab, "kube-apiserver", apiserver_ready(lab))
    assert_held(under_churn("tchk", ["--datastore", "kubernetes"], apiserver, KubeChurn, 5.0))


# -- reaching an etcd member and the API server -------------------------------------------

def flag(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv[:3]}...")


def etcd_context(lab_name: str) -> ssl.SSLContext | None:
    """How to reach the lab's etcd members: its CA and client certificate (etcds://)."""
    url = require(lab_name).datastore
    if not url.startswith("etcds://"):
        return None
    files = dict(parse_qsl(urlsplit(url).query))
    context = ssl.create_default_context(cafile=files["ca"])
    context.load_cert_chain(files["cert"], files["key"])
    return context


def etcd_call(argv: list[str], path: str, context: ssl.SSLContext | None) -> dict[str, Any]:
    """POST {} (GET with ``path`` /health) to the member that runs ``argv``."""
    url = flag(argv, "--listen-client-urls") + path
    request = urllib.request.Request(url, data=None if path == "/health" else b"{}")
    with urllib.request.urlopen(request, timeout=2.0, context=context) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def etcd_healthy(lab_name: str) -> Callable[[list[str]], bool]:
    context = etcd_context(lab_name)

    def healthy(argv: list[str]) -> bool:
        try:
            return str(etcd_call(argv, "/health", context).get("health")) == "true"
        except (OSError, ValueError):
            return False
    return healthy


def etcd_roles(lab_name: str) -> tuple[str, list[str]]:
    """(the leader's role, the others') of the lab's etcd members, e.g. ``etcd e0``."""
    context = etcd_context(lab_name)
    members = {p.role: chaos.cmdline(p.pid) for p in require(lab_name).procs
               if p.role.startswith("etcd ")}
    status = {role: etcd_call(argv, "/v3/maintenance/status", context)
              for role, argv in members.items()}
    leader = next(r for r, s in status.items() if s["header"]["member_id"] == s["leader"])
    return leader, sorted(r for r in members if r != leader)


def apiserver_ready(lab_name: str) -> Callable[[list[str]], bool]:
    context = ssl.create_default_context(cafile=str(lab_dir(lab_name) / "k8s/pki/ca.crt"))

    def ready(argv: list[str]) -> bool:
        url = f"https://127.0.0.1:{flag(argv, '--secure-port')}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2.0, context=context) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False
    return ready


# -- etcd loses its quorum while pods are created ----------------------------------------------

@ROOT
@FULL
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pods_created_without_etcd_quorum_end_running_and_leave_nothing() -> None:
    lab = "tchq"
    tally = Tally("etcd quorum lost mid-creation")
    with chaos.lab(lab, "--nodes", "2", "--datastore", "etcd"):
        # the leader stays: writes it takes before it notices are committed after the outage
        members = [RestartFault(lab, role, etcd_healthy(lab))
                   for role in etcd_roles(lab)[1]]
        churn = LabChurn(lab, keep=10**9)  # creates only
        try:
            with churn:
                wait_for("creation under way", lambda: churn.tried() >= 4, 120)
                for member in members:
                    member.kill()
                down_at = time.monotonic()
                wait_for(f"{QUORUM_OUTAGE:g}s without quorum", lambda: time.monotonic()
                         - down_at >= QUORUM_OUTAGE, QUORUM_OUTAGE + 300, 1.0)
                for member in members:
                    tally.check(f"{member.name} started again", member.recover)
                at_back = churn.tried()
                wait_for("creation after the outage", lambda: churn.tried() >= at_back + 8, 300)
            names = [name for name, _ in churn.outcomes]
            again = churn.pods.apply_pods([Pod.from_manifest(chaos.pod(
                name, churn.placed[name], {"app": "churn"})) for name in names])
            for name, first, result in zip(names, churn.outcomes, again, strict=True):
                tally.check(f"pod {name} ({first[1][:60]})",
                            functools.partial(running, churn.pods, name, result))
            tally.check("every pod deleted", functools.partial(finish, churn, {}))
        finally:
            churn.close()
        tally.check("tabby ipam check", lambda: settled(lambda: ipam_problems(lab)))
        tally.check("no leftovers", lambda: settled(lambda: leftovers(lab)))
    print(f"\n{tally.report()}\n  pods created {churn.tried()}: {churn.count('ok')} at once,"
          f" {churn.count('refused')} refused in the outage")
    assert_held(tally)


def running(pods: LabPods, name: str, applied: str | Exception) -> str | None:
    """None if pod ``name`` is Running, wired (its veth on its node) with its addresses."""
    if isinstance(applied, Exception):
        return f"applied again: {applied}"
    pod = pods.client.get(Pod, name, "default")
    record = require(pods.name).pod("default", name)
    if pod.status.phase != "Running" or record is None or not record.ips:
        return f"{pod.status.phase} after applying it again ({applied})"
    if set(pod.status.pod_ips) != set(record.ips):
        return f"status says {pod.status.pod_ips}, wired with {record.ips}"
    veth = host_veth_name(record.container_id, record.ifname)
    if veth not in system.link_names(require(pods.name).node(record.node).netns):
        return f"no veth {veth} on {record.node}"
    return None


# -- what must hold afterwards ------------------------------------------------------------------

def leftovers(lab: str) -> list[str]:
    """What remains of pods the lab no longer has: ``tab*`` veths, tabby's routes to
    them, their elements in the nft sets, their WorkloadEndpoints."""
    state = require(lab)
    veths = {host_veth_name(p.container_id, p.ifname) for p in state.pods}
    ips = {ip for p in state.pods for ip in p.ips}
    pools = [p.cidr for p in state.topology.pools]
    found: list[str] = []
    for node in state.nodes:
        found += [f"{node.name}: veth {n}" for n in sorted(system.link_names(node.netns))
                  if n.startswith(VETH_PREFIX) and n not in veths]
        for version in (4, 6):
            out = system.run(["ip", f"-{version}", "-j", "-n", node.netns, "route", "show",
                              "proto", str(ROUTE_PROTOCOL)])
            for route in json.loads(out or "[]"):
                dev, dst = route.get("dev", ""), route.get("dst", "")
                with contextlib.suppress(ValueError):
                    net = ipaddress.ip_network(dst)
                    if (dev.startswith(VETH_PREFIX) and dev not in veths) or (
                            net.prefixlen == net.max_prefixlen and net.network_address not in ips
                            and any(net.network_address in p for p in pools)):
                        found.append(f"{node.name}: route {dst} dev {dev}")
        found += [f"{node.name}: {name} {value}" for name, value in nft_elements(node.netns)
                  if not _live(value, veths, ips)]
    live = {(p.namespace, p.name) for p in state.pods}
    with contextlib.closing(open_store(state.datastore)) as store:
        found += [f"endpoint {w.meta.namespace}/{w.meta.name}" for w in
                  Client(store).list(WorkloadEndpoint) if (w.meta.namespace, w.spec.pod)
                  not in live]
    return found


def nft_elements(netns: str) -> list[tuple[str, str]]:
    """(set, element) of the pod sets in tabby's nft table, concatenations joined by ' . '."""
    out = system.run(system.in_netns(netns, ["nft", "-j", "list", "table", "inet", "tabby"]))
    found = []
    for entry in json.loads(out).get("nftables", []):
        nft_set = entry.get("set")
        if not nft_set or nft_set.get("name") not in NFT_SETS:
            continue
        for elem in nft_set.get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                elem = elem["elem"]["val"]
            parts = elem["concat"] if isinstance(elem, dict) and "concat" in elem else [elem]
            found.append((nft_set["name"], " . ".join(str(p) for p in parts)))
    return found


def _live(element: str, veths: set[str], ips: set[Any]) -> bool:
    parts = element.split(" . ")
    return parts[0] in veths and all(ipaddress.ip_address(p) in ips for p in parts[1:])


def ipam_problems(lab: str) -> list[dict[str, Any]]:
    done = tabby("ipam", "check", "-o", "json", check=False, lab=lab)
    problems: list[dict[str, Any]] = json.loads(done.stdout)["problems"]
    return problems


# -- writes that land although they failed (no root) ------------------------------------------

class LostReplyStore(MemoryStore):
    """A memory store whose next write of each planned (operation, resource) lands and
    then raises the planned error, as an etcd client whose reply was lost reports it."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: list[tuple[str, str, StoreError]] = []
        self.lost: list[str] = []  # what was written although it answered an error

    def _answer(self, op: str, key: Key, item: Item) -> Item:
        for i, (planned, resource, error) in enumerate(self.plan):
            if (planned, resource) == (op, key.resource):
                del self.plan[i]
                self.lost.append(f"{op} {key}")
                raise error
        return item

    def create(self, key: Key, value: Value) -> Item:
        return self._answer("create", key, super().create(key, value))

    def update(self, key: Key, value: Value, revision: int) -> Item:
        return self._answer("update", key, super().update(key, value, revision))

    def delete(self, key: Key, revision: int | None = None) -> Item:
        return self._answer("delete", key, super().delete(key, revision))


def lossy_ipam() -> tuple[LostReplyStore, Client, IPAM]:
    store = LostReplyStore()
    client = Client(store)
    client.apply(IPPool.from_manifest({
        "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "pool"},
        "spec": {"cidr": "198.19.0.0/24", "blockSize": 26}}))
    return store, client, IPAM(client)


def held_by(client: Client, handle: str) -> list[int]:
    return [o for b in client.list(IPAMBlock) for o in blk.ordinals_of(b.spec, handle)]


def test_an_allocation_whose_reply_was_lost_goes_with_its_handle() -> None:
    store, client, ipam = lossy_ipam()
    store.plan.append(("update", IPAMBlock.KIND.resource, Unavailable("etcd update: gave up")))
    with pytest.raises(Unavailable):
        ipam.assign("k8s-pod-network.c1.eth0", "node-1", num_v4=1, num_v6=0)
    assert store.lost and len(held_by(client, "k8s-pod-network.c1.eth0")) == 1  # it landed
    ipam.release_handle("k8s-pod-network.c1.eth0")  # the runtime's DEL after the failed ADD
    assert held_by(client, "k8s-pod-network.c1.eth0") == []
    assert [p for p in check(client) if p.kind != "missing-node"] == []


def test_an_allocation_retried_after_it_landed_is_not_taken_twice() -> None:
    store, client, ipam = lossy_ipam()
    store.plan.append(("update", IPAMBlock.KIND.resource, Conflict("reported by the retry")))
    got = ipam.assign("k8s-pod-network.c2.eth0", "node-1", num_v4=1, num_v6=0)
    assert store.lost
    held = held_by(client, "k8s-pod-network.c2.eth0")
    assert len(got.addresses) == 1 and len(held) == 1
    assert got.addresses[0] == ipaddress.ip_network("198.19.0.0/26")[held[0]]
    assert [p.kind for p in check(client) if p.kind in ("handle-mismatch", "missing-handle")] == []
