"""The policy benchmark's synthetic clusters, and programming time and agent memory.

``latency_state(n)`` is the state bench.policy compiles for its first-packet
paths; ``cluster_state()`` a cluster of 10k endpoints (100 nodes, 100
namespaces, dual stack, 100 endpoints on this node) under 1k Kubernetes
NetworkPolicies.

Programming. That cluster held the agent's way (a StoreCache over a datastore,
the node calculator's nftables half and the NftReconciler applying into a
namespace of its own), timed from the cache holding the change to ``nft``
having applied it (snapshot, calculation, transaction): the full sync of a
freshly started agent (a new process loading the datastore), the periodic
full resync of a running one, then one policy changed and one pod added.
The peer is iptables-nft handling a linear rule set of the same size
(restore; append one rule).

Memory. The fresh process's RSS once it holds that state (cache, snapshot,
applied ruleset), beside the same process with an empty datastore.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import netns
from bench.netns import BenchError
from bench.nsexec import NetnsNft, timed
from bench.report import Row
from bench.session import Session

SECTION = "Network policy"
PREFIX = "tb-pol-"
NODE = "tb-node"
CLIENT = ipaddress.IPv4Address("198.19.255.1")
SERVER = ipaddress.IPv4Address("198.19.255.2")
PORT = 8080
MEMBERS = ipaddress.IPv4Network("198.19.128.0/17")  # remote endpoints admitted as clients
OTHERS = ipaddress.IPv4Network("198.18.64.0/18")  # other local endpoints
GROUPS = 100  # distinct peer selectors of the other policies' rules (their sets: N/100 each)


def _endpoint(ns: str, pod: str, node: str, iface: str,
              nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
              labels: dict[str, str], ports: Sequence[tuple[str, str, int]] = ()) -> Any:
    from tabby.model import ObjectMeta, WorkloadEndpoint, endpoint_name
    from tabby.model.workloadendpoint import EndpointPort, WorkloadEndpointSpec
    meta = ObjectMeta(name=endpoint_name(node, pod, "eth0"), namespace=ns, labels={
        **labels, "projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s"})
    spec = WorkloadEndpointSpec(
        node=node, pod=pod, container_id=secrets.token_hex(8), interface_name=iface,
        ip_networks=tuple(nets), ports=tuple(EndpointPort(*p) for p in ports),
        service_account_name="default",
        namespace_labels=(("kubernetes.io/metadata.name", ns),))
    return WorkloadEndpoint(meta=meta, spec=spec)


def _netpol(name: str, ns: str, spec: dict[str, Any]) -> Any:
    from tabby.model import parse_manifest
    return parse_manifest({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": name, "namespace": ns}, "spec": spec})


def _base(ns_names: Sequence[str], ns_labels: dict[str, dict[str, str]] | None = None
          ) -> tuple[list[Any], list[Any]]:
    from tabby.model import Namespace, Node
    nodes = [Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                                 "metadata": {"name": NODE}})]
    namespaces = [Namespace.from_manifest({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": n, "labels": (ns_labels or {}).get(n, {})}}) for n in ns_names]
    return nodes, namespaces


def latency_state(n: int) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """(nodes, namespaces, endpoints, policies) with n rules and n set members in force."""
    nodes, namespaces = _base(["bench"])
    net = ipaddress.ip_network
    eps = [_endpoint("bench", "server", NODE, "tabpolsrv", [net(SERVER)], {"app": "server"},
                     [("http", "TCP", PORT)]),
           _endpoint("bench", "client", NODE, "tabpolcli", [net(CLIENT)], {"role": "client"})]
    eps += [_endpoint("bench", f"member-{i}", f"tb-remote-{i % 100}", "",
                      [net(MEMBERS[i + 1])], {"role": "client", "grp": f"g-{i % GROUPS}"})
            for i in range(n)]
    policies = [_netpol("server", "bench", {
        "podSelector": {"matchLabels": {"app": "server"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                     "ports": [{"port": PORT, "protocol": "TCP"}]}]})]
    for k in range(n // 10):
        eps.append(_endpoint("bench", f"other-{k}", NODE, f"tabsyn{k}", [net(OTHERS[k + 1])],
                             {"slot": f"s-{k}"}))
        policies.append(_netpol(f"other-{k}", "bench", {
            "podSelector": {"matchLabels": {"slot": f"s-{k}"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {
                                      "grp": f"g-{(k * 10 + j) % GROUPS}"}}}],
                         "ports": [{"port": 1000 + j, "protocol": "TCP"}]}
                        for j in range(10)]}))
    return nodes, namespaces, eps, policies




def cluster_state(endpoints: int = 10_000, policies: int = 1_000, nodes: int = 100,
                  namespaces: int = 100) -> list[Any]:
    """Every object of the synthetic cluster (nodes, namespaces, endpoints, policies)."""
    ns_names = [f"ns-{i:02d}" for i in range(namespaces)]
    node_objs, ns_objs = _base(ns_names, {n: {"team": f"team-{i % 10}"}
                                          for i, n in enumerate(ns_names)})
    v4 = ipaddress.IPv4Network("198.19.0.0/16")
    v6 = ipaddress.IPv6Network("fd7a:bb1e:1::/48")
    eps = []
    for i in range(endpoints):
        node = NODE if i % nodes == 0 else f"tb-remote-{i % nodes}"
        eps.append(_endpoint(
            ns_names[i % namespaces], f"p-{i}", node, f"tabc{i:06d}" if node == NODE else "",
            [ipaddress.ip_network(v4[i + 1]), ipaddress.ip_network(v6[i + 1])],
            {"app": f"app-{i % 20}", "tier": f"tier-{i % 5}"}, [("http", "TCP", 8080)]))
    return [*node_objs, *ns_objs, *eps,
            *(cluster_policy(k, ns_names[k % namespaces]) for k in range(policies))]


def cluster_policy(k: int, ns: str, port: int = 9000) -> Any:
    """Policy k: a named port from one tier, a numbered port from two tiers of a team's
    namespaces; every fourth also isolates egress (DNS to an ipBlock, pods anywhere)."""
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {"app": f"app-{(k * 3) % 20}"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"tier": f"tier-{k % 5}"}}}],
             "ports": [{"port": "http"}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"team": f"team-{k % 10}"}},
                       "podSelector": {"matchExpressions": [
                           {"key": "tier", "operator": "In",
                            "values": [f"tier-{k % 5}", f"tier-{(k + 1) % 5}"]}]}}],
             "ports": [{"port": port + k % 100, "protocol": "TCP"}]}]}
    if k % 4 == 0:
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["egress"] = [{"to": [{"ipBlock": {"cidr": "198.18.128.0/24"}}],
                           "ports": [{"port": 53, "protocol": "UDP"}]},
                          {"to": [{"namespaceSelector": {}}]}]
    return _netpol(f"pol-{k}", ns, spec)


# -- an agent's programming half ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Timing:
    total: float  # seconds from the cache to the kernel
    snapshot: float  # of which building the snapshot
    nft: float  # of which rendering and applying the transaction

    @property
    def calc(self) -> float:
        return self.total - self.snapshot - self.nft


@dataclass
class Agent:
    """The part of the agent that programs policy: a cache over a datastore and the
    calculator's nftables half applied into ``netns_name``."""

    store: Any
    netns_name: str

    def __post_init__(self) -> None:
        from tabby.agent.cache import StoreCache
        from tabby.calc.node import NodeCalculator, NodeSettings
        from tabby.dataplane.nft import NftReconciler
        from tabby.store.client import Client
        self.client = Client(self.store)
        self.cache = StoreCache(self.store, NODE)
        # nft started in the namespace directly, as the agent runs it in its own
        self.reconciler = NftReconciler(NetnsNft(self.netns_name))
        self.calculator = NodeCalculator(NodeSettings(NODE))

    def sync(self, *, full: bool) -> Timing:
        """One pass, the collector handled as the agent's loop handles it
        (``tabby.agent.collector``); timed until the kernel holds the change."""
        from tabby.agent import collector
        from tabby.nft.model import merge
        started = time.perf_counter()
        with collector.paused():
            snapshot = self.cache.snapshot()
            built = time.perf_counter()
            table = merge(self.calculator.nft_parts(snapshot, ()))  # the pass's nft half
            result = self.reconciler.apply(table, full=full)
            took = time.perf_counter() - started
        if full:
            collector.settle()
        if result.errors:
            raise BenchError(f"the nftables reconciler failed: {result.errors[0]}")
        return Timing(took, built - started, result.seconds)

    def write(self, obj: Any) -> None:
        """Store ``obj`` and hand it to the cache, as the agent's watch would."""
        stored, _ = self.client.apply(obj)
        self.cache.put(stored)

    def size(self) -> int:
        """Rules, set elements and map entries of the applied table."""
        applied = self.reconciler.applied
        if applied is None:
            return 0
        return (sum(len(c.rules) for c in applied.all_chains().values())
                + sum(len(s.elements) for s in applied.sets.values())
                + sum(len(m.elements) for m in applied.maps.values()))


def filled_store(url: str, objects: Sequence[Any]) -> None:
    from tabby.store import open_store
    from tabby.store.client import Client
    store = open_store(url)
    try:
        client = Client(store)
        for obj in objects:
            client.create(obj)
    finally:
        store.close()


def rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/self/status")


def fresh_agent(empty_url: str, full_url: str, netns_name: str) -> dict[str, float]:
    """In a new process: an agent on an empty datastore (RSS), then a second one that
    loads the full datastore and makes its first, full sync (timed; RSS)."""
    from tabby.store import open_store
    empty = Agent(open_store(empty_url), netns_name)
    empty.cache.load()
    empty.sync(full=True)
    gc.collect()
    out: dict[str, float] = {"rss_empty": rss_kb()}
    started = time.perf_counter()
    agent = Agent(open_store(full_url), netns_name)
    agent.cache.load()
    out["load"] = time.perf_counter() - started
    t = agent.sync(full=True)
    out.update(total=t.total, snapshot=t.snapshot, nft=t.nft, size=agent.size())
    gc.collect()
    out.update(rss_full=rss_kb(), hwm=rss_kb("VmHWM"))
    return out


CHILD = """
import json, sys
from bench.policyprog import fresh_agent
print(json.dumps(fresh_agent(*sys.argv[1:4])))
"""


def run_fresh(empty: str, full: str, ns: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, empty, full, ns], capture_output=True,
                          text=True, timeout=900, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise BenchError(f"the fresh agent failed: {done.stderr.strip()[-800:]}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


# -- the peer -----------------------------------------------------------------------------

def linear_rules(count: int) -> str:
    """iptables-restore text of ``count`` distinct rules in one chain."""
    lines = ["*filter", ":FORWARD ACCEPT [0:0]", ":tb-linear - [0:0]", "-A FORWARD -j tb-linear"]
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    lines += [f"-A tb-linear -s {ipaddress.IPv4Address(base + i // 100)}/32"
              f" -p tcp -m tcp --dport {1000 + i % 100} -j ACCEPT" for i in range(count)]
    return "\n".join([*lines, "COMMIT", ""])


def peer_times(ns: str, size: int, runs: int) -> tuple[list[float], list[float]]:
    """(seconds to restore a linear set of ``size`` rules, seconds to append one rule),
    started in ``ns`` as tabby's nft is (bench.nsexec)."""
    restore = [timed(ns, ["iptables-nft-restore"], linear_rules(size), timeout=900)
               for _ in range(runs)]
    append = [timed(ns, ["iptables-nft", "-A", "tb-linear", "-s", f"198.19.{i}.1/32",
                         "-j", "ACCEPT"]) for i in range(10)]
    return restore, append


# -- the measurements ---------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2]


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


def changes(agent: Agent, count: int) -> tuple[list[Timing], list[Timing]]:
    """One policy changed at a time, then one pod added at a time: the agent's pass each."""
    policy, pod = [], []
    for i in range(count):
        k = (i * 37) % 1000
        agent.write(cluster_policy(k, f"ns-{k % 100:02d}", port=9000 + 100 * (1 + i % 2)))
        policy.append(agent.sync(full=False))
    nets = [ipaddress.ip_network("198.19.200.0"), ipaddress.ip_network("fd7a:bb1e:1:ff::")]
    for i in range(count):
        agent.write(_endpoint("ns-00", f"new-{i}", NODE, f"tabn{i:06d}",
                              [ipaddress.ip_network(n.network_address + i) for n in nets],
                              {"app": "app-0", "tier": "tier-0"}, [("http", "TCP", 8080)]))
        pod.append(agent.sync(full=False))
    return policy, pod


def split(t: Sequence[Timing]) -> str:
    ms = {name: median([getattr(x, name) for x in t]) * 1000
          for name in ("total", "snapshot", "calc", "nft")}
    return (f"median {ms['total']:.1f} ms: snapshot {ms['snapshot']:.1f}, calculation"
            f" {ms['calc']:.1f}, nft {ms['nft']:.1f}")


def programming(session: Session, tmp: Path) -> None:
    from tabby.store import open_store
    ns = f"{PREFIX}p"
    netns.add([ns])
    try:
        empty, full = f"sqlite://{tmp / 'empty.db'}", f"sqlite://{tmp / 'full.db'}"
        started = time.monotonic()
        filled_store(empty, _base([])[0])
        filled_store(full, cluster_state())
        session.log(f"datastore of 10k endpoints, 1k policies written in"
                    f" {time.monotonic() - started:.0f} s")
        quick = session.quick
        fresh = [run_fresh(empty, full, ns) for _ in range(1 if quick else 3)]
        agent = Agent(open_store(full), ns)
        agent.cache.load()
        warm = [agent.sync(full=True) for _ in range(2 if quick else 5)]
        policy, pod = changes(agent, 10 if quick else 40)
        size = agent.size()
        restore, append = peer_times(ns, size, 2 if quick else 3)
    finally:
        netns.delete([ns])
    report(session, fresh, warm, policy, pod, size, restore, append)


def report(session: Session, fresh: list[dict[str, float]], warm: list[Timing],
           policy: list[Timing], pod: list[Timing], size: int, restore: list[float],
           append: list[float]) -> None:
    what = "1k NetworkPolicies over 10k endpoints (100 local)"
    peer = f"iptables-nft-restore, {size:,} linear rules"
    cold = median([f["total"] for f in fresh])
    first = min(fresh, key=lambda f: abs(f["total"] - cold))
    runs = ", ".join(f"{f['total']:.2f}" for f in fresh)
    session.add(
        Row(SECTION, f"full sync of a freshly started agent: {what}", cold, peer,
            median(restore), "s", False,
            f"{len(fresh)} fresh processes: {runs} s;"
            f" median: snapshot {first['snapshot']:.2f}, calculation"
            f" {first['total'] - first['snapshot'] - first['nft']:.2f}, nft {first['nft']:.2f} s"
            f" (loading the datastore before: {first['load']:.1f} s); table + sets {size:,}"
            f" rules/elements; issue goal <= 1 s: {'met' if cold <= 1.0 else 'NOT met'}"),
        Row(SECTION, f"periodic full resync of a running agent: {what}",
            median([t.total for t in warm]), peer, median(restore), "s", False,
            f"{len(warm)} resyncs, {split(warm)}"))
    for name, samples in (("one policy changed", policy), ("one pod added", pod)):
        worst = p99([t.total for t in samples]) * 1000
        session.add(Row(
            SECTION, f"incremental: {name}, with {what} present, p99", worst,
            f"iptables-nft -A one rule into {size:,}", p99(append) * 1000, "ms", False,
            f"{len(samples)} changes, each a pass from the cache to the kernel; {split(samples)};"
            f" issue goal <= 50 ms p99: {'met' if worst <= 50 else 'NOT met'}"))
    session.add(Row(
        SECTION, f"agent RSS holding {what}", first["rss_full"] / 1024,
        "the same agent, empty datastore", first["rss_empty"] / 1024, "MiB", False,
        f"cache, snapshot and applied ruleset held at once; peak {first['hwm'] / 1024:.0f} MiB;"
        f" the state's share {(first['rss_full'] - first['rss_empty']) / 1024:.0f} MiB"))
