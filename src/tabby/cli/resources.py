"""``tabby apply``, ``tabby get``, ``tabby delete``: kubectl's verbs on tabby's store.

Every document of an ``apply -f`` is parsed and validated on its own; an
invalid one is reported (one line per problem, with its field path) and
nothing is written for it, while the valid ones are applied. When a lab is up,
Pods and Namespaces go through the lab, which wires them like a kubelet would.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import yaml

from tabby.calc.ipip import ipip_warning
from tabby.cli import output
from tabby.cli.context import open_client, wiring_lab
from tabby.errors import FieldError, NotFound, TabbyError, ValidationError
from tabby.model import (
    IPPool,
    Namespace,
    Node,
    Pod,
    Resource,
    Service,
    parse_manifest,
    resolve_kind,
)
from tabby.store.client import Client


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("apply", help="create or update resources from YAML (many documents)")
    p.add_argument("-f", "--filename", required=True, action="append",
                   help="a YAML file, or - for standard input (repeatable)")
    p.set_defaults(func=cmd_apply)

    g = sub.add_parser("get", help="show resources")
    g.add_argument("kind", help="kind as kubectl writes it: ippool(s), pod(s), node(s), ...")
    g.add_argument("name", nargs="?", help="one object's name")
    g.add_argument("-n", "--namespace", help="namespace (default: default)")
    g.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    g.add_argument("-o", "--output", choices=("table", "yaml", "json", "wide"), default="table")
    g.set_defaults(func=cmd_get)

    d = sub.add_parser("delete", help="delete resources by file or by kind and name")
    d.add_argument("kind", nargs="?", help="kind as kubectl writes it")
    d.add_argument("names", nargs="*", help="names of objects")
    d.add_argument("-f", "--filename", action="append", help="a YAML file, or -")
    d.add_argument("-n", "--namespace", help="namespace (default: default)")
    d.add_argument("--ignore-not-found", action="store_true")
    d.set_defaults(func=cmd_delete)


# -- reading documents -------------------------------------------------------

def read_documents(paths: list[str], stdin: TextIO | None = None) -> Iterator[tuple[str, Any]]:
    """(where, document) for every non-empty YAML document; ValidationError on bad YAML."""
    for path in paths:
        try:
            if path == "-":
                text = (stdin or sys.stdin).read()
            else:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
        except OSError as exc:
            raise TabbyError(f"{path}: {exc.strerror}") from exc
        try:
            docs = list(yaml.load_all(text, Loader=StrictLoader))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            problem = getattr(exc, "problem", None) or str(exc)
            raise ValidationError(where, [FieldError("", f"malformed YAML: {problem}")]) from exc
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            yield f"{path}[{index}]", doc


MAX_DEPTH = 100  # nesting levels a document may have (no tabby resource needs 20)


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps
    the last silently; kubectl refuses it too) and a document nested more than
    ``MAX_DEPTH`` levels deep (PyYAML builds nodes recursively: thousands of ``[``
    would end in a RecursionError)."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expand_lists(doc: Any) -> list[Any]:
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        return list(doc["items"])
    return [doc]


def parse_documents(paths: list[str]) -> tuple[list[Resource], list[str]]:
    """Valid resources and the error lines of the invalid documents."""
    objects: list[Resource] = []
    errors: list[str] = []
    for where, doc in read_documents(paths):
        for item in _expand_lists(doc):
            if not isinstance(item, dict):
                errors.append(f"{where}: a document must be a mapping, not {type(item).__name__}")
                continue
            try:
                objects.append(parse_manifest(item))
            except ValidationError as exc:
                errors.extend(exc.lines())
    return objects, errors


# -- apply ---------------------------------------------------------------------

def cmd_apply(args: argparse.Namespace) -> int:
    objects, errors = parse_documents(args.filename)
    client = open_client(args)
    lab = wiring_lab(args)
    # Namespaces before the pods that live in them, whatever the file order.
    objects.sort(key=lambda o: 0 if isinstance(o, Namespace) else 1)
    pods = [o for o in objects if isinstance(o, Pod)] if lab is not None else []
    for obj in objects:
        if lab is not None and isinstance(obj, Pod):
            continue  # wired below, several at a time
        report(obj, functools.partial(apply_one, client, lab, obj), errors)
        if isinstance(obj, IPPool) and obj.spec.ipip_mode != "Never":
            print(f"warning: {ipip_warning(obj)}", file=sys.stderr)
    if pods:
        from tabby.cli.lab import ProgressPrinter
        from tabby.lab import pods as lab_pods
        results = lab_pods.apply_pods(lab, client, pods,  # type: ignore[arg-type]
                                      ProgressPrinter() if len(pods) > 1 else None)
        for pod, result in zip(pods, results, strict=True):
            report(pod, functools.partial(_reraise, result), errors)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if errors else 0


def report(obj: Resource, action: Callable[[], str], errors: list[str]) -> None:
    """Run one object's action, printing kubectl's line or collecting its error."""
    try:
        verb = action()
    except ValidationError as exc:
        errors.extend(exc.lines())
        return
    except TabbyError as exc:
        errors.append(f"{obj.ref}: {exc}")
        return
    print(f"{_display(obj)} {verb}", flush=True)


def _reraise(result: str | TabbyError) -> str:
    if isinstance(result, TabbyError):
        raise result
    return result


def apply_one(client: Client, lab: object | None, obj: Resource) -> str:
    if lab is not None and isinstance(obj, Service):
        from tabby.lab import services as lab_services
        return lab_services.apply_service(lab, client, obj)  # type: ignore[arg-type]
    if lab is not None and isinstance(obj, Pod | Namespace):
        from tabby.lab import pods as lab_pods
        if isinstance(obj, Pod):
            return lab_pods.apply_pod(lab, client, obj)  # type: ignore[arg-type]
        return lab_pods.apply_namespace(lab, client, obj)  # type: ignore[arg-type]
    return client.apply(obj)[1]


def _display(obj: Resource) -> str:
    info = obj.KIND
    group = f".{info.group}" if info.group else ""
    return f"{info.kind.lower()}{group}/{obj.meta.name}"


# -- get -----------------------------------------------------------------------

def cmd_get(args: argparse.Namespace) -> int:
    cls = resolve_kind(args.kind)
    client = open_client(args)
    namespace = args.namespace or ("default" if cls.KIND.namespaced else "")
    if args.name:
        try:
            obj = client.get(cls, args.name, namespace)
        except NotFound as exc:
            raise TabbyError(f"{cls.KIND.kind.lower()} {args.name!r} not found"
                             + (f" in namespace {namespace!r}" if cls.KIND.namespaced else "")
                             ) from exc
        objs = [obj]
    else:
        scope = None if args.all_namespaces or not cls.KIND.namespaced else namespace
        objs = client.list(cls, scope)
    if args.output in ("json", "yaml"):
        data = objs[0].to_manifest() if args.name else output.as_list(objs)
        print(output.dump(data, args.output))
        return 0
    if not objs:
        where = "" if args.all_namespaces or not cls.KIND.namespaced else \
            f" in {namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    print(output.resource_table(objs, cls, args.all_namespaces))
    return 0


# -- delete --------------------------------------------------------------------

def delete_node(client: Client, name: str) -> list[str]:
    """``tabby delete node NAME``: the node's endpoints, addresses, block affinities and
    Node (``tabby.kube.nodecleanup.clean_node``, what the node controller does when a
    Kubernetes Node goes). NotFound if there is no such Node; the lines to print."""
    from tabby.kube.nodecleanup import clean_node
    client.get(Node, name)
    try:
        done = clean_node(client, name)
    except TabbyError as exc:
        raise TabbyError(f"cleaning up failed: {exc} (the Node stays: delete it again to"
                         " finish; tabby ipam check shows what is left)") from exc
    lines = [f"node/{name} deleted"]
    if done.endpoints:
        lines.append(f"deleted {len(done.endpoints)} workload endpoints of node {name}")
    if done.addresses:
        lines.append(f"released {len(done.addresses)} addresses of node {name}")
    if done.blocks:
        lines.append(f"released {len(done.blocks)} IPAM block affinities of node {name}")
    return lines


def cmd_delete(args: argparse.Namespace) -> int:
    targets: list[tuple[type[Resource], str, str]] = []
    errors: list[str] = []
    if args.filename:
        objects, errors = parse_documents(args.filename)
        targets = [(type(o), o.meta.name, o.meta.namespace) for o in objects]
    elif args.kind and args.names:
        cls = resolve_kind(args.kind)
        ns = (args.namespace or "default") if cls.KIND.namespaced else ""
        targets = [(cls, name, ns) for name in args.names]
    else:
        raise TabbyError("delete needs -f FILE or KIND NAME...")
    client = open_client(args)
    lab = wiring_lab(args)
    for cls, name, ns in targets:
        label = f"{cls.KIND.kind.lower()}/{name}"
        lines = [f"{label} deleted"]
        try:
            if cls is Node:
                lines = delete_node(client, name)
            elif lab is not None and cls is Service:
                from tabby.lab import services as lab_services
                lab_services.delete_service(lab, client, ns, name)  # type: ignore[arg-type]
            elif lab is not None and cls in (Pod, Namespace):
                from tabby.lab import pods as lab_pods
                if cls is Pod:
                    lab_pods.delete_pod(lab, client, ns, name)  # type: ignore[arg-type]
                else:
                    lab_pods.delete_namespace(lab, client, name)  # type: ignore[arg-type]
            else:
                client.delete(cls, name, ns)
        except NotFound:
            if not args.ignore_not_found:
                errors.append(f"{label} not found")
            continue
        except TabbyError as exc:
            errors.append(f"{label}: {exc}")
            continue
        print("\n".join(lines))
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if errors else 0
