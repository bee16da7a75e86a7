"""The lab's seam to the machine: iproute2 commands and the processes it starts.

Everything the lab does to the kernel goes through ``ip`` (batched per
namespace: one process per namespace, not one per change) and ``sysctl`` run
inside a namespace; the lab never touches the root namespace's networking.

Long-lived processes (agents, listeners, etcd) are started with
``posix_spawn`` in a session of their own, so they outlive the CLI that started
them; they are identified by ``Proc`` (PID + start time) and stopped by PID
only: SIGTERM, a deadline, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tabby.errors import LabError
from tabby.lab.state import Proc

NETNS_DIR = Path("/run/netns")


def run(argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0) -> str:
    """Run a command to completion; LabError naming it and its stderr if it fails."""
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: not installed ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: no answer after {timeout:g}s") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {detail}")
    return done.stdout


def ip_batch(commands: Sequence[str], netns: str | None = None, *, force: bool = False) -> None:
    """Run ``ip`` commands (one per line, without the leading ``ip``) in one process."""
    if not commands:
        return
    argv = ["ip", *(["-n", netns] if netns else []), *(["-force"] if force else []), "-b", "-"]
    try:
        run(argv, stdin="\n".join(commands) + "\n")
    except LabError as exc:
        where = f" in {netns}" if netns else ""
        raise LabError(f"configuring the lab{where}: {exc}") from exc


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` (``ip netns exec`` execs it: the PID is the command's)."""
    return ["ip", "netns", "exec", netns, *argv]


def netns_list() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def add_netns(names: Iterable[str]) -> None:
    ip_batch([f"netns add {name}" for name in names])


def delete_netns(names: Iterable[str]) -> None:
    """Delete those of ``names`` that exist (the rest are already gone)."""
    present = netns_list()
    ip_batch([f"netns delete {n}" for n in names if n in present], force=True)
    left = sorted(set(names) & netns_list())
    if left:
        raise LabError(f"could not delete namespaces {', '.join(left)}")


def link_names(netns: str) -> set[str]:
    """Names of the links in ``netns``."""
    out = run(["ip", "-n", netns, "-o", "link", "show"])
    return {line.split(": ", 2)[1].split("@")[0] for line in out.splitlines() if ": " in line}


def sysctl(netns: str, settings: Mapping[str, str]) -> None:
    run(in_netns(netns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]))


# -- processes ----------------------------------------------------------------

def spawn(argv: Sequence[str], role: str, log: Path, *, stdout_fd: int | None = None,
          env: Mapping[str, str] | None = None) -> Proc:
    """Start ``argv`` in its own session with stderr (and stdout unless ``stdout_fd``)
    appended to ``log``; stdin is /dev/null."""
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
    ]
    if stdout_fd is None:
        actions.append((os.POSIX_SPAWN_DUP2, 2, 1))
    else:
        actions.append((os.POSIX_SPAWN_DUP2, stdout_fd, 1))
    try:
        pid = os.posix_spawnp(argv[0], list(argv), dict(env if env is not None else os.environ),
                              file_actions=actions, setsid=True)
    except OSError as exc:
        raise LabError(f"cannot start {role} ({argv[0]}): {exc}") from exc
    start = start_time(pid)
    if start is None:  # gone already: still record it so nothing leaks unexplained
        start = 0
    return Proc(pid, start, role)


def spawn_ready(argv: Sequence[str], role: str, log: Path, timeout: float = 10.0) -> Proc:
    """``spawn`` a process that prints ``ready`` on stdout once it serves; wait for
    that line. LabError with the log's tail if it does not come (the process is stopped)."""
    read_end, write_end = os.pipe()
    try:
        proc = spawn(argv, role, log, stdout_fd=write_end)
    finally:
        os.close(write_end)
    try:
        line = read_line(read_end, timeout)
    finally:
        os.close(read_end)
    if line != "ready":
        stop([proc])
        raise LabError(f"{role} did not start; the end of {log}:\n{tail(log)}")
    return proc


def read_line(fd: int, timeout: float) -> str:
    """One line from a pipe within ``timeout`` seconds ("" on timeout or EOF)."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").split("\n", 1)[0].strip()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of ``pid`` or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return st[1] if st else None


def alive(proc: Proc) -> bool:
    """True while the process recorded as ``proc`` runs (not a zombie, not a new PID)."""
    _reap(proc.pid)
    st = _stat(proc.pid)
    return st is not None and st[0] not in ("Z", "X") and st[1] == proc.start


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is a dead child of ours (nothing otherwise)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(procs: Iterable[Proc], grace: float = 5.0) -> list[Proc]:
    """SIGTERM each live ``proc``, SIGKILL those still alive after ``grace`` seconds.

    Returns the processes that had to be killed. Signals go to the recorded PID
    only, and only while it is still the recorded process.
    """
    running = [p for p in procs if alive(p)]
    _signal(running, signal.SIGTERM)
    running = wait_gone(running, grace)
    killed = list(running)
    _signal(running, signal.SIGKILL)
    running = wait_gone(running, 5.0)
    if running:
        raise LabError("processes survived SIGKILL: " + ", ".join(
            f"{p.role} (pid {p.pid})" for p in running))
    return killed


def _signal(procs: Iterable[Proc], sig: signal.Signals) -> None:
    for p in procs:
        if alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)


def wait_gone(procs: Sequence[Proc], timeout: float) -> list[Proc]:
    """Poll until every proc has exited or ``timeout`` passed; the ones left running."""
    deadline = time.monotonic() + timeout
    running = [p for p in procs if alive(p)]
    while running and time.monotonic() < deadline:
        time.sleep(0.02)
        running = [p for p in running if alive(p)]
    return running


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"
