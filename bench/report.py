"""Rows of measurements and the markdown report ``make bench`` writes.

A ``Row`` is one figure for tabby beside the same figure for its peer,
measured in the same run on the same machine; the ratio is computed, never
typed in.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Row:
    section: str
    what: str
    tabby: float
    peer_name: str
    peer: float
    unit: str
    higher_is_better: bool
    note: str = ""
    goal: float | None = None  # the ratio tabby aims for (e.g. 0.97 of the peer), if any

    @property
    def ratio(self) -> float:
        """tabby relative to the peer: > 1 means tabby is better."""
        if self.tabby == 0 or self.peer == 0:
            return 0.0
        return self.tabby / self.peer if self.higher_is_better else self.peer / self.tabby

    @property
    def verdict(self) -> str:
        """Whether the measured ratio reaches the goal ("" without a goal)."""
        if self.goal is None:
            return ""
        met = "met" if self.ratio >= self.goal else "**not met**"
        return f"≥ {self.goal:.2f}: {met}"


@dataclass(frozen=True, slots=True)
class Failure:
    """A benchmark (or one part of it) that could not measure."""

    benchmark: str
    what: str
    error: str

    def line(self) -> str:
        text = " ".join(self.error.split())
        if len(text) > 600:
            text = text[:600] + " ..."
        return f"- FAILED {self.benchmark} ({self.what}): {text}"


def machine() -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores ({cpu}), {mem} memory, kernel {platform.release()}",
        f"- python: {platform.python_version()} ({platform.python_implementation()})",
        f"- tabby commit: {_commit()}",
    ]


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False, timeout=5)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(rows: Sequence[Row], command: str, failures: Sequence[Failure] = (),
           footer: Sequence[str] = ()) -> str:
    lines = ["# Benchmarks", "",
             f"Written by `{command}`. Every tabby figure stands beside a peer measured in the",
             "same run on the same machine; the ratio is tabby relative to the peer (above 1:",
             "tabby is better). Figures on this 2-core VM are noisy (about ±15%): read ratios,",
             "not absolute numbers.", "", *machine(), ""]
    if failures:
        lines += ["## Failures", "", *(f.line() for f in failures), ""]
    sections: dict[str, list[Row]] = {}
    for row in rows:
        sections.setdefault(row.section, []).append(row)
    for section, items in sections.items():
        lines += [f"## {section}", "",
                  "| measurement | tabby | peer | peer figure | unit | ratio | goal | note |",
                  "|---|---:|---|---:|---|---:|---|---|"]
        for r in items:
            lines.append(f"| {r.what} | {fmt(r.tabby)} | {r.peer_name} | {fmt(r.peer)} |"
                         f" {r.unit} | {r.ratio:.2f} | {r.verdict} | {_cell(r.note)} |")
        lines.append("")
    return "\n".join([*lines, *footer, ""] if footer else lines)
