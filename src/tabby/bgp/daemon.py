"""One BIRD and its files: check a config, swap it in, (re)load, start, keep it running.

    bird = Bird(Path("/run/tabby/bird"))       bird.conf, bird.ctl, bird.pid, bird.log
    bird.apply(text) -> list[str]              problems ([] when BIRD runs ``text``)
    bird.supervise()                           restart BIRD whenever it dies
    bird.close()                               stop supervising; BIRD keeps running

``apply`` writes ``bird.conf.new``, has ``bird -p -c`` parse it and only then
renames it over ``bird.conf``: a config BIRD would refuse never replaces the
one it runs. A running BIRD is reloaded through its control socket
(``configure``); otherwise it is started, in the caller's network namespace
(the agent runs inside the node's; tools and tests may name another), in the
foreground as a child in its own session, logging to ``bird.log``.

When the new text differs from the running one only in the origins' static
routes (``  route NET blackhole;`` lines: a pod claimed or gave back a block,
the common change), the separate ``bird -p`` process is skipped (13 ms p50 here,
on the path from a pod's ADD to its route on the other nodes): the running BIRD
parses ``bird.conf.new`` itself (``configure "bird.conf.new"``, which keeps the
old config if the new one does not parse), and only once it accepted it does
the file replace ``bird.conf``. Any other change is checked with ``bird -p``.

BIRD outlives the agent, as the dataplane does: a new agent adopts the BIRD
named by ``bird.pid`` if that process is BIRD running this directory's
config. The supervisor thread waits for the BIRD it knows (a child, or an
adopted process through a pidfd) and starts a new one when it exits, with
``-R`` (graceful-restart recovery: the kernel routes BIRD left behind stay
until its sessions are back). A first start in a directory without a stale
``bird.pid`` goes without ``-R`` so routes reach the kernel at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from tabby.bgp.control import BirdControl, BirdError

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
CHECK_TIMEOUT = 20.0
MAX_BACKOFF = 10.0
STABLE = 30.0  # a BIRD that ran this long before dying is restarted without delay
# An origin as tabby.bgp.config renders it, comment and all (anything else is structural).
_ORIGIN = re.compile(r"  route ([0-9A-Fa-f.:]+/[0-9]+) blackhole;(?:  # [^\n]*)?")


class Bird:
    def __init__(self, directory: Path | str, binary: str | None = None,
                 start_timeout: float = START_TIMEOUT, netns: str | None = None) -> None:
        self.dir = Path(directory)
        self.netns = netns  # run BIRD in this namespace (path); None: the caller's
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "bird.conf"
        self.socket = self.dir / "bird.ctl"
        self.pidfile = self.dir / "bird.pid"
        self.logfile = self.dir / "bird.log"
        self.binary = binary or shutil.which("bird") or "/usr/sbin/bird"
        self.start_timeout = start_timeout
        self.starts = 0  # BIRDs started by this object (restarts included)
        self.checks = 0  # ``bird -p`` runs (structural changes and starts)
        self._lock = threading.RLock()
        self._child: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None  # pid of a BIRD an earlier agent started
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._adopt()

    # -- state -------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The PID of the BIRD this object runs or adopted, while it runs."""
        with self._lock:
            if self._child is not None and self._child.poll() is None:
                return self._child.pid
            if self._adopted is not None and _is_bird(self._adopted, self.conf):
                return self._adopted
            return None

    def running(self) -> bool:
        return self.pid is not None

    # -- config ------------------------------------------------------------------
    def check(self, text: str) -> str:
        """Write ``text`` to bird.conf.new and let BIRD parse it; "" or BIRD's complaint."""
        new = self._write_new(text)
        self.checks += 1
        try:
            done = subprocess.run([self.binary, "-p", "-c", str(new)], capture_output=True,
                                  text=True, timeout=CHECK_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{self.binary} -p: {exc}"
        if done.returncode != 0:
            return (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        return ""

    def _write_new(self, text: str) -> Path:
        new = self.dir / "bird.conf.new"
        # bird.conf holds BGP passwords in clear: owner-only, like the file it replaces.
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(new, 0o600)
        return new

    def apply(self, text: str) -> list[str]:
        """Make BIRD run ``text``: check, swap in, reload or start. The problems met."""
        with self._lock:
            if self.running() and self._only_origins_change(text):
                return self._apply_origins(text)
            problem = self.check(text)
            if problem:
                return [f"the new bird.conf does not parse, BIRD keeps the old one: {problem}"]
            os.replace(self.dir / "bird.conf.new", self.conf)
            try:
                if self.running():
                    self.reload()
                else:
                    self.start()
            except BirdError as exc:
                return [str(exc)]
            return []

    def reload(self) -> None:
        with BirdControl(self.socket) as control:
            control.command("configure")

    def _only_origins_change(self, text: str) -> bool:
        """Does ``text`` differ from bird.conf (what BIRD runs) only in origin routes?"""
        try:
            running = self.conf.read_text()
        except OSError:
            return False
        if running == text:
            return False
        rest, origins = _split(text)
        rest_before, origins_before = _split(running)
        if rest != rest_before:
            return False
        try:  # only the new ones: the running ones BIRD accepted already
            for net in origins - origins_before:
                ipaddress.ip_network(net)
        except ValueError:
            return False  # not an origin tabby renders: the full check decides
        return True

    def _apply_origins(self, text: str) -> list[str]:
        """BIRD parses the new file itself and switches to it, or keeps the old config;
        only an accepted file replaces bird.conf."""
        new = self._write_new(text)
        try:
            with BirdControl(self.socket) as control:
                control.command(f'configure "{new}"')
        except BirdError as exc:
            return [f"BIRD refused the new origins, it keeps the old bird.conf: {exc}"]
        os.replace(new, self.conf)
        return []

    # -- the process ---------------------------------------------------------------
    def start(self, *, recovering: bool = False) -> None:
        """Start BIRD on bird.conf and wait until its control socket answers."""
        with self._lock:
            recover = recovering or self.pidfile.exists()
            argv = [self.binary, "-f", *(["-R"] if recover else []), "-c", str(self.conf),
                    "-s", str(self.socket), "-P", str(self.pidfile)]
            if self.netns is not None:  # nsenter execs BIRD: the PID stays BIRD's
                argv = ["nsenter", f"--net={self.netns}", "--", *argv]
            with open(self.logfile, "ab") as out:
                try:
                    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=out, start_new_session=True)
                except OSError as exc:
                    raise BirdError(f"cannot start BIRD ({self.binary}): {exc}") from exc
            self._child, self._adopted = child, None
            self.starts += 1
            log.info("BIRD started (pid %d%s) on %s", child.pid,
                     ", graceful-restart recovery" if recover else "", self.conf)
            self._wait_ready(child)

    def _wait_ready(self, child: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if child.poll() is not None:
                raise BirdError(f"BIRD exited at start ({child.returncode}); the end of"
                                f" {self.logfile}:\n{_tail(self.logfile)}")
            with contextlib.suppress(BirdError):
                BirdControl(self.socket, timeout=1.0).close()
                return
            if time.monotonic() > deadline:
                raise BirdError(f"BIRD (pid {child.pid}) does not answer on {self.socket}"
                                f" after {self.start_timeout:g}s")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the BIRD this object knows (for tests and tools; the agent never does)."""
        with self._lock:
            pid = self.pid
            child, self._child, self._adopted = self._child, None, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if child is not None:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def _adopt(self) -> None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if _is_bird(pid, self.conf):
            self._adopted = pid
            log.info("adopted the running BIRD (pid %d) of %s", pid, self.dir)

    # -- supervision ---------------------------------------------------------------
    def supervise(self) -> None:
        """Start the thread that restarts BIRD when it dies (once; idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name="bird-supervisor",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop supervising; BIRD keeps running (a later agent adopts it)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _supervise(self) -> None:
        backoff = 0.0
        while not self._closing.is_set():
            with self._lock:
                child, adopted = self._child, self._adopted
            if child is None and adopted is None:
                self._closing.wait(0.2)
                continue
            started = time.monotonic()
            if not self._wait_exit(child, adopted):
                continue  # closing
            with self._lock:
                if (self._child, self._adopted) != (child, adopted) or self._closing.is_set():
                    continue  # replaced or stopped on purpose meanwhile
                code = child.returncode if child is not None else None
                log.warning("BIRD (pid %s) exited (%s); restarting with graceful-restart"
                            " recovery. The end of %s:\n%s",
                            child.pid if child else adopted, code, self.logfile,
                            _tail(self.logfile))
                self._child = self._adopted = None
            ran = time.monotonic() - started
            backoff = 0.0 if ran > STABLE else min(max(backoff * 2, 0.25), MAX_BACKOFF)
            if self._closing.wait(backoff):
                return
            self._restart()

    def _restart(self) -> None:
        try:
            with self._lock:
                if self._child is None and self._adopted is None:
                    self.start(recovering=True)
        except BirdError as exc:
            log.error("restarting BIRD: %s", exc)

    def _wait_exit(self, child: subprocess.Popen[bytes] | None, adopted: int | None) -> bool:
        """Block until the process exits (True) or closing (False)."""
        if child is not None:
            while not self._closing.is_set():
                try:
                    child.wait(0.25)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            return False
        assert adopted is not None
        try:
            fd = os.pidfd_open(adopted)
        except ProcessLookupError:
            return True
        try:
            while not self._closing.is_set():
                if select.select([fd], [], [], 0.25)[0] or not _is_bird(adopted, self.conf):
                    return True
            return False
        finally:
            os.close(fd)


def _split(text: str) -> tuple[list[str], set[str]]:
    """``text``'s lines other than origin routes, and the origins' networks."""
    rest, origins = [], set()
    for line in text.splitlines():
        origin = _ORIGIN.fullmatch(line)
        if origin is None:
            rest.append(line)
        else:
            origins.add(origin.group(1))
    return rest, origins


def _is_bird(pid: int, conf: Path) -> bool:
    """Is ``pid`` a live BIRD running ``conf`` (not a zombie, not a recycled PID)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat[stat.rindex(")") + 2:].split()[0]
    return state not in ("Z", "X") and os.path.basename(cmdline[0]) == b"bird" and \
        str(conf).encode() in cmdline


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} is not readable)"
