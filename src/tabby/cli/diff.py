"""``tabby diff -f FILE|DIR|- [-R]``: what ``apply`` would change, as a unified diff.

For each document: the stored object (``live/KIND/NAME``) against what apply
would store (``merged/KIND/NAME``), computed by a server-side dry run of the
apply (so the store's rules run, and an object apply would refuse is an
error). The server's bookkeeping (resourceVersion, uid, creationTimestamp) is
left out of both. Exit codes as kubectl's: 0 no differences, 1 differences,
2 an error (a document that does not validate, a store that refuses).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any

import yaml

from tabby.cli import documents
from tabby.cli.apply import add_file_options
from tabby.cli.context import open_client
from tabby.errors import TabbyError, ValidationError
from tabby.model import Resource
from tabby.store.client import Client

ERROR_EXIT = 2
BOOKKEEPING = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("diff", help="diff stored objects against files (exit 1 if different)",
                       description="Show what tabby apply -f would change, as a unified diff."
                       " Exit 0: no differences; 1: differences; 2: an error.")
    add_file_options(p, True, "to compare")
    p.set_defaults(func=cmd_diff)


def comparable(obj: Resource | None) -> str:
    if obj is None:
        return ""
    doc: dict[str, Any] = obj.to_manifest()
    doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k not in BOOKKEEPING}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def diff_one(client: Client, obj: Resource, label: str) -> str:
    live = client.try_get(type(obj), obj.meta.name, obj.meta.namespace)
    merged, _ = client.apply(obj)
    return "".join(difflib.unified_diff(
        comparable(live).splitlines(keepends=True), comparable(merged).splitlines(keepends=True),
        f"live/{label}", f"merged/{label}"))


def cmd_diff(args: argparse.Namespace) -> int:
    try:
        docs = documents.read(args.filename, args.recursive)
        client = open_client(args, dry_run=True)
    except ValidationError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return ERROR_EXIT
    except TabbyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ERROR_EXIT
    errors: list[str] = []
    differs = False
    for doc in docs:
        if doc.obj is None:
            errors.extend(doc.errors)
            continue
        try:
            text = diff_one(client, doc.obj, doc.label)
        except ValidationError as exc:
            errors.extend(exc.lines())
            continue
        except TabbyError as exc:
            errors.append(f"{doc.obj.ref}: {exc}")
            continue
        if text:
            differs = True
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return ERROR_EXIT if errors else 1 if differs else 0
