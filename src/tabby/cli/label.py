"""``tabby label KIND NAME... | KIND/NAME... KEY=VALUE... KEY-... [--overwrite]``.

As kubectl: ``k=v`` sets a label (changing an existing value needs
``--overwrite``), ``k-`` removes one. The object is re-validated with its new
labels before it is written (compare-and-swap, retried on a concurrent
change). ``-l`` selects the objects by label instead of by name.
"""

from __future__ import annotations

import argparse
import sys

from tabby.cli import kinds
from tabby.cli.apply import add_dry_run, dry_suffix
from tabby.cli.context import open_client
from tabby.cli.delete import add_selector_options
from tabby.cli.labelselector import matcher
from tabby.cli.usage import UsageError, intermixed
from tabby.errors import Conflict, NotFound, TabbyError, ValidationError
from tabby.model import Resource
from tabby.store.client import Client

Change = tuple[dict[str, str], list[str]]  # labels to set, labels to remove


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("label", help="set (k=v) or remove (k-) labels on resources",
                       description="Set (KEY=VALUE) or remove (KEY-) labels.")
    p.add_argument("words", nargs="+", metavar="KIND NAME... | KIND/NAME... KEY=VALUE|KEY-")
    p.add_argument("-n", "--namespace", help="namespace (default: default)")
    p.add_argument("--overwrite", action="store_true", help="change labels that have a value")
    add_selector_options(p)
    add_dry_run(p)
    p.set_defaults(func=cmd_label)
    intermixed(p)


def parse_changes(words: list[str]) -> tuple[list[str], Change]:
    """(the words naming resources, the change); UsageError for a malformed one. A word
    with ``=`` or ending in ``-`` is a change: no kind or object name can end in ``-``."""
    names: list[str] = []
    set_: dict[str, str] = {}
    remove: list[str] = []
    for word in words:
        is_set, is_remove = "=" in word, word.endswith("-")
        if not is_set and not is_remove:
            if set_ or remove:
                raise UsageError(f"{word!r}: resources come first, then KEY=VALUE or KEY-")
            names.append(word)
            continue
        key = word.partition("=")[0] if is_set else word[:-1]
        if not key:
            raise UsageError(f"{word!r}: a label change needs a key (KEY=VALUE or KEY-)")
        if key in set_ or key in remove:
            raise UsageError(f"label {key!r} is changed twice")
        if is_set:
            set_[key] = word.partition("=")[2]
        else:
            remove.append(key)
    if not set_ and not remove:
        raise UsageError("give at least one label change: KEY=VALUE or KEY-")
    return names, (set_, remove)


def relabel(obj: Resource, change: Change, overwrite: bool) -> Resource | None:
    """The object with its new labels (None if nothing changes); ValidationError if bad."""
    set_, remove = change
    labels = dict(obj.meta.labels)
    for key, value in set_.items():
        if key in labels and labels[key] != value and not overwrite:
            raise TabbyError(f"label {key!r} already has a value ({labels[key]}), and"
                             " --overwrite is not given")
        labels[key] = value
    for key in remove:
        labels.pop(key, None)
    if labels == dict(obj.meta.labels):
        return None
    new = obj.with_meta(labels=labels)
    checked = type(obj).from_manifest(new.to_manifest())  # label syntax, with its path
    return checked


def cmd_label(args: argparse.Namespace) -> int:
    words, change = parse_changes(args.words)
    wanted = kinds.targets(words)
    test = matcher(args.selector, args.calico_selector)
    client = open_client(args, dry_run=args.dry_run == "server")
    errors: list[str] = []
    for t in wanted:
        ns = (args.namespace or "default") if t.cls.KIND.namespaced else ""
        if t.names and test is not None:
            raise UsageError("names cannot be given together with -l or --calico-selector")
        if not t.names and test is None:
            raise UsageError(f"name the {t.cls.KIND.plural} to label, or select them with -l")
        names = list(t.names) or [o.meta.name for o in client.list(t.cls, ns or None)
                                  if test is not None and test(o.meta.labels)]
        for name in names:
            label = kinds.display(t.cls, name)
            try:
                changed = _label_one(client, t.cls, name, ns, change, args)
            except NotFound:
                errors.append(f"{label} not found")
                continue
            except ValidationError as exc:
                errors.extend(exc.lines())
                continue
            except TabbyError as exc:
                errors.append(f"{label}: {exc}")
                continue
            print(f"{label} {'labeled' if changed else 'not labeled'}{dry_suffix(args.dry_run)}")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if errors else 0


def _label_one(client: Client, cls: type[Resource], name: str, ns: str, change: Change,
               args: argparse.Namespace) -> bool:
    for _ in range(20):
        current = client.get(cls, name, ns)
        new = relabel(current, change, args.overwrite)
        if new is None:
            return False
        if args.dry_run == "client":
            return True
        try:
            client.update(new.with_meta(resource_version=current.meta.resource_version), current)
        except Conflict:
            continue
        return True
    raise Conflict("kept changing under us; try again")
