"""tabby's container image in tests: built by ``scripts/build-image``, run by containerd.

    image = build_image(checkout / "scripts" / "build-image")  # cached: seconds
    with Containerd(netns="lab-node-1") as cd:
        cd.import_image(image.tar)
        print(run_once(cd, image.name, "check", ["tabby", "--version"]))
        log = run_detached(cd, image.name, "agent", ["tabby", "agent", ...],
                           netns="lab-node-1",
                           binds=[Bind(lab_dir), Bind(Path("/run/netns"), slave=True)])
    # Containerd.stop killed the task and removed the container, its cgroup, its log

``build_image`` runs the script (which builds the image or finds it in its cache)
and reads the image's name from the archive's ``index.json``, the name
``ctr images import`` gives it.

``run_detached`` is ``ctr run --detach --privileged``: the container joins the
named network namespace (a lab node's, i.e. the node's host network), sees each
``Bind`` at the same path as outside, and its stdout and stderr go to a file
(``--log-uri``). runc's state, the FIFOs and the cgroup live under the
Containerd's own directory and cgroup, so ``Containerd.stop`` removes them as it
does for ``Containerd.run_cni``. A ``slave`` bind (``rbind:rslave``) follows
mounts made outside after the container started: the network namespaces under
/run/netns that the lab makes for pods later, and their removal.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tabby.errors import LabError
from tabby.testing.containerd import Containerd

__all__ = ["Bind", "BuiltImage", "build_image", "image_name", "run_detached", "run_once",
           "task_pid"]

BUILD_TIMEOUT = 1200.0  # a cold build is about a minute here; a slow mirror is not

REF_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


@dataclass(frozen=True, slots=True)
class BuiltImage:
    tar: Path  # the OCI archive in the build cache
    name: str  # e.g. localhost/tabby:0.1.0
    seconds: float  # how long build-image took (a cache hit: about a second)
    cached: bool  # build-image found it in its cache


@dataclass(frozen=True, slots=True)
class Bind:
    """A host path bind-mounted at the same path inside the container."""

    path: Path
    slave: bool = False  # rslave: later mounts and unmounts below ``path`` propagate in

    def ctr_flag(self) -> str:
        options = "rbind:rw" + (":rslave" if self.slave else ":rprivate")
        return f"type=bind,src={self.path},dst={self.path},options={options}"


def build_image(script: Path, timeout: float = BUILD_TIMEOUT) -> BuiltImage:
    """Run ``script`` (``scripts/build-image``); the image it built or found cached.
    LabError with the end of its output if it fails."""
    if not script.is_file():
        raise LabError(f"{script} not found: the image is built from a checkout of tabby")
    started = time.monotonic()
    try:
        done = subprocess.run([str(script)], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{script}: not done after {timeout:g}s") from exc
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-25:])
        raise LabError(f"{script} failed ({done.returncode}):\n{tail}")
    lines = done.stdout.split()
    if not lines:
        raise LabError(f"{script} printed no image path:\n{done.stderr}")
    tar = Path(lines[-1])
    return BuiltImage(tar, image_name(tar), seconds, "build-image: cached:" in done.stderr)


def image_name(tar: Path) -> str:
    """The name ``ctr images import`` gives the (single) image of an OCI archive."""
    try:
        with tarfile.open(tar) as archive:
            member = archive.extractfile("index.json")
            if member is None:
                raise KeyError("index.json")
            index = json.load(member)
        annotations = index["manifests"][0].get("annotations") or {}
    except (OSError, KeyError, IndexError, ValueError, tarfile.TarError) as exc:
        raise LabError(f"{tar}: not an OCI archive with an image in index.json ({exc})") from exc
    name = next((annotations[k] for k in REF_ANNOTATIONS if k in annotations), None)
    if not isinstance(name, str):
        raise LabError(f"{tar}: its image has no name annotation ({', '.join(REF_ANNOTATIONS)})")
    return name


def _run_flags(cd: Containerd, container: str) -> list[str]:
    """Where runc keeps its state, the FIFOs and the cgroup: under ``cd``'s own."""
    for d in (cd.dir / "fifo", cd.dir / "runc"):
        d.mkdir(parents=True, exist_ok=True)
    return ["--fifo-dir", str(cd.dir / "fifo"), "--runc-root", str(cd.dir / "runc"),
            "--cgroup", f"/{cd.cgroup_parent}/{container}"]


def run_once(cd: Containerd, image: str, container: str, argv: Sequence[str] = (),
             timeout: float = 60.0) -> str:
    """``ctr run --rm IMAGE CONTAINER [ARGV...]`` in the foreground (no ARGV: the image's
    entrypoint and command); its output. LabError if it exits non-zero."""
    return cd.ctr("run", "--rm", *_run_flags(cd, container), image, container, *argv,
                  timeout=timeout)


def run_detached(cd: Containerd, image: str, container: str, argv: Sequence[str], *,
                 netns: str, binds: Sequence[Bind] = ()) -> Path:
    """Start ``argv`` from ``image`` as a privileged container in network namespace
    ``netns`` with ``binds``; the file its stdout and stderr go to."""
    log = cd.dir / "runs" / container / "output.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    mounts = [flag for bind in binds for flag in ("--mount", bind.ctr_flag())]
    cd.ctr("run", "--detach", "--privileged", "--with-ns",
           f"network:/var/run/netns/{netns}", *mounts, "--log-uri", f"file://{log}",
           *_run_flags(cd, container), image, container, *argv)
    return log


def task_pid(cd: Containerd, container: str) -> int | None:
    """The PID (in this PID namespace) of ``container``'s task, None if it has none."""
    for line in cd.ctr("task", "list").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == container and fields[1].isdigit():
            return int(fields[1])
    return None
