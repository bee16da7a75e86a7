"""Network namespaces the benchmarks make, and running a thread inside one.

Every namespace a benchmark creates is named ``tb-...`` (the benchmarks'
prefix) and deleted by the benchmark that made it, also when it fails.
``entered(name)`` moves the *calling thread* into a namespace with setns(2)
and back out afterwards: processes that thread starts are born there, the
way a container runtime on a node execs its CNI plugins, with no
``ip netns exec`` (a private mount namespace, a remount of /sys) in between.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

PREFIX = "tb-"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class BenchError(RuntimeError):
    """A benchmark could not set up or measure what it meant to."""


def run(argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0) -> str:
    """Run a command to completion; BenchError with its stderr if it fails."""
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({done.returncode}):"
                         f" {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _check(names: Iterable[str]) -> list[str]:
    names = list(names)
    bad = [n for n in names if not n.startswith(PREFIX)]
    if bad:
        raise BenchError(f"benchmark namespaces must be named {PREFIX}...: {bad}")
    return names


def existing() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def ip_batch(commands: Sequence[str], netns: str | None = None, *, force: bool = False) -> None:
    """``ip`` commands (one per line, without ``ip``) in one process, inside ``netns``."""
    if commands:
        run(["ip", *(["-n", netns] if netns else []), *(["-force"] if force else []), "-b", "-"],
            stdin="\n".join(commands) + "\n")


def add(names: Iterable[str]) -> None:
    ip_batch([f"netns add {n}" for n in _check(names)])


def delete(names: Iterable[str]) -> None:
    """Delete those of ``names`` that exist; BenchError if any is still there after."""
    wanted = set(_check(names))
    ip_batch([f"netns delete {n}" for n in sorted(wanted & existing())], force=True)
    left = sorted(wanted & existing())
    if left:
        raise BenchError(f"could not delete namespaces {', '.join(left)}")


def sweep(prefixes: Sequence[str]) -> list[str]:
    """Delete leftovers of an earlier, killed run: namespaces starting with ``prefixes``."""
    stale = sorted(n for n in existing() if n.startswith(tuple(_check(prefixes))))
    delete(stale)
    return stale


def sysctl(netns: str, settings: Mapping[str, str]) -> None:
    run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w",
         *(f"{k}={v}" for k, v in settings.items())])


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise BenchError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the calling thread in namespace ``name`` (None: stay where it is)."""
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05
             ) -> None:
    """Poll ``check`` until it is true; BenchError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
