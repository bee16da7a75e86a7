"""Field types shared by BGPConfiguration and BGPPeer: passwords, durations, communities.

Passwords (TCP-MD5) take Calico's shape, a reference to a key of a Secret,
or tabby's inline form::

    password:
      secretKeyRef: {name: bgp-secrets, key: rack1}   # Calico: Secret in tabby-system
    password:
      value: s3cret                                    # tabby: inline, no Secret needed

Durations are Go's (``120s``, ``2m``, ``1h30m``, ``500ms``), as Calico writes
them; BGP carries graceful-restart times in whole seconds up to 4095.
Communities are standard (``65001:100``) or large (``65001:100:200``).
BFD settings (``bfd`` on a BGPPeer, ``nodeToNodeMeshBFD`` on BGPConfiguration,
tabby extensions) are ``{enabled, minRxInterval, minTxInterval, multiplier}``
with intervals as Go durations in whole milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tabby.model.fields import Fields
from tabby.model.schema import Schema, boolean, integer, obj, string

SECRET_NAMESPACE = "tabby-system"
"""Where ``secretKeyRef`` looks for its Secret (Calico: the calico-node namespace)."""

MAX_RESTART_SECONDS = 4095  # the graceful-restart capability's 12-bit field
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PRINTABLE = re.compile(r'^[\x21\x23-\x5b\x5d-\x7e ]*$')  # printable ASCII but " and \


def password_schema(description: str) -> Schema:
    return obj({
        "value": string("The password itself (tabby's inline form)."),
        "secretKeyRef": obj({
            "name": string("The Secret's name (in tabby-system)."),
            "key": string("The key within the Secret."),
            "optional": boolean("Accepted for Calico compatibility; not used."),
        }, "A key of a Secret in tabby-system (Calico's form).", required=["name", "key"]),
    }, f"{description} Set value or secretKeyRef.")


def duration_schema(description: str) -> Schema:
    return string(f"{description} A Go duration (120s, 2m, 1h30m) within 1s..4095s.",
                  pattern=r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


def as_number_schema(description: str) -> Schema:
    return integer(description, minimum=1, maximum=4294967295)


def port_schema(description: str) -> Schema:
    return integer(description, minimum=1, maximum=65535)


@dataclass(frozen=True, slots=True)
class Password:
    """Either an inline ``value`` or a ``secretKeyRef`` (name, key) to resolve later."""

    value: str = ""
    secret_name: str = ""
    secret_key: str = ""

    @property
    def inline(self) -> bool:
        return not self.secret_name

    def to_dict(self) -> dict[str, object]:
        if self.inline:
            return {"value": self.value}
        return {"secretKeyRef": {"name": self.secret_name, "key": self.secret_key}}


def password_problem(value: str) -> str:
    """Why ``value`` cannot be a BGP password ("" if it can): BIRD's strings have no escapes."""
    if not value:
        return "is empty"
    if len(value) > 80:
        return "is longer than 80 characters (the TCP-MD5 key limit)"
    if not _PRINTABLE.match(value):
        return 'may hold printable ASCII only, without " and \\'
    return ""


def parse_password(f: Fields, name: str) -> Password | None:
    if not f.has(name):
        f.raw(name)
        return None
    p = f.map(name)
    inline = p.str("value")
    has_ref = p.has("secretKeyRef")
    ref = p.map("secretKeyRef")
    p.finish()
    if has_ref:
        secret, key = ref.str("name", required=True), ref.str("key", required=True)
        ref.raw("optional")
        ref.finish()
        if p.has("value"):
            p.error("", "set either value (inline) or secretKeyRef, not both")
            return None
        return Password(secret_name=secret, secret_key=key)
    if not p.has("value"):
        p.error("", "needs secretKeyRef: {name, key} or value (inline)")
        return None
    problem = password_problem(inline)
    if problem:
        p.error("value", problem)
        return None
    return Password(value=inline)


def parse_duration(f: Fields, name: str) -> int | None:
    """A Go duration as whole seconds (rounded up), within 1..4095; None if unset."""
    text = f.str(name)
    if not text:
        return None
    total = _go_duration(text)
    if total is None:
        f.error(name, f"{text!r} is not a duration (e.g. 120s, 2m, 1h30m)")
        return None
    seconds = int(-(-total // 1))
    if not 1 <= seconds <= MAX_RESTART_SECONDS:
        f.error(name, f"{text!r} is outside 1s..{MAX_RESTART_SECONDS}s")
        return None
    return seconds


def format_duration(seconds: int) -> str:
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class Community:
    """A standard (two parts) or large (three parts) BGP community."""

    parts: tuple[int, ...]

    @property
    def large(self) -> bool:
        return len(self.parts) == 3

    def __str__(self) -> str:
        return ":".join(str(p) for p in self.parts)


def parse_community(text: str) -> Community | str:
    """The community written ``aa:nn`` or ``aa:nn:mm``, or why it is not one."""
    pieces = text.split(":")
    if len(pieces) not in (2, 3) or not all(p.isdigit() for p in pieces):
        return f"{text!r} is not a community (aa:nn or aa:nn:mm)"
    parts = tuple(int(p) for p in pieces)
    limit = 65535 if len(parts) == 2 else 4294967295
    if any(p > limit for p in parts):
        return f"{text!r}: each part must be within 0..{limit}"
    return Community(parts)


def parse_as_number(f: Fields, name: str, *, required: bool = False) -> int | None:
    asn = f.int(name, required=required)
    if asn is not None and not 1 <= asn <= 4294967295:
        f.error(name, f"{asn} is outside 1..4294967295")
        return None
    return asn


def parse_port(f: Fields, name: str) -> int | None:
    port = f.int(name)
    if port is not None and not 1 <= port <= 65535:
        f.error(name, f"{port} is outside 1..65535")
        return None
    return port


# -- BFD (a tabby extension: Calico has no BFD fields) ---------------------------

BFD_DEFAULT_INTERVAL_MS = 100
BFD_DEFAULT_MULTIPLIER = 3
BFD_MAX_INTERVAL_MS = 60_000
BFD_MAX_MULTIPLIER = 255


@dataclass(frozen=True, slots=True)
class BFD:
    """Bidirectional Forwarding Detection on a BGP session (BIRD's ``bfd { ... }``).

    A peer is declared dead after ``multiplier`` missed packets at the
    negotiated interval: 3 x 100 ms by default, so a dead link takes the session
    (and the routes learned over it) down in about 0.3 s instead of the BGP hold
    time (BIRD's default 240 s)."""

    enabled: bool = True
    min_rx_ms: int = BFD_DEFAULT_INTERVAL_MS
    min_tx_ms: int = BFD_DEFAULT_INTERVAL_MS
    multiplier: int = BFD_DEFAULT_MULTIPLIER

    def to_dict(self) -> dict[str, object]:
        return {"enabled": self.enabled, "minRxInterval": f"{self.min_rx_ms}ms",
                "minTxInterval": f"{self.min_tx_ms}ms", "multiplier": self.multiplier}


def bfd_schema(description: str) -> Schema:
    interval = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
    return obj({
        "enabled": boolean("Run BFD on the session (default true when bfd is given)."),
        "minRxInterval": string("The slowest rate we accept BFD packets at (default 100ms).",
                                pattern=interval),
        "minTxInterval": string("The fastest rate we send BFD packets at (default 100ms).",
                                pattern=interval),
        "multiplier": integer("Missed packets before the peer is declared down (default 3).",
                              minimum=1, maximum=BFD_MAX_MULTIPLIER),
    }, f"{description} A tabby extension (Calico has no BFD).")


def parse_bfd(f: Fields, name: str) -> BFD | None:
    """The ``bfd`` object at ``name``; None when absent."""
    if not f.has(name):
        f.raw(name)
        return None
    b = f.map(name)
    enabled = b.bool("enabled", True)
    rx = parse_millis(b, "minRxInterval", BFD_DEFAULT_INTERVAL_MS)
    tx = parse_millis(b, "minTxInterval", BFD_DEFAULT_INTERVAL_MS)
    multiplier = b.int("multiplier", BFD_DEFAULT_MULTIPLIER)
    if multiplier is not None and not 1 <= multiplier <= BFD_MAX_MULTIPLIER:
        b.error("multiplier", f"{multiplier} is outside 1..{BFD_MAX_MULTIPLIER}")
        multiplier = None
    b.finish()
    return BFD(enabled, rx, tx, multiplier or BFD_DEFAULT_MULTIPLIER)


def parse_millis(f: Fields, name: str, default: int) -> int:
    """A Go duration as whole milliseconds (rounded up) within 1ms..60s; ``default`` if unset."""
    text = f.str(name)
    if not text:
        return default
    seconds = _go_duration(text)
    if seconds is None:
        f.error(name, f"{text!r} is not a duration (e.g. 100ms, 1s)")
        return default
    millis = int(-(-seconds * 1000 // 1))
    if not 1 <= millis <= BFD_MAX_INTERVAL_MS:
        f.error(name, f"{text!r} is outside 1ms..{BFD_MAX_INTERVAL_MS // 1000}s")
        return default
    return millis


def _go_duration(text: str) -> float | None:
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos else None
