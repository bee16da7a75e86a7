"""What a benchmark module gets from the runner: where rows and failures go.

A benchmark module exposes ``run(session: Session) -> None`` and adds rows as
it measures them, so whatever it measured before failing is kept.
Independent parts of one benchmark run under ``session.part(what)``: a part
that raises becomes a failure line and the benchmark goes on with the next.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.report import Failure, Row


@dataclass(slots=True)
class Session:
    benchmark: str
    quick: bool = False
    rows: list[Row] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        took = time.monotonic() - self.started
        print(f"[{took:6.1f}s] {self.benchmark}: {message}", file=sys.stderr, flush=True)

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)
        for r in rows:
            self.log(f"{r.what}: tabby {r.tabby:.4g} vs {r.peer_name} {r.peer:.4g} {r.unit}"
                     f" (ratio {r.ratio:.2f})")

    def fail(self, what: str, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        for note in getattr(exc, "__notes__", ()):
            error += f" ({note})"
        self.failures.append(Failure(self.benchmark, what, error))
        self.log(f"FAILED {what}: {error}")
        traceback.print_exception(exc, file=sys.stderr)

    @contextlib.contextmanager
    def part(self, what: str) -> Iterator[None]:
        """Run one independent part; an Exception in it is recorded, not raised."""
        self.log(f"{what} ...")
        try:
            yield
        except Exception as exc:
            self.fail(what, exc)
