"""``tabby version``: which tabby this is, for people and for scripts.

    $ tabby version
    tabby 0.1.0
    $ tabby version -o json
    {"version": "0.1.0", "python": "3.11.2", "distribution": "tabby-network"}

The version is ``tabby.__version__`` (the single source: the distribution's
metadata is generated from it), so a checkout that is not installed answers too.
"""

from __future__ import annotations

import argparse
import json
import platform

import tabby


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="print tabby's version (-o json: with Python's)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_version)


def info() -> dict[str, str]:
    return {"version": tabby.__version__, "python": platform.python_version(),
            "distribution": tabby.DISTRIBUTION}


def cmd_version(args: argparse.Namespace) -> int:
    if args.output == "json":
        print(json.dumps(info()))
    else:
        print(f"tabby {tabby.__version__}")
    return 0
