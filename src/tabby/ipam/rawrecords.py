"""IPAM's records as stored JSON, for tabby-ipam's exec path (tabby.ipam.fastpath).

Where the model keeps IPAMBlock, BlockAffinity, IPAMHandle and the rest, how it
names them, and how ``Client.create`` and ``SQLiteStore`` write them, restated
without importing the model (which costs every pod more than the whole ADD):
``tests/unit/test_ipam_fastpath.py`` holds each of these to the model's own
``KindInfo``, names and renderers. Imports: ``os`` and ``time``.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs every pod ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Doc = dict[str, Any]

__all__ = ["block_name", "dumps", "is_plain_name", "make_dumps", "name_prefix", "record"]

API_VERSION = "tabby.dev/v1"
POOLS = "ippools.tabby.dev"
BLOCKS = "ipamblocks.tabby.dev"
AFFINITIES = "blockaffinities.tabby.dev"
HANDLES = "ipamhandles.tabby.dev"
RESERVATIONS = "ipreservations.tabby.dev"
CONFIGS = "ipamconfigurations.tabby.dev"
RESERVED_HANDLE = "tabby-reserved-ipam-handle"  # tabby.ipam.blocks
WORKLOAD = "Workload"  # tabby.ipam.pools.USE
ANY_NODE = ("", "all()")  # nodeSelectors that select every node

MAX_NAME = 253
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_HEX = frozenset("0123456789abcdef")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_STEM_KEEP = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_STEM_CHARS = MAX_NAME - 16 - 1


def is_plain_name(text: str) -> bool:
    """Is ``text`` its own object name (a lowercase RFC 1123 subdomain that does not end
    like a hashed name)? Then ``object_name(text) == text``."""
    if not text or len(text) > MAX_NAME:
        return False
    for label in text.split("."):
        if not label or label[0] == "-" or label[-1] == "-" or not set(label) <= _NAME_CHARS:
            return False
    tail = text[-17:]
    return not (len(tail) == 17 and tail[0] == "-" and set(tail[1:]) <= _HEX)


def name_prefix(prefix: str) -> str:
    """``tabby.model.names.name_prefix``: a prefix of the names of every id starting so."""
    stem = "".join(c if c in _STEM_KEEP else c.lower() if c in _UPPER else "-"
                   for c in prefix).lstrip("-")
    common = 0
    while common < min(len(prefix), len(stem)) and prefix[common] == stem[common]:
        common += 1
    return prefix[:common][:_STEM_CHARS]


def block_name(cidr: object) -> str | None:
    """The object name of the block ``cidr`` (as the model prints it); None for the
    hashed names (``::/n`` ranges: the text would start with '-')."""
    dashed = str(cidr).replace(".", "-").replace(":", "-").replace("/", "-")
    return dashed if is_plain_name(dashed) else None


def record(kind: str, name: str, spec: Doc) -> Doc:
    """A new record as ``Client.create`` stores it."""
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": {"name": name, "uid": uid(), "creationTimestamp": now()},
            "spec": spec}


def uid() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` (uuid itself costs ~2 ms)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_dumps(*, compact: bool) -> Callable[[Doc], str]:
    """``json.dumps``, from ``_json``'s C encoder (json itself imports re): compact is
    how SQLiteStore writes values (``separators=(",", ":"), ensure_ascii=False``), else
    json.dumps's defaults (tabby-ipam's result, as it has always printed it)."""
    seps, ascii_only = ((":", ","), False) if compact else ((": ", ", "), True)
    try:
        from _json import encode_basestring, encode_basestring_ascii, make_encoder

        def default(value: object) -> Any:
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

        quote = encode_basestring_ascii if ascii_only else encode_basestring
        encode = make_encoder({}, default, quote, None, *seps, False, False, True)
        return lambda doc: "".join(encode(doc, 0))
    except (ImportError, TypeError):  # no C accelerator, or another shape of it
        import json

        return lambda doc: json.dumps(doc, separators=(seps[1], seps[0]),
                                      ensure_ascii=ascii_only)


dumps = make_dumps(compact=True)
