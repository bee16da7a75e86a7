"""Applying tabby's nftables Ruleset to the kernel, by difference, atomically.

``NftReconciler.apply(desired, full)`` sends one ``nft -f -`` transaction:
the whole table on the first pass, when asked for a full pass, and after any
failure (so leftovers and drift vanish); otherwise only the difference from
what it last applied (an endpoint joining a selector is one set element). A
transaction either applies whole or not at all, so after a failure the kernel
still holds the previous state and the next pass replaces the table.

Sets flagged ``dynamic`` are filled by the packet path (session affinity
remembers which client went to which endpoint); a full replace re-adds what
they held, with the time each element had left, so neither a periodic full
pass nor an agent restart forgets it. Named counters (policy's per-rule
counters) are declared again with the values they had, likewise.

The ``NftRunner`` seam runs a script (and reads the table back as JSON);
``NftCommand`` is the real one (the ``nft`` binary in the caller's network
namespace), ``tabby.dataplane.libnft.NftLibrary`` the same in-process (the
default where libnftables loads); ``tabby.testing.fakes.FakeNft`` an in-memory
one. The time a pass took is read from the ``clock`` seam (``time.monotonic``
by default).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tabby.dataplane.libnft import NftLibrary
from tabby.errors import DataplaneError
from tabby.nft.model import FAMILY, TABLE, Ruleset
from tabby.nft.render import TypeChanged, render_delta, render_full


class NftRunner(Protocol):
    def run(self, script: str) -> None:
        """Apply ``script`` as one transaction; DataplaneError if nft refuses it."""
        ...

    def read(self, what: str) -> str:
        """``nft -j list WHAT`` (e.g. ``table inet tabby``); DataplaneError on failure."""
        ...


class NftCommand:
    def __init__(self, binary: str = "nft", prefix: tuple[str, ...] = ()) -> None:
        self.argv = [*prefix, binary, "-f", "-"]
        self.calls = 0

    def run(self, script: str) -> None:
        self.calls += 1
        try:
            done = subprocess.run(self.argv, input=script.encode(), capture_output=True,
                                  timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataplaneError(f"nft: {exc}") from exc
        if done.returncode != 0:
            raise DataplaneError(f"nft refused the transaction: {_first_error(done.stderr)}")

    def read(self, what: str) -> str:
        try:
            done = subprocess.run([*self.argv[:-2], "-j", "list", *what.split()],
                                  capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataplaneError(f"nft: {exc}") from exc
        if done.returncode != 0:
            raise DataplaneError(f"nft list {what}: {_first_error(done.stderr)}")
        return done.stdout.decode()


def default_runner() -> NftRunner:
    """libnftables in-process (``tabby.dataplane.libnft``: no fork and exec per
    transaction, which CNI ADD waits for), else the ``nft`` binary."""
    try:
        return NftLibrary()
    except OSError:
        return NftCommand()


def _live_elements(items: object) -> list[str]:
    """Elements of a listed set that have time left, as nft text (plain values only)."""
    out = []
    for item in items if isinstance(items, list) else []:
        e = item.get("elem", {}) if isinstance(item, dict) else {}
        if isinstance(e.get("val"), str) and e.get("expires", 0) > 0 and e.get("timeout", 0) > 0:
            out.append(f"{e['val']} timeout {e['timeout']}s expires {e['expires']}s")
    return out


def _first_error(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[:3]) or "no message"


@dataclass(frozen=True, slots=True)
class NftResult:
    mode: str  # "full", "delta" or "none"
    script_lines: int
    seconds: float
    errors: tuple[str, ...] = ()


class NftReconciler:
    def __init__(self, runner: NftRunner | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runner = runner or default_runner()
        self.applied: Ruleset | None = None
        self._clock = clock

    def apply(self, desired: Ruleset, *, full: bool = False) -> NftResult:
        started = self._clock()
        mode = "full" if full or self.applied is None else "delta"
        script = ""
        if mode == "delta":
            assert self.applied is not None
            try:
                script = render_delta(self.applied, desired)
            except TypeChanged:
                mode = "full"
        if mode == "full":
            script = render_full(desired, self._counts(desired)) + self._kept(desired)
        if not script:
            return NftResult("none", 0, self._clock() - started)
        try:
            self.runner.run(script)
        except DataplaneError as exc:
            self.applied = None  # the next pass replaces the whole table
            return NftResult(mode, script.count("\n"), self._clock() - started, (str(exc),))
        self.applied = desired
        return NftResult(mode, script.count("\n"), self._clock() - started)

    def _counts(self, desired: Ruleset) -> dict[str, tuple[int, int]]:
        """What the kernel's named counters of ``desired`` have counted (a full replace
        declares them again with these values: a periodic resync resets nothing)."""
        if not desired.counters:
            return {}
        try:
            listing = json.loads(self.runner.read(f"counters table {FAMILY} {TABLE}"))
        except (DataplaneError, ValueError):
            return {}  # no table yet, or unreadable: they start at 0
        out = {}
        for entry in listing.get("nftables", []) if isinstance(listing, dict) else []:
            c = entry.get("counter") if isinstance(entry, dict) else None
            if isinstance(c, dict) and c.get("name") in desired.counters:
                out[str(c["name"])] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        return out

    def _kept(self, desired: Ruleset) -> str:
        """``add element`` lines giving back what the kernel holds in ``desired``'s
        dynamic sets (those it declares alike), with the time each has left."""
        dynamic = {n: s.type for n, s in desired.sets.items() if "dynamic" in s.flags}
        if not dynamic:
            return ""
        try:
            listing = json.loads(self.runner.read(f"table {FAMILY} {TABLE}"))
        except (DataplaneError, ValueError):
            return ""  # no table yet, or unreadable: nothing to keep
        lines = []
        for entry in listing.get("nftables", []) if isinstance(listing, dict) else []:
            found = entry.get("set") if isinstance(entry, dict) else None
            if not isinstance(found, dict) or dynamic.get(str(found.get("name"))) != \
                    found.get("type"):
                continue
            kept = _live_elements(found.get("elem", []))
            if kept:
                lines.append(f"add element {FAMILY} {TABLE} {found['name']}"
                             f" {{ {', '.join(kept)} }}")
        return "\n".join(lines) + ("\n" if lines else "")
