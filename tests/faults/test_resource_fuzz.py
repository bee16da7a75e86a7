"""Fuzzing every kind's manifest: parsing, validation, and ``tabby apply`` on a real store.

From one valid example of every tabby.dev kind (tests/unit/test_crds.py FULL), each
case replaces, drops or adds values at random paths: deep nesting, huge
strings, odd unicode, wrong types. tabby holds when:

- ``parse_manifest`` either returns a resource or raises ValidationError (never
  another exception: a RecursionError, a TypeError, a KeyError is a loss), and
  an accepted object survives its own round trip (to_manifest, parse again,
  equal);
- ``tabby apply -f`` of a batch of such documents as YAML text (some with
  duplicate keys, some nested thousands deep) exits 0 or 1 with no traceback,
  and a refused batch leaves the store exactly as it was (same revision).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tabby.errors import ValidationError
from tabby.model import parse_manifest
from tests.faults.fuzz import SCALE, SEED, Tally, mutate, nested
from tests.unit.test_crds import FULL

TABBY = [str(Path(sys.executable).parent / "tabby")]
EXAMPLES = [(kind, doc) for kind, docs in sorted(FULL.items()) for doc in docs]


def parsed(doc: Any) -> str | None:
    try:
        obj = parse_manifest(doc)
    except ValidationError:
        return None
    again = parse_manifest(obj.to_manifest())
    if again != obj:
        return "round trip changed the object"
    return None


def test_every_kind_parses_or_refuses_cleanly() -> None:
    rnd = random.Random(f"{SEED}-parse")
    tally = Tally("resource fuzz, parse")
    for n in range(SCALE * 10):
        kind, example = rnd.choice(EXAMPLES)
        doc = mutate(rnd, example, edits=rnd.randrange(1, 5))
        tally.check(f"case {n} {kind}", lambda doc=doc: parsed(doc))
    print(tally.report())
    assert not tally.lost, "\n".join(tally.lost[:10])


def yaml_batch(rnd: random.Random) -> str:
    """A few documents as YAML text, now and then with a duplicate key or deep nesting."""
    docs = []
    for _ in range(rnd.randrange(1, 4)):
        _, example = rnd.choice(EXAMPLES)
        doc = mutate(rnd, example, edits=rnd.randrange(0, 3))
        docs.append(json.dumps(doc, ensure_ascii=False) + "\n"  # JSON is YAML too
                    if depth_of(doc) > 200 else
                    yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1_000))
    text = "---\n".join(docs)
    roll = rnd.random()
    if roll < 0.15:  # a duplicate key in the first mapping
        text = text.replace("metadata:", "kind: Again\nmetadata:", 1)
    elif roll < 0.25:
        text += "---\n" + json.dumps(nested(rnd.choice([200, 5_000]), "list"))
    elif roll < 0.3:
        text += "---\n" + "[" * 50_000
    return text


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, dict | list) and value:
        value = next(iter(value.values())) if isinstance(value, dict) else value[0]
        depth += 1
    return depth


def test_apply_of_hostile_yaml_refuses_cleanly_and_loses_nothing(tmp_path: Path) -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))  # writing deep documents
    rnd = random.Random(f"{SEED}-apply")
    tally = Tally("resource fuzz, tabby apply")
    store = f"sqlite://{tmp_path / 'fuzz.db'}"
    for n in range(max(4, SCALE // 4)):
        text = yaml_batch(rnd)

        def run(text: str = text) -> str | None:
            before = revision(store)
            done = subprocess.run([*TABBY, "--datastore", store, "apply", "-f", "-"],
                                  input=text, capture_output=True, text=True, timeout=60,
                                  check=False)
            if "Traceback" in done.stderr or done.returncode not in (0, 1):
                return f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
            if done.returncode == 1 and not done.stderr.strip():
                return "refused without saying why"
            if done.returncode == 1 and revision(store) != before and "created" not in \
                    done.stdout and "configured" not in done.stdout:
                return "a refused batch changed the store"
            return None
        tally.check(f"batch {n}", run)
    print(tally.report())
    assert not tally.lost, "\n".join(tally.lost[:10])


def revision(store: str) -> str:
    from tabby.store import open_store
    with open_store(store) as s:
        return str(s.revision())
