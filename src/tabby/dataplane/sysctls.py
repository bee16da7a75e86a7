"""The sysctl reconciler: node-wide kernel switches tabby needs, by difference.

``SysctlReconciler.apply({"net/ipv4/ip_forward": "1", ...})`` reads each key
and writes only those that differ. Keys name ``/proc/sys`` paths with ``/``
(interface names may hold dots). A key whose file does not exist (IPv6
disabled, say) is reported, not fatal. Kernel access goes through the
``netlink`` opener (``SysctlNetlink``: read and write a key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tabby.dataplane.netlink import CallCounts, Opener, opener
from tabby.errors import NetlinkError


class SysctlNetlink(Protocol):
    """The kernel calls a sysctl pass makes."""

    def sysctl_get(self, key: str) -> str: ...

    def sysctl_set(self, key: str, value: str) -> None: ...


@dataclass(slots=True)
class SysctlSync:
    written: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class SysctlReconciler:
    def __init__(self, counts: CallCounts, netns: str | None = None, *,
                 netlink: Opener[SysctlNetlink] | None = None) -> None:
        self._open = netlink if netlink is not None else opener(counts)
        self._netns = netns

    def apply(self, desired: Mapping[str, str]) -> SysctlSync:
        result = SysctlSync()
        with self._open(self._netns) as nl:
            for key, value in sorted(desired.items()):
                try:
                    if nl.sysctl_get(key) != value:
                        nl.sysctl_set(key, value)
                        result.written.append(key)
                except NetlinkError as exc:
                    result.errors.append(str(exc))
        return result
