"""Which Kubernetes client library: LIST, WATCH, idle memory and import time at 10k objects.

A real control plane (``tabby.kube.controlplane``) holds 10,000 ConfigMaps (three
labels, ~500 bytes of data, in 10 namespaces; 1,000 with ``--quick``). Each
candidate is measured in processes of its own, so memory is per library:

- tabby's store (the "tabby" column): ``tabby.store.kubernetes.KubernetesStore``,
  the official ``kubernetes`` client for configuration, auth, TLS and pooling,
  objects as raw JSON dicts;
- the official client's typed path: ``CoreV1Api`` and ``kubernetes.watch.Watch``;
- ``lightkube`` (sync ``Client``, typed models decoded by msgspec, over httpx2) and
  ``kr8s`` (its asyncio API, over httpx), each installed into a throwaway venv
  under /tmp (kept for the next run, never the project's dependency); a venv
  that cannot be made is a failure line, the rest still run.

Measured: (a) LIST of every ConfigMap, pages of 500 (kr8s: its fixed 100), best of
3, and the memory the decoded result holds (RSS after minus before, result held);
(b) WATCH from a known resourceVersion while this process writes N merge patches
(5,000; 500 quick) from 16 threads: events/s received and decoded (first to last
event: on 2 cores the writer, not the watcher, sets this pace, so the watcher's
CPU seconds are the figure to compare), then the same N replayed from the API
server's watch cache as fast as the client takes them (from opening the watch);
(c) RSS of a process holding one open watch on each of 20 resources (threads;
kr8s: asyncio tasks); (d) import time and RSS after it (median of 5).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.netns import BenchError
from bench.report import Row
from bench.session import Session

SECTION = "Kubernetes client library (ConfigMaps on a real API server)"
ROOT = Path(__file__).resolve().parent.parent
SERVICE_RANGES = ["198.18.128.0/20", "fd7a:bb1e:2::/112"]
NAMESPACES = 10
PAGE = 500
WRITERS = 16
PREFIX = "bench-cm-"
PAYLOAD = "x" * 480
SETTLE = 5.0
CHILD_TIMEOUT = 600.0
# (group, plural, kind, namespaced): the 20 resources of the idle test
RESOURCES = (
    ("", "configmaps", "ConfigMap", True), ("", "secrets", "Secret", True),
    ("", "pods", "Pod", True), ("", "services", "Service", True),
    ("", "namespaces", "Namespace", False), ("", "nodes", "Node", False),
    ("", "serviceaccounts", "ServiceAccount", True), ("", "events", "Event", True),
    ("", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    ("", "persistentvolumes", "PersistentVolume", False),
    ("", "replicationcontrollers", "ReplicationController", True),
    ("", "resourcequotas", "ResourceQuota", True), ("", "limitranges", "LimitRange", True),
    ("coordination.k8s.io", "leases", "Lease", True), ("apps", "deployments", "Deployment", True),
    ("apps", "daemonsets", "DaemonSet", True), ("apps", "replicasets", "ReplicaSet", True),
    ("apps", "statefulsets", "StatefulSet", True),
    ("discovery.k8s.io", "endpointslices", "EndpointSlice", True),
    ("networking.k8s.io", "networkpolicies", "NetworkPolicy", True),
)


@dataclass(frozen=True, slots=True)
class Candidate:
    key: str  # the child's adapter: tabby, typed, lightkube, kr8s
    label: str
    package: str  # what pip installs into a throwaway venv ("" for the project's venv)
    import_code: str  # the statements whose import time is measured


CANDIDATES = (
    Candidate("tabby", "official client, raw JSON (tabby's store)", "",
              "import kubernetes.client, kubernetes.config"),
    Candidate("typed", "official client, typed models", "",
              "import kubernetes.client, kubernetes.config, kubernetes.watch"),
    Candidate("lightkube", "lightkube", "lightkube",
              "import lightkube, lightkube.resources.core_v1"),
    Candidate("kr8s", "kr8s (asyncio)", "kr8s", "import kr8s.asyncio"),
)


# -- the parent: control plane, objects, writer, children ----------------------------------

def venv_python(session: Session, package: str) -> Path:
    """A throwaway venv under /tmp with ``package`` (made once, reused while it imports)."""
    venv = Path(tempfile.gettempdir()) / f"tabby-bench-venv-{package}"
    python = venv / "bin" / "python"
    module = package.replace("-", "_")
    if python.exists() and subprocess.run([python, "-c", f"import {module}"],
                                          capture_output=True, check=False).returncode == 0:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    session.log(f"making {venv} with {package}")
    for argv in (["/usr/bin/python3", "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", package]):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"{' '.join(argv)}: {e}") from e
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} exited {done.returncode}:"
                             f" {(done.stderr or done.stdout)[-500:]}")
    return python


class Cluster:
    """The admin client of the control plane: fills it and writes the updates."""

    def __init__(self, kubeconfig: str) -> None:
        from tabby.store.kubernetes import api_client
        self.kubeconfig = kubeconfig
        self.api = api_client(kubeconfig, pool_size=WRITERS * 2)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             content_type: str = "application/json", query: str = "") -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body_out, _ = self.api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"])
        resp: Any = self.api.call_api(method, url + query, header_params=headers, body=body_out,
                                 _request_timeout=(10.0, 60.0))
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise BenchError(f"{method} {path}: HTTP {resp.status} {data[:300]!r}")
        doc: dict[str, Any] = json.loads(data)
        return doc

    def revision(self) -> str:
        return str(self.call("GET", "/api/v1/configmaps", query="?limit=1")["metadata"]
                   ["resourceVersion"])

    def parallel(self, fn: Callable[[Any], object], items: list[Any]) -> float:
        """``fn`` over ``items`` from WRITERS threads; the rate per second."""
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(WRITERS) as pool:
            for _ in pool.map(fn, items):
                pass
        return len(items) / (time.monotonic() - start)

    def populate(self, names: list[tuple[str, str]]) -> float:
        for ns in sorted({ns for ns, _ in names}):
            self.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})

        def create(item: tuple[int, tuple[str, str]]) -> None:
            i, (ns, name) = item
            self.call("POST", f"/api/v1/namespaces/{ns}/configmaps", {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "labels": {"app": "bench", "tier": f"t{i % 7}",
                                                      "shard": f"s{i % 31}"}},
                "data": {"payload": PAYLOAD, "seq": "0"}})
        return self.parallel(create, list(enumerate(names)))

    def settle(self, timeout: float = 60.0) -> int:
        """Wait until the controller manager has put its kube-root-ca.crt ConfigMap in
        every namespace (so every candidate lists the same items); how many there are."""
        deadline = time.monotonic() + timeout
        while True:
            spaces = len(self.call("GET", "/api/v1/namespaces")["items"])
            roots = self.call("GET", "/api/v1/configmaps",
                              query="?fieldSelector=metadata.name%3Dkube-root-ca.crt")["items"]
            if len(roots) >= spaces or time.monotonic() > deadline:
                return len(self.call("GET", "/api/v1/configmaps")["items"])
            time.sleep(0.2)

    def update(self, names: list[tuple[str, str]], tag: str) -> float:
        def patch(item: tuple[str, str]) -> None:
            ns, name = item
            self.call("PATCH", f"/api/v1/namespaces/{ns}/configmaps/{name}",
                      {"data": {"seq": tag}}, content_type="application/merge-patch+json")
        return self.parallel(patch, names)


def child(python: Path, spec: dict[str, Any],
          on_ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run ``python -m bench.kubeclient SPEC``: ``on_ready`` when it prints READY, its RESULT."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(python), "-m", "bench.kubeclient", json.dumps(spec)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        timer = threading.Timer(CHILD_TIMEOUT, proc.kill)
        timer.start()
        result: dict[str, Any] | None = None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == "READY" and on_ready is not None:
                    on_ready()
                elif line.startswith("RESULT "):
                    result = json.loads(line[7:])
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if result is None:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-6:]
            raise BenchError(f"{spec['candidate']} {spec['task']}: exited {proc.returncode}"
                             f" without a result: {' | '.join(tail)}")
        return result


def import_time(python: Path, code: str) -> tuple[float, float]:
    """Median seconds to import (of 5 fresh processes) and the RSS after it (MiB)."""
    program = ("import re, time; t = time.perf_counter(); " + code
               + "; took = time.perf_counter() - t; status = open('/proc/self/status').read();"
               " print(took, re.search(r'VmRSS:\\s+(\\d+)', status).group(1))")
    times, rss = [], []
    for _ in range(6):  # the first run writes .pyc files: not counted
        done = subprocess.run([str(python), "-c", program], capture_output=True, text=True,
                              check=False, timeout=120)
        if done.returncode != 0:
            raise BenchError(f"{code}: {done.stderr.strip()[-300:]}")
        took, kib = done.stdout.split()
        times.append(float(took))
        rss.append(int(kib) / 1024)
    return statistics.median(times[1:]), statistics.median(rss[1:])


@dataclass(frozen=True, slots=True)
class Metric:
    what: str
    unit: str
    higher_is_better: bool


METRICS = {
    "list_s": Metric("LIST all ConfigMaps, best of 3", "s", False),
    "list_mib": Metric("memory holding the LIST result (RSS growth)", "MiB", False),
    "live_eps": Metric("WATCH during {n} writes: events/s decoded (bound by the writer)",
                       "events/s", True),
    "live_cpu": Metric("WATCH during {n} writes: watcher CPU", "CPU s", False),
    "replay_eps": Metric("WATCH replay of {n} events from the watch cache", "events/s", True),
    "replay_cpu": Metric("WATCH replay of {n} events: watcher CPU", "CPU s", False),
    "idle_mib": Metric("RSS of a process with 20 open watches (one per resource)", "MiB",
                       False),
    "idle_growth": Metric("RSS growth opening those 20 watches", "MiB", False),
    "import_s": Metric("import time (median of 5)", "s", False),
    "import_mib": Metric("RSS after the import alone", "MiB", False),
}


class Runner:
    def __init__(self, session: Session, cluster: Cluster, count: int, updates: int) -> None:
        self.session = session
        self.cluster = cluster
        self.count = count
        self.updates = updates
        self.names = [(f"kc-{i % NAMESPACES}", f"{PREFIX}{i:05d}") for i in range(count)]
        self.results: dict[str, dict[str, float]] = {}
        self.notes: dict[str, dict[str, str]] = {}
        self.versions: dict[str, str] = {}

    def spec(self, c: Candidate, task: str, **extra: Any) -> dict[str, Any]:
        return {"candidate": c.key, "task": task, "kubeconfig": self.cluster.kubeconfig,
                **extra}

    def measure(self, c: Candidate, python: Path) -> None:
        res = self.results.setdefault(c.key, {})
        notes = self.notes.setdefault(c.key, {})
        with self.session.part(f"{c.label}: LIST"):
            out = child(python, self.spec(c, "list"))
            if out["count"] < self.count:
                raise BenchError(f"listed {out['count']} of {self.count}")
            self.versions[c.key] = out["version"]
            res["list_s"] = min(out["times"])
            res["list_mib"] = (out["rss_held"] - out["rss_base"]) / 1024
            notes["list_s"] = f"{out['count']} items, pages of {out['page']}"
            notes["list_mib"] = (f"{out['rss_base'] / 1024:.0f} -> {out['rss_held'] / 1024:.0f}"
                                 f" MiB, peak {out['rss_peak'] / 1024:.0f} MiB")
        with self.session.part(f"{c.label}: WATCH"):
            rv = self.cluster.revision()
            wrote: dict[str, float] = {}

            def write() -> None:
                time.sleep(0.5)
                wrote["rate"] = self.cluster.update(self.names[:self.updates], f"{c.key}-{rv}")
                wrote["end"] = time.time()

            out = child(python, self.spec(c, "watch", rv=rv, want=self.updates), write)
            res["live_eps"] = self.updates / max(out["live_last"] - out["live_first"], 1e-6)
            res["live_cpu"] = out["live_cpu"]
            res["replay_eps"] = self.updates / max(out["replay_last"] - out["replay_first"], 1e-6)
            res["replay_cpu"] = out["replay_cpu"]
            notes["live_eps"] = (f"writer {wrote['rate']:.0f} patches/s; last event"
                                 f" {max(out['live_last_wall'] - wrote['end'], 0) * 1000:.0f}"
                                 " ms after the last write")
            notes["live_cpu"] = notes["replay_cpu"] = f"{self.updates:,} events decoded"
            notes["replay_eps"] = (f"{self.updates:,} events in"
                                   f" {(out['replay_last'] - out['replay_first']) * 1000:.0f} ms"
                                   " from opening the watch")
        with self.session.part(f"{c.label}: idle watches"):
            out = child(python, self.spec(c, "idle", rv=self.cluster.revision()))
            res["idle_mib"] = out["rss"] / 1024
            res["idle_growth"] = (out["rss"] - out["rss_base"]) / 1024
            notes["idle_mib"] = notes["idle_growth"] = (
                f"{out['watches']} watches, {out['threads']} threads;"
                f" {out['rss_base'] / 1024:.0f} MiB before opening them"
                + (" (tabby's model modules included)" if c.key == "tabby" else ""))
        with self.session.part(f"{c.label}: import time"):
            res["import_s"], res["import_mib"] = import_time(python, c.import_code)
            notes["import_s"] = notes["import_mib"] = c.import_code

    def rows(self, c: Candidate) -> None:
        base, mine = self.results.get("tabby", {}), self.results.get(c.key, {})
        peer = f"{c.label} {self.versions.get(c.key, '')}".strip()
        for key, m in METRICS.items():
            if key in base and key in mine:
                note = "; ".join(f"{who}: {text}" for who, text in (
                    ("tabby", self.notes["tabby"].get(key)), ("peer", self.notes[c.key].get(key)))
                    if text)
                self.session.add(Row(SECTION, m.what.format(n=f"{self.updates:,}"), base[key],
                                     peer, mine[key], m.unit, m.higher_is_better, note))


def run(session: Session) -> None:
    count = 1_000 if session.quick else 10_000
    updates = 500 if session.quick else 5_000
    pythons: dict[str, Path] = {}
    for c in CANDIDATES:
        if not c.package:
            pythons[c.key] = Path(sys.executable)
            continue
        with session.part(f"{c.label}: throwaway venv"):
            pythons[c.key] = venv_python(session, c.package)
    from tabby.kube.controlplane import ControlPlane

    tmp = Path(tempfile.mkdtemp(prefix="tb-kubeclient-"))
    try:
        with ControlPlane(tmp / "cp", service_ranges=SERVICE_RANGES) as cp:
            cluster = Cluster(str(cp.admin_kubeconfig))
            runner = Runner(session, cluster, count, updates)
            session.log(f"creating {count} ConfigMaps")
            rate = cluster.populate(runner.names)
            session.log(f"created at {rate:.0f}/s;"
                        f" {cluster.settle()} ConfigMaps in all once settled")
            for c in CANDIDATES:
                if c.key in pythons:
                    runner.measure(c, pythons[c.key])
                    session.log(f"{c.key}: {runner.results.get(c.key)}")
            for c in CANDIDATES[1:]:
                runner.rows(c)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the children: one adapter per candidate ------------------------------------------------

def rss_kib(field: str = "VmRSS") -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+)", text, re.M)
    return int(match.group(1)) if match else 0


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Counter:
    """Counts the bench's MODIFIED events until ``want``; when the first and last came."""

    def __init__(self, want: int) -> None:
        self.want, self.count, self.first, self.last = want, 0, 0.0, 0.0
        self.deadline = time.monotonic() + CHILD_TIMEOUT / 2

    def seen(self, kind: str, name: str) -> bool:
        """True once ``want`` are in."""
        now = time.monotonic()
        if kind in ("MODIFIED", "PUT") and name.startswith(PREFIX):
            self.first = self.first or now
            self.count += 1
            self.last = now
        if now > self.deadline:
            raise TimeoutError(f"{self.count} of {self.want} events before the deadline")
        return self.count >= self.want


class Tabby:
    page = PAGE

    def __init__(self, kubeconfig: str) -> None:
        from tabby.store.kuberesources import APIResource
        from tabby.store.kubernetes import KubernetesStore
        resources = [APIResource(g, "v1", p, k, n) for g, p, k, n in RESOURCES]
        self.store = KubernetesStore(kubeconfig, resources={r.name: r for r in resources},
                                     page_size=PAGE)
        self.version = importlib.import_module("kubernetes").__version__

    def list_all(self) -> tuple[object, int]:
        result = self.store.list("configmaps")
        return result, len(result)

    def watch(self, rv: str, counter: Counter) -> None:
        with self.store.watch("configmaps", int(rv) + 1) as w:
            while not any([counter.seen(e.type, e.key.name) for e in w.next(1.0)]):
                counter.seen("", "")  # the deadline

    def idle(self, rv: str) -> int:
        self.held = self.store.watch_many([r.name for r in self.store.resources.values()],
                                          int(rv) + 1)
        time.sleep(SETTLE)
        self.held.next(0)
        return len(self.store.resources)


class Typed:
    page = PAGE

    def __init__(self, kubeconfig: str) -> None:
        self.k = importlib.import_module("kubernetes")
        importlib.import_module("kubernetes.watch")
        configuration = self.k.client.Configuration()
        self.k.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        self.api = self.k.client.ApiClient(configuration)
        self.core = self.k.client.CoreV1Api(self.api)
        self.version = self.k.__version__

    def list_all(self) -> tuple[object, int]:
        items: list[Any] = []
        token = None
        while True:
            page = self.core.list_config_map_for_all_namespaces(limit=PAGE, _continue=token)
            items.extend(page.items)
            token = page.metadata._continue
            if not token:
                return items, len(items)

    def watch(self, rv: str, counter: Counter) -> None:
        w = self.k.watch.Watch()
        for e in w.stream(self.core.list_config_map_for_all_namespaces, resource_version=rv,
                          timeout_seconds=300):
            if counter.seen(e["type"], e["object"].metadata.name):
                w.stop()
                return

    def idle(self, rv: str) -> int:
        def one(group: str, kind: str, namespaced: bool) -> None:
            api = getattr(self.k.client, f"{(group.split('.')[0] or 'core').capitalize()}V1Api")
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()
            fn = getattr(api(self.api), f"list_{snake}"
                         + ("_for_all_namespaces" if namespaced else ""))
            for _ in self.k.watch.Watch().stream(fn, resource_version=rv, timeout_seconds=300):
                pass
        return _threads([functools.partial(one, g, k, n) for g, _, k, n in RESOURCES])


class Lightkube:
    page = PAGE

    def __init__(self, kubeconfig: str) -> None:
        lk = importlib.import_module("lightkube")
        config = importlib.import_module("lightkube.config.kubeconfig").KubeConfig
        self.client = lk.Client(config=config.from_file(kubeconfig))
        self.configmap = importlib.import_module("lightkube.resources.core_v1").ConfigMap
        from importlib.metadata import version
        self.version = f"{version('lightkube')} (httpx2 {version('httpx2')})"

    def list_all(self) -> tuple[object, int]:
        items = list(self.client.list(self.configmap, namespace="*", chunk_size=PAGE))
        return items, len(items)

    def watch(self, rv: str, counter: Counter) -> None:
        for kind, obj in self.client.watch(self.configmap, namespace="*", resource_version=rv):
            if counter.seen(kind, obj.metadata.name):
                return

    def idle(self, rv: str) -> int:
        def one(group: str, kind: str, namespaced: bool) -> None:
            module = importlib.import_module(
                f"lightkube.resources.{group.split('.')[0] or 'core'}_v1")
            ns = {"namespace": "*"} if namespaced else {}
            for _ in self.client.watch(getattr(module, kind), resource_version=rv, **ns):
                pass
        return _threads([functools.partial(one, g, k, n) for g, _, k, n in RESOURCES])


class Kr8s:
    page = 100  # kr8s pages its lists by 100, not settable

    def __init__(self, kubeconfig: str) -> None:
        self.kr8s = importlib.import_module("kr8s.asyncio")
        self.loop = asyncio.new_event_loop()
        self.api = self.loop.run_until_complete(self.kr8s.api(kubeconfig=kubeconfig))
        from importlib.metadata import version
        self.version = f"{version('kr8s')} (httpx {version('httpx')})"

    def list_all(self) -> tuple[object, int]:
        async def go() -> list[Any]:
            return [o async for o in self.api.get("configmaps", namespace="all")]
        items = self.loop.run_until_complete(go())
        return items, len(items)

    def watch(self, rv: str, counter: Counter) -> None:
        async def go() -> None:
            async for kind, obj in self.api.watch("configmaps", namespace="all", since=rv):
                if counter.seen(kind, obj.name):
                    return
        self.loop.run_until_complete(go())

    def idle(self, rv: str) -> int:
        async def one(group: str, plural: str) -> None:
            async for _ in self.api.watch(f"{plural}.{group}" if group else plural,
                                          namespace="all", since=rv):
                pass

        async def go() -> int:
            tasks = [asyncio.create_task(one(g, p)) for g, p, _, _ in RESOURCES]
            await asyncio.sleep(SETTLE)
            broken = [t for t in tasks if t.done()]
            if broken:
                raise RuntimeError(f"{len(broken)} watches ended: {broken[0].exception()!r}")
            self.held = tasks
            return len(tasks)
        return self.loop.run_until_complete(go())


def _threads(targets: list[Callable[[], None]]) -> int:
    """Run each target in a daemon thread; after SETTLE, fail if any has ended."""
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)
        errors.append(RuntimeError("a watch ended"))

    threads = [threading.Thread(target=guard, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    time.sleep(SETTLE)
    if errors:
        raise RuntimeError(f"{len(errors)} watches failed: {errors[0]!r}")
    return len(threads)


ADAPTERS: dict[str, Callable[[str], Any]] = {
    "tabby": Tabby, "typed": Typed, "lightkube": Lightkube, "kr8s": Kr8s}


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    lib = ADAPTERS[spec["candidate"]](spec["kubeconfig"])
    out: dict[str, Any] = {"version": lib.version, "page": lib.page}
    if spec["task"] == "list":
        out["rss_base"] = rss_kib()
        times, held = [], None
        for _ in range(3):
            held = None
            start = time.perf_counter()
            held, out["count"] = lib.list_all()
            times.append(time.perf_counter() - start)
        out.update(times=times, rss_held=rss_kib(), rss_peak=rss_kib("VmHWM"))
        del held
    elif spec["task"] == "watch":
        print("READY", flush=True)
        for phase in ("live", "replay"):
            counter = Counter(spec["want"])
            cpu, opened = cpu_s(), time.monotonic()
            lib.watch(spec["rv"], counter)
            out[f"{phase}_cpu"] = cpu_s() - cpu
            # live: first to last event (the writer sets the pace); replay: from opening
            # the watch (connection included) to the last event
            out.update({f"{phase}_first": counter.first if phase == "live" else opened,
                        f"{phase}_last": counter.last})
            if phase == "live":
                out["live_last_wall"] = time.time() - (time.monotonic() - counter.last)
    elif spec["task"] == "idle":
        out["rss_base"] = rss_kib()
        out["watches"] = lib.idle(spec["rv"])
        out.update(rss=rss_kib(), threads=threading.active_count())
    return out


if __name__ == "__main__":
    result = child_main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
    with contextlib.suppress(Exception):
        sys.stdout.close()
    os._exit(0)  # watch threads and streams still open: no orderly shutdown to wait for
