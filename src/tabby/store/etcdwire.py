"""What goes over the wire to etcd's HTTP gateway, and what comes back.

Keys are ``Key.path()`` (``/tabby/RESOURCE/NAMESPACE|_/NAME``) and values
compact JSON, both base64 in the gateway's JSON; a transaction's compares
name a key's create or mod revision; a reply's header carries the store
revision. ``answered`` and ``describe`` read an ``etcd3gw`` error: did a member
answer at all, and in which words. Pure functions, no I/O (``tabby.store.etcd``
does the talking).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from etcd3gw.exceptions import Etcd3Exception

from tabby.errors import Conflict, NotFound, StoreError
from tabby.store.base import Event, Item, Key, Value

__all__ = ["answered", "b64", "cas_failure", "compare", "describe", "dump", "event",
           "header_revision", "item", "key_of", "load", "prefix_end", "summary"]

Json = dict[str, Any]


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # etcd: every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def compare(path: str, target: str, result: str, number: int) -> Json:
    field = {"CREATE": "create_revision", "MOD": "mod_revision"}[target]
    return {"key": b64(path), "target": target, "result": result, field: number}


def dump(key: Key, value: Value) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{key}: the value is not JSON-serialisable ({e})") from e


def load(key: Key, data: str | None) -> Any:
    try:
        return json.loads(base64.b64decode(data or ""))
    except ValueError as e:
        raise StoreError(f"{key}: the stored value is not JSON ({e})") from e


def key_of(raw: str) -> Key:
    path = base64.b64decode(raw).decode(errors="replace")
    try:
        return Key.from_path(path)
    except ValueError as e:
        raise StoreError(f"etcd key {path!r} is not a tabby key (/tabby/RESOURCE/NS/NAME);"
                         " remove it") from e


def item(kv: Json) -> Item:
    key = key_of(kv["key"])
    return Item(key, load(key, kv.get("value")), int(kv["mod_revision"]),
                int(kv["create_revision"]))


def event(raw: Json) -> Event:
    kv: Json = raw["kv"]
    key = key_of(kv["key"])
    revision = int(kv["mod_revision"])
    if raw.get("type") == "DELETE":
        prev = raw.get("prev_kv")  # absent only if the previous revision was compacted
        return Event("DELETE", key, load(key, prev.get("value")) if prev else None, revision)
    return Event("PUT", key, load(key, kv.get("value")), revision)


def header_revision(reply: Json) -> int:
    return int(reply["header"]["revision"])


def cas_failure(key: Key, reply: Json, expected: int | None) -> StoreError:
    kvs = reply["responses"][0]["response_range"].get("kvs") or []
    if not kvs:
        return NotFound(f"{key} not found")
    return Conflict(f"{key} changed (revision {kvs[0]['mod_revision']}, expected {expected})")


def answered(e: Etcd3Exception) -> bool:
    """Did a member answer (alive but e.g. leaderless), as opposed to nobody listening?"""
    text = e.detail_text or ""
    return text.lstrip().startswith("{") or "Read timed out" in text


def describe(e: Etcd3Exception) -> str:
    text = e.detail_text or ""
    try:
        return str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):
        return text[:300] or type(e).__name__


def summary(errors: Sequence[tuple[str, str]]) -> str:
    """``(endpoint, what went wrong)`` pairs in one line, endpoints that failed alike
    together: ``"h:1, h:2: refused; h:3: timed out"``."""
    by_reason: dict[str, list[str]] = {}
    for endpoint, why in errors:
        by_reason.setdefault(why, []).append(endpoint)
    return "; ".join(f"{', '.join(eps)}: {why}" for why, eps in by_reason.items())
