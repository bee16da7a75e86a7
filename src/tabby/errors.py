"""The one error tree of tabby.

    TabbyError
     ├── ValidationError        a resource or input failed validation (carries FieldErrors)
     ├── ConfigError            bad configuration (datastore URL, CNI network config, ...)
     │    └── UsageError        the command line itself is wrong (the CLI exits 2)
     ├── SelectorError          a label selector does not parse (names the position)
     ├── StoreError             the datastore refused or failed
     │    ├── NotFound          no object under that key
     │    ├── Conflict          compare-and-swap lost (revision moved, or object exists)
     │    ├── Compacted         a watch asked for history the store no longer keeps
     │    ├── Unavailable       the backend cannot be reached (retry later)
     │    ├── Forbidden         the backend refused these credentials this operation
     │    └── APIError          the Kubernetes API server answered an error status (.status);
     │                          defined in tabby.store beside the client that reads it
     ├── IPAMError              address management failed
     │    ├── PoolExhausted     no free address in any usable pool
     │    ├── NoUsablePool      no pool matches (family, node selector, disabled, ...)
     │    └── AddressNotFound   release/lookup of an address that is not allocated
     ├── DataplaneError         the kernel refused a change (netlink, nft)
     │    └── NetlinkError      a netlink request failed; .code is the errno
     ├── BirdError              BIRD could not be asked, or refused a command
     ├── CNIError               a failure the runtime sees as a CNI error object (.code, .msg,
     │    │                     .details; the codes are the ERR_* names below)
     │    └── PluginFailed      a CNI plugin executed as a runtime does failed (names it)
     ├── FrameError             a frame between tabby-cni and the agent was cut short,
     │                          oversized or not a JSON object
     ├── DrillError             an IPAM concurrency drill worker died or went silent
     └── LabError               building or driving a lab failed

Not in the tree, on purpose: exceptions that steer control flow inside one
module and never reach a caller (``tabby.nft.render.TypeChanged``: a set
changed its type, render the whole table instead of a delta;
``tabby.store.etcd._NotConnected``: try the next endpoint;
``tabby.ipam.fastpath._Decline``: leave this request to the IPAM engine).
``tests/unit/test_errors.py`` walks every module and holds the tree to this
drawing.

Library code raises these and never prints or exits; only the CLI and the CNI
entry points (``tabby.cni.frontend``) turn them into exit codes or CNI error
objects.

This module is the bottom layer and imports nothing from tabby. ``tabby-cni``
imports it on every pod, so it stays free of anything costly to import
(``typing``, ``dataclasses``, ``collections``): hence ``FieldError`` is written
out by hand rather than with ``@dataclass``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs tabby-cni ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, NoReturn

# The CNI spec's well-known error codes (spec 1.1, "Error"); 100 and up are a
# plugin's own. tabby.cni.wire re-exports them for the plugin and the agent.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENVIRONMENT = 4  # the message names the variables
ERR_IO = 5
ERR_DECODING = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50  # STATUS: cannot serve ADD
ERR_NOT_AVAILABLE_LIMITED = 51  # STATUS: ... and existing pods may have limited connectivity
ERR_IPAM = 100  # tabby: address management failed (pool exhausted, no usable pool)
ERR_INTERNAL = 999


class TabbyError(Exception):
    """Base of every error tabby raises on purpose."""


class FieldError:
    """One problem at one field path, e.g. ``spec.blockSize: 33 is outside 20..32``.

    A small frozen value (equality, hash, repr, pickling), as
    ``@dataclass(frozen=True, slots=True)`` would make it.
    """

    __slots__ = ("message", "path")
    __match_args__ = ("path", "message")
    path: str
    message: str

    def __init__(self, path: str, message: str) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "message", message)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen FieldError")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"cannot delete field {name!r} of a frozen FieldError")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FieldError):
            return NotImplemented
        return (self.path, self.message) == (other.path, other.message)

    def __hash__(self) -> int:
        return hash((self.path, self.message))

    def __repr__(self) -> str:
        return f"FieldError(path={self.path!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[type[FieldError], tuple[str, str]]:
        return FieldError, (self.path, self.message)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(TabbyError):
    """A resource (or other input) is invalid; names the object and each field."""

    def __init__(self, obj: str, errors: Iterable[FieldError]) -> None:
        self.obj = obj
        self.errors = tuple(errors)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        prefix = f"{self.obj}: " if self.obj else ""
        return [f"{prefix}{e}" for e in self.errors]


class ConfigError(TabbyError):
    """Bad configuration: a datastore URL, a CNI network config, a flag."""


class UsageError(ConfigError):
    """The command line itself is wrong: the CLI prints the subcommand's usage, exits 2."""


class SelectorError(TabbyError):
    """A label selector does not parse; names the text and the character position."""

    def __init__(self, text: str, pos: int, message: str) -> None:
        self.text = text
        self.pos = pos
        super().__init__(f"selector {text!r}: {message} at position {pos}")


class StoreError(TabbyError):
    """The datastore refused or failed an operation."""


class NotFound(StoreError):
    """No object under that key."""


class Conflict(StoreError):
    """A compare-and-swap lost: the object changed, or already exists."""


class Compacted(StoreError):
    """A watch asked to start before the oldest revision the store still keeps."""


class Unavailable(StoreError):
    """The backend cannot be reached; the caller may retry later."""


class Forbidden(StoreError):
    """The backend refused the operation to these credentials (names verb and resource)."""


class IPAMError(TabbyError):
    """Address management failed."""


class PoolExhausted(IPAMError):
    """Every usable pool is full."""


class NoUsablePool(IPAMError):
    """No enabled pool of the family selects this node."""


class AddressNotFound(IPAMError):
    """The address is not allocated (or not in any block)."""


class DataplaneError(TabbyError):
    """The kernel refused a change."""


class NetlinkError(DataplaneError):
    """The kernel refused a netlink request; ``code`` is the errno."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class BirdError(TabbyError):
    """BIRD could not be asked (no socket, no answer) or refused a command."""


class CNIError(TabbyError):
    """A failure the runtime sees as a CNI error object (``code`` per the spec's table).

    Codes: 1 incompatible version, 2 unsupported field, 3 unknown container,
    4 invalid environment, 5 I/O, 6 decoding, 7 invalid network config,
    11 try again later, 50/51 plugin not available (STATUS), 100 IPAM
    failure (tabby's), 999 internal: the ``ERR_*`` names above.
    """

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg, "details": self.details}

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        """The error object a plugin prints (spec: ``Error`` section)."""
        return {"cniVersion": cni_version, **self.to_wire()}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> CNIError:
        """From an error object a plugin printed (or our wire form)."""
        code, msg, details = obj.get("code"), obj.get("msg"), obj.get("details", "")
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(msg, str):
            raise CNIError(ERR_DECODING, "not a CNI error object", repr(dict(obj))[:300])
        return cls(code, msg, details if isinstance(details, str) else str(details))


class PluginFailed(CNIError):
    """A plugin exited non-zero (or printed something that is not JSON)."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "",
                 stderr: str = "") -> None:
        super().__init__(code, msg, details)
        self.plugin, self.command, self.stderr = plugin, command, stderr

    def __str__(self) -> str:
        where = f"{self.plugin} {self.command}"
        details = f" ({self.details})" if self.details else ""
        return f"{where}: CNI error {self.code}: {self.msg}{details}"


class FrameError(TabbyError):
    """A frame was truncated, oversized or not a JSON object."""


class DrillError(TabbyError):
    """A drill worker died or went silent."""


class LabError(TabbyError):
    """Building, driving or tearing down a lab failed."""
