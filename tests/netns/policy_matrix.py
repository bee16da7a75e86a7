"""Truth tables for network policy tests, in the shape of Kubernetes' e2e "netpol" suite.

A lab holds namespaces x, y, z with pods a, b, c in each (labels ``pod=a``
...; namespaces carry ``kubernetes.io/metadata.name``), every pod serving TCP
and UDP on 80 and 81 with named ports ``serve-80-tcp`` ... A test applies
policies with the ``tabby`` CLI, says what it expects as a ``Reachability``
(start from "everything connects", then mark what the rules block), and
``PolicyLab.check`` probes the matrix with ``tabby lab probe -o json`` until
it matches or a deadline passes; a mismatch fails with both grids, the wrong
probes and the policies in force, so it can be reported as it stands::

    reach = Reachability(lab.pods).expect(Peer(), Peer("x"), False)
    lab.apply(DEFAULT_DENY_INGRESS_IN_X)
    lab.check(reach, ports=(80,), protocols=("tcp",))

The expected tables are written by hand from the Kubernetes semantics; they
never come from tabby's own policy code, except in ``check_explain_agrees``,
whose point is that ``tabby policy explain`` and the dataplane agree. Probes
from a pod to itself are not made (loopback never crosses the node, as
upstream's ``AllowLoopback``).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

TABBY = [sys.executable, "-m", "tabby.cli.main"]
NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PORTS = (80, 81)
PROTOCOLS = ("tcp", "udp")
NODES = ("node-1", "node-2", "node-3")
CONVERGE = 20.0  # seconds a policy change may take to show in every probe
PROBE_TIMEOUT = 0.5  # seconds a probe waits for its answer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Key = tuple[int, str]  # (port, protocol)
ALL_KEYS: tuple[Key, ...] = tuple((port, proto) for port in PORTS for proto in PROTOCOLS)


# -- who expects to reach whom ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Peer:
    """A set of pods: empty fields match anything (``Peer()`` is every pod)."""

    namespace: str = ""
    pod: str = ""

    def matches(self, ref: str) -> bool:
        ns, _, name = ref.partition("/")
        return (not self.namespace or self.namespace == ns) and (not self.pod or self.pod == name)


def _peer(p: Peer | str) -> Peer:
    if isinstance(p, Peer):
        return p
    ns, _, name = p.partition("/")
    return Peer(ns, name)


class Reachability:
    """Expected connectivity between pods for one port and protocol.

    Marks apply in order, later ones over earlier ones, like upstream's
    ``Reachability.ExpectPeer``. A string peer is ``"ns/pod"`` or ``"ns"``.
    """

    def __init__(self, pods: Sequence[str], default: bool = True) -> None:
        self.pods = tuple(pods)
        self.table = {(s, t): default for s in self.pods for t in self.pods if s != t}

    def copy(self) -> Reachability:
        out = Reachability(self.pods)
        out.table = dict(self.table)
        return out

    def expect(self, source: Peer | str, target: Peer | str, connected: bool) -> Reachability:
        src, dst = _peer(source), _peer(target)
        for s, t in self.table:
            if src.matches(s) and dst.matches(t):
                self.table[s, t] = connected
        return self

    def expect_ingress(self, target: Peer | str, connected: bool) -> Reachability:
        """Every pod to ``target``."""
        return self.expect(Peer(), target, connected)

    def expect_egress(self, source: Peer | str, connected: bool) -> Reachability:
        """``source`` to every pod."""
        return self.expect(source, Peer(), connected)

    def allowed(self, source: str, target: str) -> bool:
        return self.table[source, target]

    def blocked(self) -> set[tuple[str, str]]:
        return {pair for pair, ok in self.table.items() if not ok}


Expectation = Reachability | Mapping[Key, Reachability]


def grid(pods: Sequence[str], cells: Mapping[tuple[str, str], bool | None],
         marks: Mapping[tuple[str, str], str] | None = None) -> str:
    """Sources down, targets across: ``.`` connected, ``X`` blocked, ``-`` not probed;
    ``marks`` overrides a cell (e.g. ``!`` where the dataplane disagrees)."""
    width = max(len(p) for p in pods)
    lines = [" " * width + "  " + " ".join(p.rjust(width) for p in pods)]
    for s in pods:
        row = []
        for t in pods:
            value = cells.get((s, t))
            text = "-" if value is None else ("." if value else "X")
            if marks and (s, t) in marks:
                text = marks[s, t]
            row.append(text.rjust(width))
        lines.append(s.ljust(width) + "  " + " ".join(row))
    return "\n".join(lines)


# -- the lab ----------------------------------------------------------------------------

def pod_manifest(namespace: str, name: str, node: str,
                 labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    ports = [{"name": f"serve-{port}-{proto}", "containerPort": port, "protocol": proto.upper()}
             for port in PORTS for proto in PROTOCOLS]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": dict(labels) if labels is not None else {"pod": name}},
            "spec": {"nodeName": node, "containers": [
                {"name": "cont", "image": "busybox", "ports": ports}]}}


def namespace_manifest(name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def cluster_manifests() -> list[dict[str, Any]]:
    """x, y, z with a, b, c each, spread so every namespace has a pod on every node."""
    docs = [namespace_manifest(ns) for ns in NAMESPACES]
    for i, ns in enumerate(NAMESPACES):
        for j, name in enumerate(POD_NAMES):
            docs.append(pod_manifest(ns, name, NODES[(i + j) % len(NODES)]))
    return docs


def documents(docs: Iterable[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """YAML text (one or many documents) and mappings, as a list of mappings."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, str):
            out += [d for d in yaml.safe_load_all(doc) if d]
        else:
            out.append(copy.deepcopy(dict(doc)))
    return out


def _ident(doc: Mapping[str, Any]) -> tuple[str, str, str, str]:
    meta = doc.get("metadata", {})
    return (str(doc.get("apiVersion")), str(doc.get("kind")), str(meta.get("namespace", "")),
            str(meta.get("name")))


@dataclass
class PolicyLab:
    """A lab driven through the ``tabby`` CLI, remembering what a test changed."""

    name: str
    pods: tuple[str, ...] = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES)
    applied: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    relabelled: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    originals: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    ips: dict[str, dict[int, IPAddress]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    # -- the CLI --------------------------------------------------------------------

    def tabby(self, *args: str, stdin: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*TABBY, "--lab", self.name, *args], input=stdin,
                              capture_output=True, text=True, timeout=300, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"tabby {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def setup(self) -> None:
        docs = cluster_manifests()
        self.tabby("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        self.originals = {_ident(d): d for d in docs}
        self.ips = self.pod_ips()

    def pod_ips(self) -> dict[str, dict[int, IPAddress]]:
        """Each pod's address per IP version, as ``tabby get pods -A -o json`` shows it."""
        items = json.loads(self.tabby("get", "pods", "-A", "-o", "json").stdout)["items"]
        out: dict[str, dict[int, IPAddress]] = {}
        for item in items:
            ref = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
            addrs = [ipaddress.ip_address(i["ip"]) for i in item["status"].get("podIPs", [])]
            out[ref] = {a.version: a for a in addrs}
        return out

    def ip(self, ref: str, version: int = 4) -> IPAddress:
        return self.ips[ref][version]

    def apply(self, *docs: str | Mapping[str, Any]) -> None:
        """Apply policies (or any tabby kind); they are deleted again by ``reset``."""
        parsed = documents(docs)
        for doc in parsed:
            key = _ident(doc)
            if key in self.originals:
                self.relabelled[key] = doc
            else:
                self.applied[key] = doc
        self.log.append(yaml.safe_dump_all(parsed, sort_keys=False))
        self.tabby("apply", "-f", "-", stdin=yaml.safe_dump_all(parsed))

    def delete(self, *docs: str | Mapping[str, Any]) -> None:
        parsed = documents(docs)
        for doc in parsed:
            self.applied.pop(_ident(doc), None)
        self.log.append("deleted:\n" + yaml.safe_dump_all(parsed, sort_keys=False))
        self.tabby("delete", "-f", "-", stdin=yaml.safe_dump_all(parsed))

    def relabel_pod(self, ref: str, labels: Mapping[str, str]) -> None:
        ns, _, name = ref.partition("/")
        original = self.originals[("v1", "Pod", ns, name)]
        doc = copy.deepcopy(original)
        doc["metadata"]["labels"] = dict(labels)
        self.apply(doc)

    def relabel_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        self.apply(namespace_manifest(name, labels))

    def reset(self) -> None:
        """Delete what the test applied (policies before tiers: a tier that holds
        policies cannot be deleted), restore labels, wait for full connectivity."""
        docs = list(self.applied.values())
        self.applied.clear()
        for batch in ([d for d in docs if d.get("kind") != "Tier"],
                      [d for d in docs if d.get("kind") == "Tier"]):
            if batch:
                self.tabby("delete", "--ignore-not-found", "-f", "-",
                           stdin=yaml.safe_dump_all(batch))
        if self.relabelled:
            docs = [self.originals[k] for k in self.relabelled]
            self.relabelled.clear()
            self.tabby("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        self.log.clear()
        self.check(Reachability(self.pods), ports=(80,), protocols=("tcp",))

    # -- probing -----------------------------------------------------------------------

    def probe(self, port: int | None = None, protocol: str | None = None,
              family: str = "ipv4", sources: Sequence[str] = (), targets: Sequence[str] = (),
              timeout: float = PROBE_TIMEOUT) -> dict[tuple[str, str, int, str], bool]:
        """(from, to, port, protocol) -> connected, from one ``tabby lab probe -o json``."""
        args = ["lab", "probe", "-o", "json", "--family", family, "--timeout", str(timeout)]
        args += [f"--from={s}" for s in sources] + [f"--to={t}" for t in targets]
        if port is not None:
            args += ["--port", str(port)]
        if protocol is not None:
            args += ["--protocol", protocol]
        probes = json.loads(self.tabby(*args).stdout)["probes"]
        return {(p["from"], p["to"], int(p["port"]), p["protocol"]): bool(p["connected"])
                for p in probes if p["from"] != p["to"]}

    def observe(self, keys: Sequence[Key], family: str,
                sources: Sequence[str]) -> dict[Key, dict[tuple[str, str], bool]]:
        """What the probes see, per (port, protocol): one ``tabby lab probe`` call
        (without --port when several ports are wanted: the probes run concurrently)."""
        one: tuple[int | None, str | None] = keys[0] if len(keys) == 1 else (None, None)
        out: dict[Key, dict[tuple[str, str], bool]] = {k: {} for k in keys}
        for (s, t, port, proto), ok in self.probe(*one, family, sources).items():
            if (port, proto) in out:
                out[port, proto][s, t] = ok
        return out

    def check(self, expect: Expectation, *, ports: Sequence[int] = PORTS,
              protocols: Sequence[str] = PROTOCOLS, family: str = "ipv4",
              sources: Sequence[str] = (), converge: float = CONVERGE,
              reasons: Mapping[tuple[Key, str, str], str] | None = None) -> None:
        """Probe until every (port, protocol) matches its expected table; AssertionError
        with the truth tables after ``converge`` seconds (and ``reasons`` for the
        expectation of each wrong pair, when given)."""
        keys = [(p, q) for p in ports for q in protocols]
        if isinstance(expect, Reachability):
            wanted = {k: expect for k in keys}
        else:
            wanted = dict(expect)
            keys = list(wanted)
        deadline = time.monotonic() + converge
        attempts = 0
        while True:
            attempts += 1
            seen = self.observe(keys, family, sources)
            wrong = {k: _mismatches(wanted[k], seen[k], sources) for k in keys}
            if not any(wrong.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(self._report(wanted, seen, wrong, family, attempts,
                                                  reasons or {}))

    def wait_probes(self, want: Mapping[tuple[str, str], bool], *, port: int = 80,
                    protocol: str = "tcp", family: str = "ipv4",
                    converge: float = CONVERGE) -> None:
        """Probe the given (from, to) pairs until each is as wanted (for pods outside
        the x/y/z matrix)."""
        sources = sorted({s for s, _ in want})
        targets = sorted({t for _, t in want})
        deadline = time.monotonic() + converge
        while True:
            seen = self.probe(port, protocol, family, sources, targets)
            got = {(s, t): seen.get((s, t, port, protocol)) for s, t in want}
            wrong = {pair: ok for pair, ok in got.items() if ok != want[pair]}
            if not wrong:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{protocol}/{port} {family}: " + ", ".join(
                        f"{s} -> {t} {_state(ok)} (expected {_state(want[s, t])})"
                        for (s, t), ok in sorted(wrong.items()))
                    + "\n\nwhat the test applied:\n" + "\n---\n".join(self.log))

    def _report(self, wanted: Mapping[Key, Reachability],
                seen: Mapping[Key, Mapping[tuple[str, str], bool]],
                wrong: Mapping[Key, list[tuple[str, str]]], family: str, attempts: int,
                reasons: Mapping[tuple[Key, str, str], str]) -> str:
        parts = [f"the dataplane disagrees with the expected reachability ({family},"
                 f" still after {attempts} probe rounds):"]
        for key, pairs in wrong.items():
            if not pairs:
                continue
            port, proto = key
            got = seen[key]
            parts.append(f"\n{proto}/{port}: expected\n" + grid(self.pods, wanted[key].table)
                         + "\nobserved ('!' where it differs)\n"
                         + grid(self.pods, dict(got), {p: "!" for p in pairs}))
            parts.append("wrong: " + ", ".join(
                f"{s} -> {t} {_state(got.get((s, t)))}"
                f" (expected {_state(wanted[key].allowed(s, t))})" for s, t in pairs))
            parts += [f"  {s} -> {t}: {reasons[key, s, t]}" for s, t in pairs
                      if (key, s, t) in reasons]
        parts.append("\nwhat the test applied:\n" + "\n---\n".join(self.log))
        return "\n".join(parts)


def _state(connected: bool | None) -> str:
    return "not probed" if connected is None else "connected" if connected else "blocked"


def _mismatches(want: Reachability, got: Mapping[tuple[str, str], bool],
                sources: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs observed otherwise than expected; a pair that should have been probed
    and was not counts as wrong too."""
    pairs = [pair for pair in want.table if not sources or pair[0] in sources]
    return sorted(pair for pair in pairs if got.get(pair) != want.table[pair])


def cover(addresses: Iterable[IPAddress]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The smallest network holding every address (all of one family)."""
    addrs = sorted(addresses)
    first, last = addrs[0], addrs[-1]
    net = ipaddress.ip_network(first)
    while last not in net:
        net = net.supernet()
    return net


def host(address: IPAddress) -> str:
    """``address`` as a one-address CIDR (``/32`` or ``/128``)."""
    return str(ipaddress.ip_network(address))


# -- explain beside the dataplane ---------------------------------------------------------

def explain_tables(lab: PolicyLab, keys: Sequence[Key], family: str
                   ) -> tuple[dict[Key, Reachability], dict[tuple[Key, str, str], str]]:
    """What ``tabby policy explain`` says for every pair: per key a Reachability, and
    each verdict's summary. Computed in this process by the function the CLI calls
    (from the lab's datastore): 288 CLI runs per matrix would cost a minute."""
    from tabby.agent.cache import StoreCache
    from tabby.lab.state import require
    from tabby.policy.explain import explain, find_pod, protocol_number
    from tabby.policy.program import build_program
    from tabby.store import open_store

    store = open_store(require(lab.name).datastore)
    try:
        cache = StoreCache(store, "")
        cache.load()
        program = build_program(cache.snapshot(), None)
    finally:
        store.close()
    entities = {ref: find_pod(program, *ref.split("/")) for ref in lab.pods}
    version = {"ipv4": 4, "ipv6": 6}[family]
    tables = {k: Reachability(lab.pods) for k in keys}
    why: dict[tuple[Key, str, str], str] = {}
    for key in keys:
        for s, t in tables[key].table:
            r = explain(program, entities[s], entities[t], protocol_number(key[1]), key[0],
                        family=version)
            tables[key].table[s, t] = r.verdict == "allow"
            why[key, s, t] = f"egress: {r.egress.summary()}; ingress: {r.ingress.summary()}"
    return tables, why


def cli_explain(lab: PolicyLab, source: str, target: str, key: Key, family: str) -> bool:
    """``tabby policy explain -o json`` for one pair: allowed?"""
    out = lab.tabby("policy", "explain", "--from", source, "--to", target, "--port",
                    str(key[0]), "--protocol", key[1], "--family", family, "-o", "json").stdout
    verdict = json.loads(out)["verdict"]
    assert verdict in ("allow", "deny"), out
    return bool(verdict == "allow")


def check_explain_agrees(lab: PolicyLab, *, family: str = "ipv4",
                         keys: Sequence[Key] = ALL_KEYS,
                         cli_samples: int = 4) -> dict[Key, Reachability]:
    """The dataplane converges on explain's verdicts for every pair and key, and the CLI
    says what the library says for a few pairs (both verdicts where there are both)."""
    tables, why = explain_tables(lab, keys, family)
    lab.check(tables, family=family, reasons=why)
    samples: list[tuple[Key, str, str]] = []
    for want in (True, False):
        samples += [(k, s, t) for k in keys for (s, t), ok in sorted(tables[k].table.items())
                    if ok is want][:cli_samples // 2]
    for key, s, t in samples:
        assert cli_explain(lab, s, t, key, family) == tables[key].allowed(s, t), \
            f"tabby policy explain {s} -> {t} {key}: the CLI disagrees with the library"
    return tables
