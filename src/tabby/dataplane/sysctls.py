"""The sysctl reconciler: node-wide kernel switches tabby needs, by difference.

``SysctlReconciler.apply({"net/ipv4/ip_forward": "1", ...})`` reads each key
and writes only those that differ. Keys name ``/proc/sys`` paths with ``/``
(interface names may hold dots). A key whose file does not exist (IPv6
disabled, say) is reported, not fatal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tabby.dataplane.netlink import CallCounts, Netlink, NetlinkError


def desired_node_sysctls(families: tuple[int, ...] = (4, 6)) -> dict[str, str]:
    """Forwarding on for each family the node routes."""
    out = {}
    if 4 in families:
        out["net/ipv4/ip_forward"] = "1"
    if 6 in families:
        out["net/ipv6/conf/all/forwarding"] = "1"
    return out


@dataclass(slots=True)
class SysctlSync:
    written: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class SysctlReconciler:
    def __init__(self, counts: CallCounts, netns: str | None = None) -> None:
        self._counts = counts
        self._netns = netns

    def apply(self, desired: Mapping[str, str]) -> SysctlSync:
        result = SysctlSync()
        with Netlink.open(self._counts, self._netns) as nl:
            for key, value in sorted(desired.items()):
                try:
                    if nl.sysctl_get(key) != value:
                        nl.sysctl_set(key, value)
                        result.written.append(key)
                except NetlinkError as exc:
                    result.errors.append(str(exc))
        return result
