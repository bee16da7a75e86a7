"""The one error tree of tabby.

    TabbyError
     ├── ValidationError        a resource or input failed validation (carries FieldErrors)
     ├── ConfigError            bad configuration (datastore URL, CNI network config, ...)
     ├── StoreError             the datastore refused or failed
     │    ├── NotFound          no object under that key
     │    ├── Conflict          compare-and-swap lost (revision moved, or object exists)
     │    ├── Compacted         a watch asked for history the store no longer keeps
     │    ├── Unavailable       the backend cannot be reached (retry later)
     │    └── Forbidden         the backend refused these credentials this operation
     ├── IPAMError              address management failed
     │    ├── PoolExhausted     no free address in any usable pool
     │    ├── NoUsablePool      no pool matches (family, node selector, disabled, ...)
     │    └── AddressNotFound   release/lookup of an address that is not allocated
     ├── DataplaneError         the kernel refused a change (netlink, nft)
     └── LabError               building or driving a lab failed

Library code raises these and never prints or exits; only the CLI and the CNI
entry points turn them into exit codes or CNI error objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class TabbyError(Exception):
    """Base of every error tabby raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem at one field path, e.g. ``spec.blockSize: 33 is outside 20..32``."""

    path: str
    message: str

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


class LabError(TabbyError):
    """Building, driving or tearing down a lab failed."""
