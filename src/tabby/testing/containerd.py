"""containerd 1.6 started by a test, everything it keeps in one temporary directory.

    with Containerd(netns="lab-node-1") as cd:       # started, answering ``ctr version``
        cd.import_image(busybox_image(cd.dir / "busybox.tar"))
        run = cd.run_cni("web", ["httpd", "-f"], CNIPaths(conf_dir, bin_dir))
        cd.ctr("task", "kill", "-s", "SIGKILL", "web")
        run.wait(10)                                  # ctr ran CNI DEL and removed it
    # stopped: tasks killed, containerd (its PID only) stopped, mounts, cgroups, dir removed

Root, state, the gRPC/ttrpc sockets, the ``opt`` plugin's directory, runc's
state (``--runc-root``) and the I/O FIFOs (``--fifo-dir``) all live in the
temporary directory. The CRI plugin is disabled: containers are made with
``ctr``. containerd is started with ``nsenter --net`` (not ``ip netns exec``,
which remounts /sys and hides the cgroup mounts runc needs) and recorded by
PID; ``stop`` signals exactly that PID, then any shim whose command line names
this instance's socket (shims outlive containerd by design), and the
processes of those shims' containers.

``ctr run --cni`` reads /etc/cni/net.d and /opt/cni/bin, caches results under
/var/lib/cni and runs the plugins in its own network namespace. ``run_cni``
starts it inside ``netns`` and a private mount namespace with the caller's
directories bind-mounted there; a missing mount point is made on an overlay
of its nearest existing parent (upper layer in the temporary directory), so
the machine's /etc, /opt and /var are never written.

The shim keeps its socket in /run/containerd/s (fixed in 1.6; the name is a
hash of containerd's address, the namespace and the container id) and removes
it when it exits normally; ``stop`` removes the sockets of shims it had to
kill, then the directories of that path it found missing at start, if empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabby.errors import LabError

__all__ = ["IMAGE", "CNIPaths", "Containerd", "CtrRun", "busybox_image", "in_private_mounts",
           "installed"]

IMAGE = "docker.io/tabby/busybox:test"
BUSYBOX = Path("/bin/busybox")
SHIM_DIR = Path("/run/containerd/s")
CNI_CONF, CNI_BIN, CNI_CACHE = "/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni"
TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter", "unshare")
_POLL = 0.05

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def installed() -> str | None:
    """None if containerd, ctr, runc, the runc shim and busybox are present, else
    what is missing (for a skip reason)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not BUSYBOX.is_file():
        missing.append(f"{BUSYBOX} (Debian busybox-static)")
    return ", ".join(missing) or None


# -- an OCI image from /bin/busybox ----------------------------------------------

def busybox_image(path: Path, name: str = IMAGE, busybox: Path = BUSYBOX) -> Path:
    """Write an OCI image-layout tar at ``path``: one layer holding ``busybox`` as
    /bin/busybox and a symlink per applet, /tmp, /etc; ``ctr image import`` names the
    image ``name`` (the index's ``io.containerd.image.name`` annotation)."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer = _busybox_layer(busybox)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = blob(_json({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }))
    manifest = blob(_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, **config},
                           "layers": [{"mediaType": OCI_LAYER, **blob(layer)}]}))
    index = _json({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, **manifest,
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}]})
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add(tar, "index.json", index)
        for digest, data in blobs.items():
            _add(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
    return path


def _busybox_layer(busybox: Path) -> bytes:
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777)):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        _add(tar, "bin/busybox", busybox.read_bytes(), mode=0o755)
        for applet in sorted(set(applets) - {"busybox"}):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


# -- ctr run --cni in a namespace of the caller's choosing -------------------------

@dataclass(frozen=True, slots=True)
class CNIPaths:
    """What ``ctr run --cni`` should find at its fixed paths."""

    conf_dir: Path  # -> /etc/cni/net.d (ctr loads the first config file, sorted by name)
    bin_dir: Path  # -> /opt/cni/bin
    cache_dir: Path | None = None  # -> /var/lib/cni (libcni's cached results); None: a fresh one


_MOUNT_SCRIPT = """set -e
scratch=$1; shift
n=0
while [ "$1" != -- ]; do
    src=$1 dst=$2; shift 2
    if [ ! -d "$dst" ]; then
        parent=$dst
        while [ ! -d "$parent" ]; do parent=$(dirname "$parent"); done
        n=$((n + 1))
        mkdir -p "$scratch/$n/up" "$scratch/$n/work"
        mount -t overlay overlay \
            -o "lowerdir=$parent,upperdir=$scratch/$n/up,workdir=$scratch/$n/work" "$parent"
        mkdir -p "$dst"
    fi
    mount --bind "$src" "$dst"
done
shift
exec "$@"
"""


def in_private_mounts(netns: str, binds: Sequence[tuple[Path, str]], scratch: Path,
                      argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` and a new private mount namespace where each
    (source, target) of ``binds`` is bind-mounted; the command execs, so a PID
    recorded for it is ``argv``'s. Nothing mounted there is visible outside."""
    pairs = [str(x) for src, dst in binds for x in (src, dst)]
    return ["nsenter", f"--net=/var/run/netns/{netns}", "unshare", "--mount",
            "--propagation", "private", "sh", "-c", _MOUNT_SCRIPT, "sh", str(scratch),
            *pairs, "--", *argv]


class CtrRun:
    """A foreground ``ctr run --rm --cni`` (the process that runs CNI ADD, then, once
    the task exits, CNI DEL and the container's removal)."""

    def __init__(self, container: str, proc: subprocess.Popen[bytes], log: Path,
                 cache_dir: Path) -> None:
        self.container = container
        self.proc = proc
        self.log = log
        self.cache_dir = cache_dir

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        """The exit code, once ctr has exited; LabError (with its output) after ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"ctr run {self.container} still running after {timeout:g}s:\n"
                           f"{self.output()}") from exc

    def kill(self) -> None:
        """SIGKILL this ctr process (by its PID) if it still runs, and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def cached_results(self) -> list[Path]:
        """libcni's cached ADD results (``results/<network>-<containerID>-<ifname>``)."""
        results = self.cache_dir / "results"
        return sorted(results.iterdir()) if results.is_dir() else []


# -- containerd itself --------------------------------------------------------------

CONFIG = """version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{dir}/c.sock"

[ttrpc]
  address = "{dir}/c.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
"""


class Containerd:
    """One containerd, its own config in a temporary directory, started in ``netns``
    (None: this process's network namespace)."""

    def __init__(self, netns: str | None = None, *, namespace: str = "tabby",
                 base_dir: Path | None = None, start_timeout: float = 20.0) -> None:
        self.netns = netns
        self.namespace = namespace
        self.dir = Path(tempfile.mkdtemp(prefix="tcd-", dir=str(base_dir or "/tmp")))
        self.socket = self.dir / "c.sock"  # short: unix socket paths stop at 107 bytes
        self.config = self.dir / "config.toml"
        self.log = self.dir / "containerd.log"
        self.start_timeout = start_timeout
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._runs: list[CtrRun] = []
        self._made_dirs = [d for d in (SHIM_DIR.parent, SHIM_DIR) if not d.exists()]

    @property
    def cgroup_parent(self) -> str:
        """The cgroup (in every hierarchy) holding this instance's containers' cgroups."""
        return self.dir.name

    def __enter__(self) -> Containerd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start containerd and wait until ``ctr version`` answers; on failure stop it
        and raise LabError with the end of its log."""
        self.config.write_text(CONFIG.format(dir=self.dir))
        prefix = ["nsenter", f"--net=/var/run/netns/{self.netns}"] if self.netns else []
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [*prefix, "containerd", "--config", str(self.config), "--log-level", "info"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.pid = self._proc.pid  # nsenter execs containerd: the same PID
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with {self._proc.returncode}" if self._proc.poll() is not None
                       else f"not answering after {self.start_timeout:g}s")
                tail = self.log_tail()
                self.stop()
                raise LabError(f"containerd {why}; the end of its log:\n{tail}")
            time.sleep(_POLL)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            done = subprocess.run(self.ctr_argv("version"), capture_output=True, timeout=10,
                                  check=False)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- ctr ------------------------------------------------------------------------

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", self.namespace, *args]

    def ctr(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``ctr`` against this containerd; its stdout, LabError if it fails."""
        try:
            done = subprocess.run(self.ctr_argv(*args), capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"ctr {' '.join(args)}: no answer after {timeout:g}s") from exc
        if done.returncode != 0:
            raise LabError(f"ctr {' '.join(args)} failed ({done.returncode}):"
                           f" {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def import_image(self, tar: Path) -> None:
        self.ctr("image", "import", str(tar), timeout=60)

    def exec(self, container: str, argv: Sequence[str], exec_id: str = "probe") -> str:
        """``ctr task exec`` in a running container; its stdout."""
        return self.ctr("task", "exec", "--fifo-dir", str(self.dir / "fifo"),
                        "--exec-id", exec_id, container, *argv)

    def tasks(self) -> dict[str, str]:
        """{container id: status} of this namespace's tasks."""
        lines = self.ctr("task", "list").splitlines()[1:]
        return {f[0]: f[2] for f in (line.split() for line in lines) if len(f) >= 3}

    def containers(self) -> list[str]:
        return self.ctr("container", "list", "--quiet").split()

    def run_cni(self, container: str, argv: Sequence[str], cni: CNIPaths, *,
                image: str = IMAGE) -> CtrRun:
        """Start ``ctr run --rm --cni IMAGE CONTAINER ARGV...`` in the foreground (in the
        background of this process) inside ``self.netns`` with ``cni``'s directories at
        ctr's fixed CNI paths. The CNI container ID ctr uses is ``<namespace>-<container>``."""
        if self.netns is None:
            raise LabError("run_cni needs containerd's network namespace (netns=...)")
        work = self.dir / "runs" / container
        cache = cni.cache_dir or work / "cni-cache"
        for d in (work / "scratch", cache, self.dir / "fifo", self.dir / "runc"):
            d.mkdir(parents=True, exist_ok=True)
        binds = [(cni.conf_dir, CNI_CONF), (cni.bin_dir, CNI_BIN), (cache, CNI_CACHE)]
        ctr = self.ctr_argv("run", "--rm", "--cni", "--fifo-dir", str(self.dir / "fifo"),
                            "--runc-root", str(self.dir / "runc"),
                            "--cgroup", f"/{self.cgroup_parent}/{container}",
                            image, container, *argv)
        log = work / "ctr.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(in_private_mounts(self.netns, binds, work / "scratch", ctr),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        run = CtrRun(container, proc, log, cache)
        self._runs.append(run)
        return run

    # -- teardown -------------------------------------------------------------------

    def stop(self, grace: float = 10.0) -> None:
        """Remove what runs, stop containerd by its PID, then clean up: leftover shims of
        this instance (and their containers) by PID and their sockets, mounts under the
        directory, cgroups, the directory, and the shim socket directories this
        instance made. Safe to repeat."""
        if self._proc is not None and self._proc.poll() is None:
            self._remove_all(grace)
        for run in self._runs:
            run.kill()
        if self._proc is not None:
            _terminate(self._proc, grace)
        for pid in self._shims():
            for child in _children(pid):
                _kill(child)
            _kill(pid)
        for run in self._runs:  # a shim removes its socket itself unless it was killed
            self.shim_socket(run.container).unlink(missing_ok=True)
        _unmount_under(self.dir)
        _remove_cgroups(self.cgroup_parent, grace)
        shutil.rmtree(self.dir, ignore_errors=True)
        for made in reversed(self._made_dirs):
            with contextlib.suppress(OSError):
                made.rmdir()  # only if empty: someone else's shims may live there now

    def shim_socket(self, container: str) -> Path:
        """Where containerd 1.6 puts the shim socket of ``container``: a hash of this
        instance's address, namespace and container id, under /run/containerd/s."""
        key = f"{self.socket}/{self.namespace}/{container}".encode()
        return SHIM_DIR / hashlib.sha256(key).hexdigest()

    def _remove_all(self, grace: float) -> None:
        """Kill every task; let each foreground ``ctr run`` finish (CNI DEL, removal);
        force-delete what is left."""
        with contextlib.suppress(LabError):
            for container in self.tasks():
                with contextlib.suppress(LabError):
                    self.ctr("task", "kill", "--signal", "SIGKILL", container)
        deadline = time.monotonic() + grace
        for run in self._runs:
            with contextlib.suppress(LabError):
                run.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(LabError):
            for container in self.tasks():
                with contextlib.suppress(LabError):
                    self.ctr("task", "delete", "--force", container)
        with contextlib.suppress(LabError):
            for container in self.containers():
                with contextlib.suppress(LabError):
                    self.ctr("container", "delete", container)

    def processes(self) -> list[int]:
        """PIDs of this instance still running: containerd and its shims."""
        own = [self._proc.pid] if self._proc is not None and self._proc.poll() is None else []
        return own + self._shims()

    def _shims(self) -> list[int]:
        """PIDs of shims serving this containerd (their command line names its socket)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and \
                    str(self.socket).encode() in argv:
                found.append(int(entry.name))
        return found


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``proc`` (our child, by PID), SIGKILL after ``grace`` seconds; reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _remove_cgroups(name: str, timeout: float) -> None:
    """rmdir the cgroup ``name`` and those below it in every hierarchy (runc removes a
    container's own cgroup, not the parent ``ctr run --cgroup`` named; a killed
    container's cgroup empties once its processes are reaped: retried until ``timeout``)."""
    root = Path("/sys/fs/cgroup")
    deadline = time.monotonic() + timeout
    while True:
        tops = [*root.glob(name), *root.glob(f"*/{name}")]
        for top in tops:
            below = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
            for cgroup in (*reversed(below), top):
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
        if not tops or time.monotonic() > deadline:
            return
        time.sleep(_POLL)


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` in this mount namespace, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # \040 etc.
        if point.startswith(prefix):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _unmount_under(root: Path) -> None:
    for point in _mounts_under(root):
        done = subprocess.run(["umount", point], capture_output=True, timeout=30, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30,
                           check=False)

