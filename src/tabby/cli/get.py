"""``tabby get``: kubectl's reading verb on tabby's store.

    tabby get KIND[,KIND...] [NAME...] | KIND/NAME...
              [-n NS | -A] [-l SELECTOR] [--calico-selector EXPR]
              [-o table|wide|yaml|json|name|jsonpath=T|custom-columns=H:P,...]
              [-w [--watch-only] [--request-timeout S]]

``-o json|yaml`` prints one object for one ``NAME`` (or one ``KIND/NAME``) and
a ``v1 List`` otherwise (empty ``items`` when nothing matches, exit 0).
``-w`` prints the matching objects, then a line (or object) for every change
the store's watch reports, until interrupted or ``--request-timeout``.
A missing name is an error (exit 1) after the others are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from tabby.cli import kinds, output
from tabby.cli.context import open_client
from tabby.cli.delete import add_selector_options
from tabby.cli.kinds import Target, display
from tabby.cli.labelselector import matcher
from tabby.cli.output import OutputFormat
from tabby.cli.usage import UsageError, intermixed
from tabby.errors import NotFound, ValidationError
from tabby.model import Resource
from tabby.store.client import Client

Groups = list[tuple[type[Resource], list[Resource]]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser("get", help="show resources",
                       description="Show resources: KIND[,KIND] [NAME...] or KIND/NAME...")
    g.add_argument("words", nargs="*", metavar="KIND [NAME...] | KIND/NAME...",
                   help="kind as kubectl or calicoctl writes it (ippools, pods, gnp, ...),"
                        " then names")
    g.add_argument("-n", "--namespace", help="namespace (default: default)")
    g.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    g.add_argument("-o", "--output", type=output.output_format, default=OutputFormat("table"),
                   metavar="FORMAT", help="table, wide, yaml, json, name, jsonpath=TEMPLATE or"
                   " custom-columns=HEADER:PATH,...")
    add_selector_options(g)
    g.add_argument("-w", "--watch", action="store_true",
                   help="after listing, print every change until interrupted")
    g.add_argument("--watch-only", action="store_true", help="print changes only, no list")
    g.add_argument("--request-timeout", type=float, default=0.0, metavar="SECONDS",
                   help="with -w: stop watching after this long (default 0: never)")
    g.set_defaults(func=cmd_get)
    intermixed(g)


def cmd_get(args: argparse.Namespace) -> int:
    wanted = kinds.targets(args.words)
    test = matcher(args.selector, args.calico_selector)
    if test is not None and any(t.names for t in wanted):
        raise UsageError("a name cannot be given together with -l or --calico-selector")
    if args.request_timeout < 0:
        raise UsageError(f"--request-timeout {args.request_timeout:g}: must be 0 or more")
    watching = args.watch or args.watch_only
    if args.request_timeout and not watching:
        raise UsageError("--request-timeout bounds a watch: give it with -w")
    client = open_client(args)
    start = client.store.revision() + 1  # before the list: no change falls between
    groups, errors = collect(client, wanted, args, test)
    single = len(wanted) == 1 and len(wanted[0].names) == 1
    if not args.watch_only:
        show(groups, args.output, single, args.all_namespaces, args.namespace)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if watching:
        headed = any(objs for _, objs in groups) and not args.watch_only
        watch(client, wanted, args, test, start, headed)
    return 1 if errors else 0


def _namespace(cls: type[Resource], args: argparse.Namespace) -> str:
    return (args.namespace or "default") if cls.KIND.namespaced else ""


def _scope(cls: type[Resource], args: argparse.Namespace) -> str | None:
    return None if args.all_namespaces or not cls.KIND.namespaced else _namespace(cls, args)


def collect(client: Client, wanted: list[Target], args: argparse.Namespace,
            test: Callable[[Mapping[str, str]], bool] | None) -> tuple[Groups, list[str]]:
    groups: Groups = []
    errors: list[str] = []
    for t in wanted:
        ns = _namespace(t.cls, args)
        objs: list[Resource] = []
        if t.names:
            for name in t.names:
                try:
                    objs.append(client.get(t.cls, name, ns))
                except NotFound:
                    where = f" in namespace {ns!r}" if ns else ""
                    errors.append(f"{t.cls.KIND.kind.lower()} {name!r} not found{where}")
        else:
            objs = [o for o in client.list(t.cls, _scope(t.cls, args))
                    if test is None or test(o.meta.labels)]
        groups.append((t.cls, objs))
    return groups, errors


def show(groups: Groups, fmt: OutputFormat, single: bool, all_ns: bool,
         namespace: str | None) -> None:
    objs = [o for _, group in groups for o in group]
    if fmt.kind in ("json", "yaml", "jsonpath"):
        data = objs[0].to_manifest() if single and objs else output.as_list(objs)
        if fmt.kind == "jsonpath":
            sys.stdout.write(render_jsonpath(fmt, data))
        else:
            print(output.dump(data, fmt.kind))
        return
    if fmt.kind == "name":
        for cls, group in groups:
            for obj in group:
                print(display(cls, obj.meta.name))
        return
    if not objs:
        if not single:
            where = "" if all_ns or not any(c.KIND.namespaced for c, _ in groups) else \
                f" in {namespace or 'default'} namespace"
            print(f"No resources found{where}.", file=sys.stderr)
        return
    if fmt.kind == "custom-columns":
        print(output.custom_columns([o.to_manifest() for o in objs], fmt))
        return
    tables = [output.resource_table(group, cls, all_ns, wide=fmt.kind == "wide",
                                    show_kind=len(groups) > 1)
              for cls, group in groups if group]
    print("\n\n".join(tables))


def render_jsonpath(fmt: OutputFormat, data: Any) -> str:
    from tabby.cli import jsonpath
    return jsonpath.render(fmt.template, data)


def watch(client: Client, wanted: list[Target], args: argparse.Namespace,
          test: Callable[[Mapping[str, str]], bool] | None, start: int, headed: bool) -> None:
    """Print every change to the wanted objects from revision ``start`` on."""
    by_resource = {t.cls.KIND.resource: t for t in wanted}
    deadline = time.monotonic() + args.request_timeout if args.request_timeout else None
    w = client.store.watch_many(list(by_resource), start)
    try:
        while deadline is None or time.monotonic() < deadline:
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            for event in w.next(wait):
                t = by_resource.get(event.key.resource)
                obj = _event_object(t, event.value, event.revision) if t else None
                if t is None or obj is None or not _wanted(t, obj, args, test):
                    continue
                print_change(t.cls, obj, event.type, args.output, args.all_namespaces,
                             headed, len(wanted) > 1)
                headed = True
    finally:
        w.close()


def _event_object(t: Target, value: Mapping[str, Any] | None, revision: int) -> Resource | None:
    if value is None:
        return None
    doc = dict(value)
    doc["metadata"] = {**dict(doc.get("metadata") or {}), "resourceVersion": str(revision)}
    try:
        return t.cls.from_manifest(doc)
    except ValidationError:
        return None  # not ours to judge here; the list shows what the store holds


def _wanted(t: Target, obj: Resource, args: argparse.Namespace,
            test: Callable[[Mapping[str, str]], bool] | None) -> bool:
    scope = _scope(t.cls, args)
    if scope is not None and obj.meta.namespace != scope:
        return False
    if t.names and obj.meta.name not in t.names:
        return False
    return test is None or test(obj.meta.labels)


def print_change(cls: type[Resource], obj: Resource, event: str, fmt: OutputFormat,
                 all_ns: bool, headed: bool, show_kind: bool) -> None:
    if fmt.kind in ("json", "yaml"):
        print(output.dump(obj.to_manifest(), fmt.kind), flush=True)
        if fmt.kind == "yaml":
            print("---", flush=True)
    elif fmt.kind == "jsonpath":
        sys.stdout.write(render_jsonpath(fmt, obj.to_manifest()))
        sys.stdout.flush()
    elif fmt.kind == "name":
        print(display(cls, obj.meta.name), flush=True)
    elif fmt.kind == "custom-columns":
        print(output.custom_columns([obj.to_manifest()], fmt, headers=not headed), flush=True)
    else:
        text = output.resource_table([obj], cls, all_ns, wide=fmt.kind == "wide",
                                     show_kind=show_kind, headers=not headed)
        suffix = "   (deleted)" if event == "DELETE" else ""
        print(text + suffix, flush=True)
