"""``python -m bench [--only NAME ...] [--quick]``: run the benchmarks, write the report.

Each registered module (``BENCHMARKS``) runs in turn with a ``Session``; its
rows and failures are collected, and a benchmark that fails (or fails in
part) becomes a failure line in the output and the report without stopping
the others. The report (``bench.report.render``) goes to docs/benchmarks.md
and to stdout; the exit status is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bench.report import Failure, Row, render
from bench.session import Session

BENCHMARKS = ("ipam", "cni", "throughput", "vxlan", "services", "policy", "bgp", "kubeclient",
              "kube", "flows", "counters")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                   help=f"run only this benchmark (repeatable; one of {', '.join(BENCHMARKS)})")
    p.add_argument("--quick", action="store_true",
                   help="fewer iterations: a smoke run, figures not for the record")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"where the report goes (default: {DEFAULT_OUTPUT.relative_to(ROOT)})")
    return p.parse_args(argv)


def command_line(argv: Sequence[str]) -> str:
    """How the report says it was made: ``make bench`` for the full default run."""
    if not argv:
        return "make bench"
    return "python -m bench " + " ".join(shlex.quote(a) for a in argv)


def run_one(name: str, quick: bool) -> Session:
    session = Session(name, quick=quick)
    session.log("start")
    try:
        module = importlib.import_module(f"bench.{name}")
        module.run(session)
    except Exception as exc:
        session.fail("benchmark aborted", exc)
    except KeyboardInterrupt as exc:
        session.fail("interrupted", exc)
        raise
    finally:
        session.log(f"done in {time.monotonic() - session.started:.0f}s")
    return session


def loads() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every benchmark's cleanup


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if os.geteuid() != 0:
        print("python -m bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminated)
    chosen = [b for b in BENCHMARKS if not args.only or b in args.only]
    started, load_before = time.monotonic(), loads()
    rows: list[Row] = []
    failures: list[Failure] = []
    timings: list[str] = []
    for name in chosen:
        session = run_one(name, args.quick)
        rows += session.rows
        failures += session.failures
        timings.append(f"{name} {time.monotonic() - session.started:.0f} s")
    took = time.monotonic() - started
    footer = [f"Run took {took:.0f} s ({', '.join(timings)}); load average (1, 5, 15 min)"
              f" {load_before} at the start, {loads()} at the end."
              + (" Quick run (--quick): fewer iterations." if args.quick else "")]
    text = render(rows, command_line(argv), failures, footer)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
