"""The Kubernetes API's answers in tabby's terms: keys, values, bodies, errors.

Shared by the Kubernetes store (``tabby.store.kubernetes``), its watch
(``tabby.store.kubewatch``) and the lab's kubelet stand-in: what a served
object is as tabby keeps it (less the server's bookkeeping), the body a write
sends, and which of tabby's errors an API status is.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tabby.errors import (
    Compacted,
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    StoreError,
    ValidationError,
)
from tabby.store.base import Item, Key, Value
from tabby.store.kuberesources import APIResource

Json = dict[str, Any]
SERVER_FIELDS = ("managedFields", "resourceVersion", "generation", "selfLink")


class APIError(StoreError):
    """The API server answered with an error status (kept with its code)."""

    def __init__(self, status: int, message: str, body: Json | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


# -- values ------------------------------------------------------------------------------

def key_of(resource: str, obj: Json) -> Key:
    meta = obj.get("metadata") or {}
    return Key(resource, str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def item_of(key: Key, obj: Json) -> Item:
    meta = obj.get("metadata") or {}
    revision = int(meta.get("resourceVersion") or 0)
    return Item(key, served_value(obj), revision, 0)


def served_value(obj: Json) -> Json:
    """The object as tabby keeps it: less the server's bookkeeping fields."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return obj
    out = dict(obj)
    out["metadata"] = {k: v for k, v in meta.items() if k not in SERVER_FIELDS}
    return out


def body_of(res: APIResource, key: Key, value: Value) -> Json:
    body: Json = dict(value)
    meta = dict(body.get("metadata") or {})
    for name in (*SERVER_FIELDS, "uid", "creationTimestamp", "deletionTimestamp"):
        meta.pop(name, None)
    meta["name"] = key.name
    if res.namespaced:
        meta["namespace"] = key.namespace
    else:
        meta.pop("namespace", None)
    body["metadata"] = meta
    body["apiVersion"] = res.api_version
    body["kind"] = res.kind
    return body


# -- errors ------------------------------------------------------------------------------

def error_for(status: int, data: bytes | str | None, what: str) -> StoreError | ValidationError:
    """The error of an API server answer with ``status`` and body ``data`` (a Status
    object, usually), in tabby's tree, naming ``what`` was asked."""
    if isinstance(data, str):
        data = data.encode()
    data = data or b""
    try:
        doc: Json = json.loads(data) if data else {}
    except ValueError:
        doc = {"message": data[:300].decode(errors="replace")}
    message = str(doc.get("message") or f"HTTP {status}")
    if status == 404:
        return NotFound(f"{what}: {message}")
    if status == 409:
        return Conflict(f"{what}: {message}")
    if status == 410:
        return Compacted(f"{what}: {message}")
    if status in (401, 403):
        return Forbidden(f"{what}: {message}")
    if status == 422:
        details = doc.get("details") or {}
        causes = details.get("causes") or []
        name = f"{details.get('kind', '')}/{details.get('name', '')}".strip("/")
        errors = [FieldError(str(c.get("field") or ""), str(c.get("message") or ""))
                  for c in causes] or [FieldError("", message)]
        return ValidationError(name or what, errors)
    if status == 400 and "strict decoding error" in message:
        fields = _UNKNOWN_FIELD.findall(message) + _DUPLICATE_FIELD.findall(message)
        return ValidationError(what, [FieldError(f, "unknown field (the API server's schema"
                                                 " has no such field)") for f in fields]
                               or [FieldError("", message)])
    return APIError(status, f"{what}: {message}", doc)


_UNKNOWN_FIELD = re.compile(r'unknown field "([^"]+)"')
_DUPLICATE_FIELD = re.compile(r'duplicate field "([^"]+)"')


def never_sent(e: Exception) -> bool:
    """A connection that was never made: safe to retry even a write."""
    text = repr(e)
    return "NewConnectionError" in text or "Connection refused" in text


def describe(e: Exception) -> str:
    reason = getattr(e, "reason", None)
    return str(reason or e)[:300]
