"""IPAM allocations per second: tabby-ipam beside the reference host-local plugin.

Both plugins are driven the same way (``bench.cnidrive``): one exec per ADD,
the CNI environment, the network config on stdin (as a main plugin such as
``bridge`` delegates it), first one at a time (the targets interleaved call by
call), then from 8 concurrent workers. tabby-ipam runs as a node runs it: a
launcher like the ones ``tabby install-cni`` and the lab write (the real
interpreter with ``-IS``: no site; this checkout and, for etcd's client, this
virtualenv's site-packages on sys.path). One more sequential row runs the
virtualenv's ``tabby-ipam`` console script (site and its .pth files imported
first), for scale. tabby runs on SQLite (a fresh temp file per run, the pool
written first) and on a real 3-member etcd cluster on loopback (a fresh node
name per run, so each run starts without a block); host-local keeps its files
in a fresh temp dataDir per run, range 198.19.0.0/16. Every run ends with a
count of what was allocated. Kubernetes mode, when its programs are built: a
real control plane on loopback (``tabby.kube.controlplane``) with tabby's CRDs,
the datastore ``kubernetes:///ADMIN-KUBECONFIG``, a quarter of the ADDs, one at
a time and from 8 workers, beside host-local's runs above.

Separate rows give the IPAM library's own rate (``IPAM.assign`` in one
process; in 8 processes at once, started together behind a barrier): no
process start-up, so not the same shape as the exec-per-ADD peer beside them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import multiprocessing
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from multiprocessing.synchronize import Barrier
from pathlib import Path
from queue import Empty
from typing import Any

from bench.cnidrive import Run, Target, concurrent, sequential
from bench.netns import BenchError
from bench.report import Row
from bench.session import Session
from tabby.errors import TabbyError

SECTION = "IPAM allocations"
NETWORK = "tb-bench"
POOL = ipaddress.IPv4Network("198.19.0.0/16")
BLOCK_SIZE = 26
HOST_LOCAL = Path("/usr/lib/cni/host-local")
CNI_PATH = "/usr/lib/cni"
WORKERS = 8
UNIT = "allocations/s"
LIBRARY_TIMEOUT = 300.0


def tabby_ipam() -> Path:
    """The ``tabby-ipam`` console script of this installation (it execs the venv's
    python, a symlink to the real interpreter: no shim)."""
    script = Path(sys.executable).parent / "tabby-ipam"
    if not script.is_file():
        raise BenchError(f"{script} is missing: install tabby (make bootstrap)")
    return script


def launcher(directory: Path) -> Path:
    """``directory/tabby-ipam``: the plugin as install-cni's launcher runs it (the real
    interpreter, ``-IS``), on this checkout, with this process's site-packages last on
    sys.path (etcd's client; the SQLite path imports none of it)."""
    from tabby.cni.install import import_root, real_interpreter

    sites = [p for p in sys.path if p.endswith("site-packages")]  # this process's, .pth'd
    path = directory / "tabby-ipam"
    path.write_text(f"#!{real_interpreter()} -IS\n"
                    f"import sys\nsys.path.insert(0, {str(import_root())!r})\n"
                    f"sys.path += {sites!r}\n"
                    "from tabby.ipam.plugin import main\nsys.exit(main())\n")
    path.chmod(0o755)
    return path


def network_config(ipam: dict[str, Any]) -> dict[str, Any]:
    """The config a main plugin hands its IPAM plugin: the whole network config."""
    return {"cniVersion": "1.0.0", "name": NETWORK, "type": "bridge", "ipam": ipam}


def write_pool(url: str) -> None:
    from tabby.model import IPPool, ObjectMeta
    from tabby.model.ippool import IPPoolSpec
    from tabby.store import open_store
    from tabby.store.client import Client

    client = Client(open_store(url))
    try:
        client.apply(IPPool(ObjectMeta("tb-bench"), IPPoolSpec(cidr=POOL, block_size=BLOCK_SIZE)))
    finally:
        client.store.close()


def handles_held(url: str, prefix: str) -> int:
    from tabby.ipam import IPAM
    from tabby.store import open_store
    from tabby.store.client import Client

    client = Client(open_store(url))
    try:
        return len(IPAM(client).handles(prefix=prefix))
    finally:
        client.store.close()


class Stores:
    """Where each run keeps its state: fresh SQLite files and host-local dirs, one etcd."""

    def __init__(self, tmp: Path, etcd_url: str | None) -> None:
        self.tmp = tmp
        self.etcd_url = etcd_url
        self.plugin = launcher(tmp)

    def sqlite(self, run: str) -> str:
        url = f"sqlite://{self.tmp / f'{run}.db'}"
        write_pool(url)
        return url

    def host_local(self, run: str) -> Target:
        ipam = {"type": "host-local", "dataDir": str(self.tmp / f"hl-{run}"),
                "ranges": [[{"subnet": str(POOL)}]]}
        return Target("host-local", str(HOST_LOCAL), network_config(ipam), CNI_PATH)

    def tabby(self, url: str, node: str, binary: Path | None = None) -> Target:
        ipam = {"type": "tabby-ipam", "datastore": url, "node": node,
                "assign_ipv4": True, "assign_ipv6": False}
        return Target("tabby-ipam", str(binary or self.plugin), network_config(ipam), CNI_PATH)


def ids(run: str, count: int) -> list[str]:
    tag = secrets.token_hex(4)
    return [f"{run}-{tag}-{i:04d}" for i in range(count)]


def check_tabby(url: str, cids: Sequence[str]) -> None:
    held = handles_held(url, f"{NETWORK}.{cids[0].rsplit('-', 1)[0]}-")
    if held != len(cids):
        raise BenchError(f"tabby-ipam: {held} handles held after {len(cids)} ADDs ({url})")


def check_host_local(target: Target, cids: Sequence[str]) -> None:
    data = Path(target.config["ipam"]["dataDir"]) / NETWORK
    held = [p for p in data.iterdir() if p.name[0].isdigit()] if data.is_dir() else []
    if len(held) != len(cids):
        raise BenchError(f"host-local: {len(held)} addresses held after {len(cids)} ADDs")


def exec_rows(session: Session, stores: Stores, count: int) -> dict[str, Run]:
    """Exec-per-ADD rows; host-local's runs (the peers of the library rows too)."""
    return {"seq": one_at_a_time(session, stores, count),
            "conc": all_at_once(session, stores, count)}


def one_at_a_time(session: Session, stores: Stores, count: int) -> Run:
    """tabby on SQLite (launcher and console script), host-local and tabby on etcd,
    interleaved call by call."""
    sq_url, console_url = stores.sqlite("seq"), stores.sqlite("seq-console")
    targets = [stores.tabby(sq_url, "bench-seq"), stores.host_local("seq"),
               stores.tabby(console_url, "bench-seq", tabby_ipam())]
    if stores.etcd_url:
        targets.append(stores.tabby(stores.etcd_url, "bench-seq"))
    id_lists = [ids(f"s{k}", count) for k in range(len(targets))]
    session.log(f"{count} ADDs one at a time, {len(targets)} targets interleaved")
    runs = sequential(targets, "ADD", id_lists)
    check_tabby(sq_url, id_lists[0])
    check_host_local(targets[1], id_lists[1])
    check_tabby(console_url, id_lists[2])
    if stores.etcd_url:
        check_tabby(stores.etcd_url, id_lists[3])
    session.add(_row("exec per ADD, sequential, SQLite", runs[0], runs[1]))
    session.add(_row("exec per ADD, sequential, SQLite, venv console script", runs[2], runs[1],
                     f"{len(runs[2].latencies)} ADDs; p50 {runs[2].p50_ms:.1f} ms vs"
                     f" {runs[1].p50_ms:.1f} ms per exec; site and the venv's .pth files"
                     " imported first (a node runs the -IS launcher)"))
    if stores.etcd_url:
        session.add(_row("exec per ADD, sequential, etcd (3 members)", runs[3], runs[1]))
    return runs[1]


def all_at_once(session: Session, stores: Stores, count: int) -> Run:
    """``count`` ADDs from 8 workers: host-local, then tabby on SQLite, then on etcd."""
    hl = stores.host_local("conc")
    hl_ids = ids("chl", count)
    session.log(f"{count} ADDs from {WORKERS} workers")
    peer = concurrent(hl, "ADD", hl_ids, WORKERS)
    check_host_local(hl, hl_ids)
    url = stores.sqlite("conc")
    run_ids = ids("csq", count)
    run = concurrent(stores.tabby(url, "bench-conc"), "ADD", run_ids, WORKERS)
    check_tabby(url, run_ids)
    session.add(_row(f"exec per ADD, {WORKERS} concurrent, SQLite", run, peer))
    if stores.etcd_url:
        run_ids = ids("cet", count)
        run = concurrent(stores.tabby(stores.etcd_url, "bench-conc"), "ADD", run_ids, WORKERS)
        check_tabby(stores.etcd_url, run_ids)
        session.add(_row(f"exec per ADD, {WORKERS} concurrent, etcd (3 members)", run, peer))
    return peer


def _row(what: str, tabby: Run, peer: Run, note: str = "") -> Row:
    text = note or (f"{len(tabby.latencies)} ADDs; p50 {tabby.p50_ms:.1f} ms vs"
                    f" {peer.p50_ms:.1f} ms per exec")
    return Row(SECTION, what, tabby.ops_per_sec, "host-local (exec)", peer.ops_per_sec, UNIT,
               True, text)


# -- the library, in process ------------------------------------------------------------

def assign_all(url: str, node: str, handles: Sequence[str]) -> tuple[float, float]:
    """IPAM.assign each handle on one client; (start, end) on the monotonic clock."""
    from tabby.ipam import IPAM
    from tabby.store import open_store
    from tabby.store.client import Client

    client = Client(open_store(url))
    try:
        ipam = IPAM(client)
        start = time.monotonic()
        for h in handles:
            ipam.assign(h, node, num_v4=1, num_v6=0, attrs={"node": node, "pod": h})
        return start, time.monotonic()
    finally:
        client.store.close()


def _library_worker(url: str, node: str, handles: list[str], barrier: Barrier,
                    out: multiprocessing.Queue[tuple[float, float, str]]) -> None:
    from tabby.ipam import IPAM
    from tabby.store import open_store
    from tabby.store.client import Client

    try:
        client = Client(open_store(url))
        try:
            ipam = IPAM(client)
            ipam.config()  # connect (and warm up) before the clock starts
            barrier.wait(LIBRARY_TIMEOUT)
            start = time.monotonic()
            for h in handles:
                ipam.assign(h, node, num_v4=1, num_v6=0, attrs={"node": node, "pod": h})
            out.put((start, time.monotonic(), ""))
        finally:
            client.store.close()
    except Exception as exc:
        barrier.abort()
        out.put((0.0, 0.0, f"{type(exc).__name__}: {exc}"))


def assign_processes(url: str, node: str, handles: Sequence[str], processes: int) -> float:
    """Allocations per second of ``processes`` processes assigning ``handles`` together
    (all on ``node``: they race for its blocks), from the first start to the last end."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out: multiprocessing.Queue[tuple[float, float, str]] = ctx.Queue()
    chunks = [list(handles[i::processes]) for i in range(processes)]
    procs = [ctx.Process(target=_library_worker, args=(url, node, c, barrier, out))
             for c in chunks]
    results: list[tuple[float, float, str]] = []
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + LIBRARY_TIMEOUT
        while len(results) < processes:
            try:
                results.append(out.get(timeout=0.5))
            except Empty:
                if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                    raise BenchError("library workers died or hung") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [e for _, _, e in results if e]
    if errors:
        raise BenchError(f"library workers failed: {errors[0]}")
    wall = max(e for _, e, _ in results) - min(s for s, _, _ in results)
    return len(handles) / wall


def library_rows(session: Session, stores: Stores, count: int, peer: dict[str, Run]) -> None:
    note = ("in-process IPAM.assign, no exec: not the same shape as the peer (a process"
            " per ADD), shown for scale; {n} allocations")
    backends = [("SQLite", stores.sqlite("lib1"), stores.sqlite("lib8"))]
    if stores.etcd_url:
        backends.append(("etcd (3 members)", stores.etcd_url, stores.etcd_url))
    for label, url1, url8 in backends:
        handles = [f"{NETWORK}.lib1-{secrets.token_hex(4)}-{i}.eth0" for i in range(count)]
        start, end = assign_all(url1, "bench-lib1", handles)
        session.add(Row(SECTION, f"library, 1 process, {label}", count / (end - start),
                        "host-local (exec, sequential)", peer["seq"].ops_per_sec, UNIT, True,
                        note.format(n=count)))
        handles = [f"{NETWORK}.lib8-{secrets.token_hex(4)}-{i}.eth0" for i in range(count)]
        rate = assign_processes(url8, "bench-lib8", handles, WORKERS)
        session.add(Row(SECTION, f"library, {WORKERS} processes, {label}", rate,
                        f"host-local (exec, {WORKERS} concurrent)", peer["conc"].ops_per_sec,
                        UNIT, True, note.format(n=count)))


# -- Kubernetes mode ----------------------------------------------------------------------

K8S_SERVICE_RANGE = "198.18.128.0/20"
CRDS = Path(__file__).resolve().parents[1] / "manifests" / "crds.yaml"


@contextlib.contextmanager
def api_server(tmp: Path) -> Iterator[str]:
    """A real control plane (etcd, kube-apiserver, controller-manager, scheduler) with
    tabby's CRDs applied; the ``kubernetes:///ADMIN-KUBECONFIG`` datastore URL."""
    from tabby.kube import binaries
    from tabby.kube.controlplane import ControlPlane

    with ControlPlane(tmp / "k8s", service_ranges=[K8S_SERVICE_RANGE]) as cp:
        kubectl = [binaries.program("kubectl"), "--kubeconfig", str(cp.admin_kubeconfig)]
        for args in (["apply", "--server-side", "-f", str(CRDS)],
                     ["wait", "--for=condition=Established", "--timeout=120s", "crd", "--all"]):
            done = subprocess.run([*kubectl, *args], capture_output=True, text=True,
                                  timeout=180, check=False)
            if done.returncode != 0:
                raise BenchError(f"kubectl {args[0]}: {done.stderr.strip()}")
        url = f"kubernetes://{cp.admin_kubeconfig}"
        write_pool(url)
        yield url


def kubernetes_rows(session: Session, stores: Stores, count: int, peer: dict[str, Run]) -> None:
    """tabby-ipam on the Kubernetes API (tabby's CRDs on a real kube-apiserver), one at a
    time and from 8 workers, beside host-local's runs above."""
    from tabby.kube import binaries
    try:
        binaries.bin_dir()
    except TabbyError as e:
        session.log(f"Kubernetes mode skipped: {e}")
        return
    with api_server(stores.tmp) as url:
        run_ids = ids("sk8", count)
        session.log(f"{count} ADDs one at a time on the Kubernetes API")
        run = sequential([stores.tabby(url, "bench-k8s-seq")], "ADD", [run_ids])[0]
        check_tabby(url, run_ids)
        session.add(_row("exec per ADD, sequential, Kubernetes API", run, peer["seq"]))
        run_ids = ids("ck8", count)
        run = concurrent(stores.tabby(url, "bench-k8s-conc"), "ADD", run_ids, WORKERS)
        check_tabby(url, run_ids)
        session.add(_row(f"exec per ADD, {WORKERS} concurrent, Kubernetes API", run,
                         peer["conc"]))


def run(session: Session) -> None:
    count = 40 if session.quick else 200
    if not HOST_LOCAL.is_file():
        raise BenchError(f"{HOST_LOCAL} is missing (Debian package containernetworking-plugins)")
    tmp = Path(tempfile.mkdtemp(prefix="tb-ipam-"))
    cluster = None
    try:
        etcd_url = None
        with session.part("start a 3-member etcd cluster"):
            from tabby.testing.etcd import EtcdCluster
            cluster = EtcdCluster(3, base_dir=str(tmp)).start()
            write_pool(cluster.url)
            etcd_url = cluster.url
        stores = Stores(tmp, etcd_url)
        peer = exec_rows(session, stores, count)
        with session.part("Kubernetes mode"):
            kubernetes_rows(session, stores, count // 4, peer)
        with session.part("library rates"):
            library_rows(session, stores, 2 * count, peer)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
