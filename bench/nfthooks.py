"""Variants of tabby's nftables table on live lab nodes: what each hook costs a flow.

``Variants(namespaces)`` reads the ``inet tabby`` table of each node once and
can then load, in one ``nft -f`` transaction per node, the table as it was or a
variant of it; leaving the ``with`` block loads the original back. The variants
are derived from the table's own base chains (their type, hook and priority as
``nft list`` prints them), so they follow the table as it grows:

    no table                          the table deleted: tabby's wiring alone
    tabby's table                     as the agent programmed it
    forward chain only                every base chain but the forward one deleted
    forward chain only, notrack       ... and conntrack switched off ahead of it
    without the NAT chains            base chains of type nat deleted (services, natOutgoing)
    without the raw prerouting chain  anti-spoofing gone
    without the empty base chains     base chains with no rule (a hook still calls them)
    notrack                           the whole table, conntrack off (policy is bypassed:
                                      untracked packets take the "established" return)
    established accepted first        ``ct state established,related accept`` on top of
                                      the forward base chain

The agents must not reconcile while a variant is loaded: ``paused(pids)``
stops them (SIGSTOP) and resumes them (SIGCONT) afterwards, also on failure.
nft flowtables would be the next variant; this machine's kernel is built
without them (CONFIG_NF_FLOW_TABLE is not set).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from bench import netns
from bench.netns import BenchError

SECTION = "Pod-to-pod TCP throughput: the nft table's cost per hook"
NONE = "no table"
FULL = "tabby's table"
TABLE = "inet tabby"
_BASE = re.compile(r"^\s*chain (\S+) \{\s*\n\s*type (\w+) hook (\w+) priority ([^;]+);",
                   re.MULTILINE)
_EMPTY = re.compile(r"^\s*chain (\S+) \{\s*\n\s*type [^\n]*\n\s*\}", re.MULTILINE)
NOTRACK = [f"add chain {TABLE} bench-notrack-pre {{ type filter hook prerouting priority -350;"
           " policy accept; }",
           f"add rule {TABLE} bench-notrack-pre notrack",
           f"add chain {TABLE} bench-notrack-out {{ type filter hook output priority -350;"
           " policy accept; }",
           f"add rule {TABLE} bench-notrack-out notrack"]


@dataclass(frozen=True, slots=True)
class BaseChain:
    name: str
    type: str
    hook: str
    priority: str


def base_chains(table: str) -> list[BaseChain]:
    """The base chains of ``nft list table`` output."""
    return [BaseChain(*m.groups()) for m in _BASE.finditer(table)]


def edits(table: str) -> dict[str, list[str] | None]:
    """Variant name -> nft commands applied after the table is loaded (None: no table)."""
    chains = base_chains(table)
    forward = [c.name for c in chains if c.hook == "forward"]
    if not forward:
        raise BenchError("tabby's table has no forward base chain")

    def delete(**match: str) -> list[str]:
        return [f"delete chain {TABLE} {c.name}" for c in chains
                if all(getattr(c, k) == v for k, v in match.items())]

    only_forward = [f"delete chain {TABLE} {c.name}" for c in chains if c.hook != "forward"]
    return {
        NONE: None,
        FULL: [],
        "forward chain only": only_forward,
        "forward chain only, notrack": only_forward + NOTRACK,
        "without the NAT chains": delete(type="nat"),
        "without the raw prerouting chain": delete(hook="prerouting", priority="raw"),
        "without the empty base chains": [f"delete chain {TABLE} {m.group(1)}"
                                          for m in _EMPTY.finditer(table)],
        "notrack (policy bypassed)": list(NOTRACK),
        "established accepted first": [f"insert rule {TABLE} {forward[0]} ct state"
                                       " established,related accept"],
    }


class Variants:
    """The table of each node, and loading a variant of it on all of them."""

    def __init__(self, namespaces: Sequence[str]) -> None:
        self.namespaces = list(namespaces)
        self.tables = {ns: self._nft(ns, ["list", "table", *TABLE.split()])
                       for ns in self.namespaces}
        first = self.tables[self.namespaces[0]]
        self.edits = edits(first)
        self.names = list(self.edits)
        for ns, table in self.tables.items():
            if [c.name for c in base_chains(table)] != [c.name for c in base_chains(first)]:
                raise BenchError(f"{ns}: its table's base chains differ from the first node's")

    @staticmethod
    def _nft(ns: str, args: list[str], script: str | None = None) -> str:
        return netns.run(["ip", "netns", "exec", ns, "nft", *args], stdin=script)

    def load(self, name: str) -> None:
        """One transaction per node: the table as read, then the variant's edits."""
        commands = self.edits[name]
        for ns, table in self.tables.items():
            lines = [f"add table {TABLE}", f"delete table {TABLE}"]
            if commands is not None:
                lines += [table, *commands]
            self._nft(ns, ["-f", "-"], "\n".join(lines) + "\n")

    def __enter__(self) -> Variants:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.load(FULL)


@contextlib.contextmanager
def paused(pids: Sequence[int]) -> Iterator[None]:
    """SIGSTOP each process (the lab's agents, by PID); SIGCONT them afterwards."""
    stopped: list[int] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
