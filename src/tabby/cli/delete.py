"""``tabby delete``: by file, by kind and names, or by label selector, as kubectl does.

    tabby delete -f FILE|DIR|- [-R]       (the file's objects last to first)
    tabby delete KIND[,KIND] NAME... | KIND/NAME...
    tabby delete KIND[,KIND] -l SELECTOR | --calico-selector EXPR | --all
    [-n NS | -A] [--ignore-not-found] [--dry-run=client|server]

A Node's deletion also releases its addresses and block affinities (what the
node controller does in Kubernetes). Exit code 1 if any object could not be
deleted (every one is reported); 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys

from tabby.cli import documents, kinds
from tabby.cli.apply import add_dry_run, add_file_options, dry_suffix
from tabby.cli.context import open_client, wiring_lab
from tabby.cli.kinds import display
from tabby.cli.labelselector import matcher
from tabby.cli.resources import delete_one
from tabby.cli.usage import UsageError, intermixed
from tabby.errors import NotFound, TabbyError
from tabby.model import Resource
from tabby.store.client import Client

Target = tuple[type[Resource], str, str]  # kind, name, namespace


def add_selector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-l", "--selector", metavar="SELECTOR",
                   help="Kubernetes label selector on metadata.labels: k=v, k!=v, k in (a,b),"
                        " k notin (a), k, !k; comma means and")
    p.add_argument("--calico-selector", metavar="EXPR",
                   help="Calico's selector language on metadata.labels, e.g."
                        " \"app == 'web' && has(tier)\"")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("delete", help="delete resources by file, by kind and name, or by label",
                       description="Delete resources by file, by kind and names, or by label.")
    d.add_argument("words", nargs="*", metavar="KIND [NAME...] | KIND/NAME...",
                   help="kind as kubectl or calicoctl writes it, and names")
    add_file_options(d, False, "naming the objects to delete")
    d.add_argument("-n", "--namespace", help="namespace (default: default)")
    d.add_argument("-A", "--all-namespaces", action="store_true",
                   help="with -l or --all: every namespace")
    add_selector_options(d)
    d.add_argument("--all", action="store_true", help="every object of the kinds named")
    d.add_argument("--ignore-not-found", action="store_true",
                   help="a missing object is not an error")
    add_dry_run(d)
    d.set_defaults(func=cmd_delete)
    intermixed(d)


def _check_usage(args: argparse.Namespace) -> None:
    selecting = args.selector is not None or args.calico_selector is not None
    if args.filename and args.words:
        raise UsageError("give either -f FILE or KIND NAME..., not both")
    if args.filename and (selecting or args.all):
        raise UsageError("-f names the objects itself: -l, --calico-selector and --all"
                         " go with KIND")
    if not args.filename and not args.words:
        raise UsageError("name what to delete: -f FILE, KIND NAME..., KIND/NAME or"
                         " KIND -l SELECTOR")
    if args.all and selecting:
        raise UsageError("--all deletes every object of the kinds; drop -l/--calico-selector,"
                         " or drop --all")


def targets(args: argparse.Namespace, client: Client) -> tuple[list[Target], list[str]]:
    """The objects to delete, and the error lines of documents that did not parse.

    A file's objects come last to first: files are written in the order they apply (a
    Tier before its policies, a Namespace before its contents), and what depends on
    another goes before it. kubectl keeps file order; tabby refuses to delete a tier
    that still holds policies (as Calico does), so file order would fail there.
    """
    if args.filename:
        docs = documents.read(args.filename, args.recursive)
        errors = [line for d in docs for line in d.errors]
        return [(type(d.obj), d.obj.meta.name, d.obj.meta.namespace)
                for d in reversed(docs) if d.obj is not None], errors
    wanted = kinds.targets(args.words)
    test = matcher(args.selector, args.calico_selector)
    selecting = test is not None or args.all
    out: list[Target] = []
    for t in wanted:
        ns = (args.namespace or "default") if t.cls.KIND.namespaced else ""
        if t.names and selecting:
            raise UsageError("names cannot be given together with -l, --calico-selector"
                             " or --all")
        if not t.names and not selecting:
            raise UsageError(f"name the {t.cls.KIND.plural} to delete, or select them with"
                             " -l SELECTOR or --all")
        if t.names:
            out.extend((t.cls, name, ns) for name in t.names)
            continue
        scope = None if args.all_namespaces or not t.cls.KIND.namespaced else ns
        for obj in client.list(t.cls, scope):
            if test is None or test(obj.meta.labels):
                out.append((t.cls, obj.meta.name, obj.meta.namespace))
    return out, []


def cmd_delete(args: argparse.Namespace) -> int:
    _check_usage(args)
    mode = args.dry_run
    client = open_client(args, dry_run=mode == "server")
    found, errors = targets(args, client)
    lab = wiring_lab(args) if mode == "none" else None
    if not found and not errors and not args.filename and (args.selector or args.all
                                                            or args.calico_selector):
        print("No resources found", file=sys.stderr)
    for cls, name, ns in found:
        label = display(cls, name)
        try:
            if mode == "client":
                client.get(cls, name, ns)
                lines = [f"{label} deleted"]
            else:
                lines = delete_one(client, lab, cls, name, ns, dry_run=mode == "server")
        except NotFound:
            if not args.ignore_not_found:
                where = f" in namespace {ns!r}" if ns else ""
                errors.append(f"{label} not found{where}")
            continue
        except TabbyError as exc:
            errors.append(f"{label}: {exc}")
            continue
        lines[0] += dry_suffix(mode)
        print("\n".join(lines), flush=True)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if errors else 0
