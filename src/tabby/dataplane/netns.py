"""Network namespaces by thread: enter one for a moment, make a scratch one, sysctls in one.

Linux lets one *thread* enter a network namespace with setns(2) while the rest
of the process stays put, and a netlink socket (and a ``/proc/sys/net`` file)
belongs to the namespace of the thread that opened it. So a handle on a pod's
namespace enters it on the calling thread just long enough to open its socket
(``entered_netns``), and sysctls of that namespace are read and written the
same way (``sysctl``). A namespace is named by path (``/var/run/netns/X`` or
``/proc/PID/ns/net``); None means the calling thread's own.

Both kernel adapters (``tabby.dataplane.netlink``, pyroute2; and
``tabby.dataplane.rtlink``, raw sockets) use these; nothing here imports
pyroute2.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from tabby.dataplane.nlvalues import CallCounts
from tabby.errors import NetlinkError

__all__ = ["entered_netns", "in_netns", "sysctl", "unshare_netns", "where"]

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@contextlib.contextmanager
def entered_netns(path: str) -> Iterator[None]:
    """Run the body with the *calling thread* inside the namespace at ``path``.

    Only what the body opens (sockets, /proc/sys/net files) belongs to that
    namespace; the thread is back in its own namespace afterwards.
    """
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetlinkError(f"network namespace {path}: {exc.strerror}", exc.errno or 0) from exc
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as exc:
            raise NetlinkError(f"cannot enter network namespace {path}: {exc.strerror}",
                               exc.errno or 0) from exc
        try:
            yield
        finally:
            # Failing to return would leave this thread in the pod's namespace.
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def in_netns(path: str | None) -> contextlib.AbstractContextManager[None]:
    """``entered_netns(path)``, or nothing for None (the thread's own namespace)."""
    return entered_netns(path) if path else contextlib.nullcontext()


def where(netns: str | None) -> str:
    """The " in <netns>" of an error message about a handle on ``netns`` ("": its own)."""
    return f" in {netns}" if netns else ""


def unshare_netns() -> None:
    """Move the calling thread into a new, empty network namespace (it vanishes with
    the thread, unless something else holds it)."""
    if _libc.unshare(_CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise NetlinkError(f"cannot make a scratch namespace: {os.strerror(code)}", code)


def sysctl(counts: CallCounts, netns: str | None, key: str, value: str | None) -> str:
    """Read (``value`` None) or write ``/proc/sys/<key>`` (``net/ipv4/conf/X/proxy_arp``)
    in ``netns``; the value read or written. Counted as sysctl_get or sysctl_set."""
    op = "sysctl_get" if value is None else "sysctl_set"
    path = "/proc/sys/" + key.strip("/")
    try:
        with in_netns(netns):
            if value is None:
                with open(path, encoding="ascii") as fh:
                    result = fh.read().strip()
            else:
                with open(path, "w", encoding="ascii") as fh:
                    fh.write(value)
                result = value
    except OSError as exc:
        counts.add(op, failed=True)
        raise NetlinkError(f"sysctl {key}{where(netns)}: {exc.strerror}",
                           exc.errno or 0) from exc
    counts.add(op)
    return result
