"""``tabby edit KIND NAME | KIND/NAME``: change a stored object in ``$EDITOR``, as kubectl.

The object is written as YAML to a temporary file and ``$VISUAL``, else
``$EDITOR``, else ``vi`` opens it. What comes back is parsed and validated as
``apply`` would, then written with compare-and-swap on the revision it was
read at. When it does not validate, or the store refuses it (an immutable
field, an overlapping pool, a concurrent change), the editor opens again with
the errors as comments at the top; saving the same rejected text twice keeps
a copy of it and exits 1. Saving without a change, or an empty file, cancels.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tabby.cli import kinds
from tabby.cli.context import open_client
from tabby.cli.documents import StrictLoader
from tabby.cli.usage import UsageError, intermixed
from tabby.errors import ConfigError, TabbyError, ValidationError
from tabby.model import Resource, parse_manifest
from tabby.store.client import Client

HEADER = ("# Edit the object below. Lines starting with '#' are ignored; an empty file"
          " cancels the edit.\n# If an error occurs while saving, this file is reopened"
          " with the error.\n#\n")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("edit", help="edit a stored object in $EDITOR (re-validated on save)")
    p.add_argument("words", nargs="+", metavar="KIND NAME | KIND/NAME")
    p.add_argument("-n", "--namespace", help="namespace (default: default)")
    p.set_defaults(func=cmd_edit)
    intermixed(p)


def editor_command() -> list[str]:
    text = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    argv = shlex.split(text)
    if not argv:
        raise ConfigError("$EDITOR is empty: set it to your editor, e.g. EDITOR=vi")
    return argv


def run_editor(path: Path) -> None:
    argv = editor_command()
    try:
        code = subprocess.call([*argv, str(path)])
    except OSError as exc:
        raise ConfigError(f"cannot run the editor {argv[0]!r} ({exc.strerror}); set $EDITOR"
                          ) from exc
    if code != 0:
        raise TabbyError(f"the editor {argv[0]!r} exited with code {code}; nothing was saved")


def strip_comments(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.lstrip().startswith("#"))


def check(edited: str, old: Resource) -> Resource:
    """The edited object, validated, naming the same object as ``old``."""
    try:
        doc = yaml.load(edited, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        raise TabbyError(f"malformed YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(doc, dict):
        raise TabbyError("the file must hold one object (a mapping)")
    new = parse_manifest(doc)
    if type(new) is not type(old) or (new.meta.name, new.meta.namespace) != (
            old.meta.name, old.meta.namespace):
        raise TabbyError(f"the kind, name and namespace cannot change (still {old.ref});"
                         " use tabby create for a new object")
    return new.with_meta(resource_version=old.meta.resource_version)


def cmd_edit(args: argparse.Namespace) -> int:
    wanted = kinds.targets(args.words)
    if len(wanted) != 1 or len(wanted[0].names) != 1:
        raise UsageError("edit takes one object: KIND NAME or KIND/NAME")
    cls, name = wanted[0].cls, wanted[0].names[0]
    ns = (args.namespace or "default") if cls.KIND.namespaced else ""
    client = open_client(args)
    old = client.get(cls, name, ns)
    original = yaml.safe_dump(old.to_manifest(), sort_keys=False, default_flow_style=False)
    return edit_loop(client, old, original, kinds.display(cls, name))


def edit_loop(client: Client, old: Resource, original: str, label: str) -> int:
    with tempfile.TemporaryDirectory(prefix="tabby-edit-") as tmp:
        path = Path(tmp) / f"{label.replace('/', '-')}.yaml"
        text, rejected = original, None
        errors: list[str] = []
        while True:
            notes = "".join(f"# error: {e}\n" for e in errors)
            path.write_text(HEADER + notes + ("#\n" if notes else "") + text)
            run_editor(path)
            edited = strip_comments(path.read_text())
            if not edited.strip() or edited == original:
                print("Edit cancelled, no changes made.")
                return 0
            if edited == rejected:
                keep = Path(tempfile.mkstemp(prefix="tabby-edit-", suffix=".yaml")[1])
                keep.write_text(edited)
                for e in errors:
                    print(f"error: {e}", file=sys.stderr)
                print(f"error: the edit was not saved; a copy of your changes is in {keep}",
                      file=sys.stderr)
                return 1
            try:
                client.update(check(edited, old), old)
            except ValidationError as exc:
                errors = exc.lines()
            except TabbyError as exc:
                errors = [str(exc)]
            else:
                print(f"{label} edited")
                return 0
            text, rejected = edited, edited
