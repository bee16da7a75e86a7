"""Usage errors as kubectl reports them: exit code 2, from the subcommand that failed.

argparse reports an unknown option with the usage line of the parser that
collected the leftovers, which for nested subcommands is the top-level one
(``tabby: error: unrecognized arguments``). ``Parser`` makes every subcommand
refuse its own leftovers, so the usage line shown is the subcommand's, and
records itself on the namespace (``usage_parser``) so that a usage problem
found after parsing (``UsageError``: two options that exclude each other, a
missing KIND) is reported the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from tabby.errors import UsageError

__all__ = ["USAGE_EXIT", "Parser", "UsageError", "intermixed", "usage_error"]

USAGE_EXIT = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands own their errors."""

    intermixed = False  # options may follow positionals (kubectl's get pods -o name x)
    _busy = False

    def parse_known_args(  # type: ignore[override]
            self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._busy:  # the passes of parse_known_intermixed_args
            return super().parse_known_args(args, namespace)
        if self.intermixed:
            self._busy = True
            try:
                ns, extras = self.parse_known_intermixed_args(args, namespace)
            finally:
                self._busy = False
        else:
            ns, extras = super().parse_known_args(args, namespace)
        if getattr(ns, "usage_parser", None) is None:
            ns.usage_parser = self  # the innermost parser sets it first
        if extras and self._is_subcommand():
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras

    def _is_subcommand(self) -> bool:
        return " " in self.prog

    def usage_error(self, message: str) -> int:
        """Print ``message`` as argparse would and return the usage exit code."""
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        return USAGE_EXIT


def usage_error(args: argparse.Namespace, message: str) -> int:
    parser: Any = getattr(args, "usage_parser", None)
    if isinstance(parser, Parser):
        return parser.usage_error(message)
    print(f"error: {message}", file=sys.stderr)
    return USAGE_EXIT


def intermixed(parser: argparse.ArgumentParser) -> None:
    """Let options come between and after the positionals, as kubectl does."""
    if isinstance(parser, Parser):
        parser.intermixed = True
