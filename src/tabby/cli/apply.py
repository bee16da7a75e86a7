"""``tabby apply | create | replace -f FILE|DIR|- [-R] [--dry-run=client|server]``.

Every document is parsed and validated on its own; an invalid one is reported
(one line per problem, with its field path) and nothing is written for it,
while the valid ones are written. When any document fails, a summary on
standard error names every document as applied or not applied, so nothing is
half-known. Exit code 1 when any document failed.

``--dry-run=client`` validates the documents and reads the store (never
creating it) to say what would happen; ``--dry-run=server`` also runs the
store's own rules (immutable fields, pool overlap; in Kubernetes mode the API
server's schema, admission and RBAC through ``dryRun=All``) and writes nothing.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

from tabby.calc.ipip import ipip_warning
from tabby.cli import documents
from tabby.cli.context import open_client, wiring_lab
from tabby.cli.documents import Doc
from tabby.cli.kinds import display
from tabby.cli.resources import apply_one, create_one, replace_one
from tabby.errors import Conflict, NotFound, TabbyError, ValidationError
from tabby.model import IPPool, Namespace, Pod, Resource
from tabby.store.client import Client

DRY_RUN = ("none", "client", "server")
Action = Callable[[Client, object | None, Resource], str]
VERBS: dict[str, tuple[Action, str]] = {
    "apply": (apply_one, "create or update resources from files (many documents)"),
    "create": (create_one, "create resources from files; an existing one is an error"),
    "replace": (replace_one, "replace existing resources from files; a missing one is an error"),
}


def add_file_options(p: argparse.ArgumentParser, required: bool, what: str) -> None:
    p.add_argument("-f", "--filename", required=required, action="append", metavar="FILE",
                   help=f"a YAML or JSON file, a directory of them, or - for standard input,"
                        f" {what} (repeatable)")
    p.add_argument("-R", "--recursive", action="store_true",
                   help="with -f DIR: also the files in its subdirectories")


def add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", nargs="?", const="client", default="none", choices=DRY_RUN,
                   metavar="client|server",
                   help="client: validate and show what would happen; server: also run the"
                        " store's (API server's) checks; nothing is written")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, (_, summary) in VERBS.items():
        p = sub.add_parser(verb, help=summary, description=summary)
        add_file_options(p, True, "to " + verb)
        add_dry_run(p)
        p.set_defaults(func=cmd_write, verb=verb)


@dataclass(frozen=True, slots=True)
class Outcome:
    doc: Doc
    verb: str = ""  # created | configured | unchanged | replaced; "" when it failed
    errors: tuple[str, ...] = ()


def dry_suffix(mode: str) -> str:
    return {"client": " (dry run)", "server": " (server dry run)"}.get(mode, "")


def cmd_write(args: argparse.Namespace) -> int:
    docs = documents.read(args.filename, args.recursive)
    for doc in docs:  # kubectl's style for what the server accepts but ignores
        for line in doc.warnings:
            print(f"Warning: {line}", file=sys.stderr)
    action = VERBS[args.verb][0]
    mode = args.dry_run
    client = open_client(args, create=mode == "none", dry_run=mode != "none")
    lab = wiring_lab(args) if mode == "none" else None
    # Namespaces before the pods that live in them, whatever the file order.
    order = sorted(docs, key=lambda d: 0 if isinstance(d.obj, Namespace) else 1)
    wired = lab is not None and args.verb == "apply"
    pods = [d for d in order if wired and isinstance(d.obj, Pod)]
    pod_ids = {id(d) for d in pods}
    outcomes: dict[int, Outcome] = {}
    for doc in order:
        if doc.obj is None:
            outcomes[id(doc)] = Outcome(doc, errors=doc.errors)
        elif id(doc) not in pod_ids:
            outcomes[id(doc)] = run_one(doc, lambda o: _act(action, client, lab, o, mode))
            if isinstance(doc.obj, IPPool) and doc.obj.spec.ipip_mode != "Never":
                print(f"warning: {ipip_warning(doc.obj)}", file=sys.stderr)
    if pods:
        outcomes.update(_apply_pods(client, lab, pods))
    results = [outcomes[id(d)] for d in docs]
    for r in results:
        if r.verb:
            print(f"{r.doc.label} {r.verb}{dry_suffix(mode)}", flush=True)
    return report_failures(results, "applied" if args.verb == "apply" else args.verb + "d")


def _act(action: Action, client: Client, lab: object | None, obj: Resource, mode: str) -> str:
    if mode != "client":
        return action(client, lab, obj)
    # Client side: only what a read of the store says would happen.
    exists = client.try_get(type(obj), obj.meta.name, obj.meta.namespace) is not None
    name = display(type(obj), obj.meta.name)
    if action is create_one:
        if exists:
            raise Conflict(f"{name} already exists (use tabby apply or tabby replace)")
        return "created"
    if action is replace_one:
        if not exists:
            raise NotFound(f"{name} not found (use tabby create or tabby apply)")
        return "replaced"
    return "configured" if exists else "created"


def run_one(doc: Doc, action: Callable[[Resource], str]) -> Outcome:
    assert doc.obj is not None
    try:
        return Outcome(doc, verb=action(doc.obj))
    except ValidationError as exc:
        return Outcome(doc, errors=tuple(exc.lines()))
    except TabbyError as exc:
        return Outcome(doc, errors=(f"{doc.obj.ref}: {exc}",))


def _apply_pods(client: Client, lab: object | None, pods: list[Doc]) -> dict[int, Outcome]:
    from tabby.cli.lab import ProgressPrinter
    from tabby.lab import pods as lab_pods
    objs = [d.obj for d in pods]
    results = lab_pods.apply_pods(lab, client, objs,  # type: ignore[arg-type]
                                  ProgressPrinter() if len(pods) > 1 else None)
    out: dict[int, Outcome] = {}
    for doc, result in zip(pods, results, strict=True):
        if isinstance(result, TabbyError):
            out[id(doc)] = run_one(doc, functools.partial(_raise, result))
        else:
            out[id(doc)] = Outcome(doc, verb=result)
    return out


def _raise(exc: TabbyError, _obj: Resource) -> str:
    raise exc


def report_failures(results: list[Outcome], done: str) -> int:
    """Every error line, then (if any document failed) which were ``done`` and which not."""
    failed = [r for r in results if not r.verb]
    if not failed:
        return 0
    for r in failed:
        for line in r.errors:
            print(f"error: {line}", file=sys.stderr)
    print(f"error: {len(failed)} of {len(results)} documents not {done}:", file=sys.stderr)
    for r in results:
        state = done if r.verb else f"not {done}"
        print(f"  {state}: {r.doc.label} ({r.doc.where})", file=sys.stderr)
    return 1
