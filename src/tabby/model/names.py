"""Names of stored objects derived from free-form ids (handle ids, node + pod + interface).

Kubernetes stores an object only under a lowercase RFC 1123 subdomain of at most 253
characters (``[a-z0-9]`` at both ends, ``[-a-z0-9.]`` between, no empty or dash-edged
label). The ids tabby names objects after are freer: a CNI network name may hold upper
case and ``_``, an interface name almost anything, a node name 253 characters on its own.

    object_name(text)                  text itself when it is a usable name, else
                                       <readable stem>-<16 hex of sha256(identity)>
    name_prefix(prefix)                a prefix every name of an id starting with
                                       ``prefix`` starts with (for listing by prefix)

The two forms never meet, so the mapping is one-to-one (up to a 64-bit hash collision):

- kept: a valid name that does not end like a hashed one (``-`` and 16 hex digits), so
  names that were already valid keep their value and existing stores keep working;
- hashed: everything else. It always ends in ``-`` and the digest of ``identity`` (the id
  itself, or an unambiguous encoding of the parts it was built from): two ids that
  differ never share a digest, whatever their readable stems.

The stem maps character by character (ASCII upper case to lower case; anything outside
``[a-z0-9]``, including ``.``, to ``-``), drops leading dashes and is cut to fit; a
stem is one label, so no dot can make an empty or dash-edged one. Being a per-character
map is what makes ``name_prefix`` possible.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["DNS_SUBDOMAIN", "MAX_NAME", "is_object_name", "name_prefix", "object_name"]

MAX_NAME = 253
DIGEST_CHARS = 16  # 64 bits of sha256
STEM_CHARS = MAX_NAME - DIGEST_CHARS - 1
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_HASHED = re.compile(r"-[0-9a-f]{16}\Z")
_STEM_KEEP = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ASCII_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_object_name(name: str) -> bool:
    """Would the API server accept ``name`` as an object's name (an RFC 1123 subdomain)?"""
    return len(name) <= MAX_NAME and DNS_SUBDOMAIN.fullmatch(name) is not None  # not $: "a\n"


def digest(identity: str) -> str:
    data = identity.encode("utf-8", "surrogatepass")  # lone surrogates from JSON, too
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def object_name(text: str, *, identity: str | None = None, fallback: str = "x",
                keep: bool = True) -> str:
    """``text`` if it is a usable name (and ``keep``), else a readable stem of it and the
    digest of ``identity`` (default: ``text``). Pass ``keep=False`` when ``text`` does not
    identify its object alone (it reads two ways); ``fallback`` is the stem when nothing
    of ``text`` survives."""
    if keep and is_object_name(text) and not _HASHED.search(text):
        return text
    stem = _stem(text)[:STEM_CHARS] or fallback  # may end in '-': the digest follows
    return f"{stem}-{digest(text if identity is None else identity)}"


def name_prefix(prefix: str) -> str:
    """A prefix of ``object_name(t)`` for every ``t`` that starts with ``prefix`` (kept or
    hashed): the longest start of ``prefix`` the stem leaves alone, cut to fit a stem."""
    stem = _stem(prefix)
    common = 0
    while common < min(len(prefix), len(stem)) and prefix[common] == stem[common]:
        common += 1
    return prefix[:common][:STEM_CHARS]


def _stem(text: str) -> str:
    chars = [c if c in _STEM_KEEP else c.lower() if c in _ASCII_UPPER else "-" for c in text]
    return "".join(chars).lstrip("-")
