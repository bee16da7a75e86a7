"""The ``tabby`` command: one parser definition, one module per subcommand group.

Each subcommand module exposes ``register(subparsers)`` which adds its parser
and sets ``func`` (a callable taking the parsed namespace and returning an
exit code). Errors from the library (``TabbyError``) become one clear line on
stderr per problem and exit code 1; bad usage exits 2 with the usage line of
the subcommand that failed (``tabby.cli.usage``), as kubectl does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import tabby
from tabby.cli.usage import Parser, UsageError, usage_error
from tabby.errors import TabbyError, ValidationError

SUBCOMMANDS = ("apply", "get", "describe", "delete", "diff", "label", "edit", "ipam", "agent",
               "controllers", "lab", "node", "policy", "flows", "ui", "manifests", "installcni",
               "version", "completion")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tabby", description="tabby: a Calico-style network for Kubernetes, in Python.")
    parser.add_argument("--datastore", metavar="URL",
                        help="sqlite:///PATH, etcd://HOST:PORT[,...], kubernetes:///KUBECONFIG"
                             " or memory:// (default: $TABBY_DATASTORE, else the lab's, else "
                             "sqlite:///var/lib/tabby/tabby.db)")
    parser.add_argument("--lab", metavar="NAME",
                        help="the lab to act on (default: $TABBY_LAB, else 'tabby')")
    parser.add_argument("--version", action="version", version=f"tabby {tabby.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"tabby.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tabby.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UsageError as exc:
        return usage_error(args, str(exc))
    except ValidationError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    except TabbyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
