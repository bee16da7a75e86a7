"""Seeded generators of hostile input for the fault suite: values, documents, environments.

Every generator takes a ``random.Random``; a failure names its seed and case
number, so ``TABBY_FAULTS_SEED=S`` replays it. ``TABBY_FAULTS_N`` scales how
many cases each test tries: a small slice in ``make test``, thousands in
``make faults``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SEED = int(os.environ.get("TABBY_FAULTS_SEED", "20261206"))
SCALE = int(os.environ.get("TABBY_FAULTS_N", "40"))

ODD_TEXT = [
    "", " ", "\t", "a" * 300, "x" * 70_000, "Eth0", "NET1", "ümlaut", "名前", "\u202eevil",
    "\u200b", "a/b", "../../etc/passwd", "a;b=c", "$(id)", "-rf", "null", "0", "1e309",
    "198.19.0.1/33", "fd00::/129", "🐱", "a\nb", "\\", "%s%n", "k8s-pod-network",
]
ODD_SCALARS: list[Any] = [None, True, False, 0, -1, 2**63, -(2**63) - 1, 1.5, float("inf"),
                          [], {}, [None], {"": ""}]


def odd_value(rnd: random.Random, depth: int = 0) -> Any:
    """Something a careless or hostile writer might put where a value goes."""
    pick = rnd.random()
    if pick < 0.4:
        return rnd.choice(ODD_TEXT)
    if pick < 0.7:
        return rnd.choice(ODD_SCALARS)
    if pick < 0.8:
        return nested(rnd.choice([10, 100, 900]), rnd.choice(["list", "map"]))
    if depth < 3:
        return {rnd.choice(ODD_TEXT)[:40]: odd_value(rnd, depth + 1) for _ in range(3)}
    return rnd.choice(ODD_TEXT)


def nested(depth: int, kind: str) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


@dataclass
class Tally:
    """What a fault test tried, and how it went: the figures ``make faults`` prints."""

    name: str
    tried: int = 0
    held: int = 0
    lost: list[str] = field(default_factory=list)

    def check(self, case: str, ok: Callable[[], str | None]) -> None:
        """Run one case; ``ok`` returns None when tabby held, else what went wrong."""
        self.tried += 1
        try:
            problem = ok()
        except Exception as exc:  # a crash of the harness's subject is a loss too
            problem = f"{type(exc).__name__}: {exc}"[:300]
        if problem is None:
            self.held += 1
        else:
            self.lost.append(f"{case}: {problem}")

    def report(self) -> str:
        return (f"faults: {self.name}: tried {self.tried}, held {self.held}, "
                f"lost {len(self.lost)} (seed {SEED})")


def mutate(rnd: random.Random, doc: Any, edits: int = 3) -> Any:
    """``doc`` with a few values replaced, keys dropped or added, at random paths."""
    import copy
    out = copy.deepcopy(doc)
    for _ in range(edits):
        container, key = _random_slot(rnd, out)
        if container is None:
            return odd_value(rnd)
        action = rnd.random()
        if isinstance(container, dict):
            if action < 0.2 and key in container:
                del container[key]
            elif action < 0.35:
                container[rnd.choice(ODD_TEXT)[:50] or "k"] = odd_value(rnd)
            else:
                container[key] = odd_value(rnd)
        elif isinstance(container, list) and container:
            container[key] = odd_value(rnd)
    return out


def _random_slot(rnd: random.Random, doc: Any) -> tuple[Any, Any]:
    """A (container, key) pair somewhere inside ``doc``."""
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any, depth: int) -> None:
        if depth > 12:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                slots.append((node, k))
                walk(v, depth + 1)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                slots.append((node, i))
                walk(v, depth + 1)
    walk(doc, 0)
    return rnd.choice(slots) if slots else (None, None)
