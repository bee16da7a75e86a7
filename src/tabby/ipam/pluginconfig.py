"""tabby-ipam's invocation: the attachment and the ``ipam`` settings, checked.

Read on every pod, so it imports nothing costly (no typing, dataclasses or
ipaddress: canonical CIDRs are read by :mod:`tabby.ipam.cidrtext`, anything else
by ``ipaddress``). Bad settings are CNI error 7, naming the setting.
"""

from __future__ import annotations

import os

from tabby.errors import ERR_INVALID_CONFIG, CNIError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs every pod ~3 ms
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

    Route = tuple[str, int, str | None]  # dst CIDR, its IP version, gw (as text)

__all__ = ["Config", "read_config"]


def _fail(code: int, msg: str, details: str = "") -> NoReturn:
    raise CNIError(code, msg, details)


class Config:
    """One invocation: the request's attachment and the ``ipam`` settings, checked.

    A plain slotted class, not a frozen dataclass: dataclasses costs every pod more
    to import than the whole ADD takes on SQLite (see tabby.ipam.fastpath)."""

    __slots__ = ("assign_v4", "assign_v6", "command", "container_id", "datastore",
                 "handle_id", "ifname", "keep_open", "network", "node", "pod_name",
                 "pod_namespace", "pools_v4", "pools_v6", "raw", "routes", "version")

    def __init__(self, *, command: str, version: str, network: str, container_id: str,
                 ifname: str, pod_namespace: str, pod_name: str, datastore: str, node: str,
                 assign_v4: bool, assign_v6: bool, pools_v4: tuple[str, ...],
                 pools_v6: tuple[str, ...],
                 routes: tuple[Route, ...],
                 raw: Mapping[str, Any], keep_open: bool) -> None:
        self.command, self.version, self.network = command, version, network
        self.container_id, self.ifname = container_id, ifname
        self.handle_id = f"{network}.{container_id}.{ifname}"  # Calico's form
        self.pod_namespace, self.pod_name = pod_namespace, pod_name
        self.datastore, self.node = datastore, node
        self.assign_v4, self.assign_v6 = assign_v4, assign_v6
        self.pools_v4, self.pools_v6 = pools_v4, pools_v6
        self.routes, self.raw = routes, raw
        # the exec's last act is os._exit: an open SQLite connection is then dropped
        # without its close-time checkpoint (see main)
        self.keep_open = keep_open


def read_config(request: dict[str, Any], env: Mapping[str, str], keep_open: bool) -> Config:
    """The invocation the front-end accepted, with its ``ipam`` settings checked."""
    config: dict[str, Any] = request["config"]  # checked by the front-end
    ipam = config.get("ipam")
    if not isinstance(ipam, dict):
        _fail(ERR_INVALID_CONFIG,
              "network config needs an \"ipam\" object ({\"type\": \"tabby-ipam\", ...})")
    args = request.get("args") or {}
    return Config(
        command=request["command"], version=config["cniVersion"], network=config["name"],
        container_id=request["containerID"], ifname=request["ifname"],
        pod_namespace=args.get("K8S_POD_NAMESPACE", ""), pod_name=args.get("K8S_POD_NAME", ""),
        datastore=_str(ipam, "datastore") or env.get("TABBY_DATASTORE") or _default_url(),
        node=_str(ipam, "node") or env.get("TABBY_NODE") or os.uname().nodename,
        assign_v4=_flag(ipam, "assign_ipv4", True), assign_v6=_flag(ipam, "assign_ipv6", False),
        pools_v4=_names(ipam, "ipv4_pools"), pools_v6=_names(ipam, "ipv6_pools"),
        routes=_routes(ipam.get("routes")), raw=config, keep_open=keep_open)


def _default_url() -> str:
    from tabby.store import DEFAULT_URL
    return DEFAULT_URL


def _str(ipam: Mapping[str, Any], key: str) -> str:
    value = ipam.get(key, "")
    if not isinstance(value, str):
        _fail(ERR_INVALID_CONFIG, f"ipam.{key} must be a string, not {value!r}")
    return value


def _flag(ipam: Mapping[str, Any], key: str, default: bool) -> bool:
    value = ipam.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # Calico's configs write "true"
    if not isinstance(value, bool):
        _fail(ERR_INVALID_CONFIG, f"ipam.{key} must be true or false, not {value!r}")
    return value


def _names(ipam: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = ipam.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(ERR_INVALID_CONFIG,
              f"ipam.{key} must be a list of pool names or CIDRs, not {value!r}")
    return tuple(value)


def _routes(value: object) -> tuple[Route, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        _fail(ERR_INVALID_CONFIG,
              f"ipam.routes must be a list of {{dst: CIDR, gw: IP}}, not {value!r}")
    routes = []
    for i, r in enumerate(value):
        try:
            dst, dst_version = _cidr(r["dst"])
            gw, gw_version = _cidr(r["gw"], address=True) if r.get("gw") else (None, 0)
        except (TypeError, KeyError, ValueError, AttributeError) as e:
            _fail(ERR_INVALID_CONFIG,
                  f"ipam.routes[{i}] is not {{\"dst\": CIDR, \"gw\": IP}}: {r!r}", str(e))
        if gw is not None and gw_version != dst_version:
            _fail(ERR_INVALID_CONFIG,
                  f"ipam.routes[{i}]: gw {gw} is not of the family of {dst}")
        routes.append((dst, dst_version, gw))
    return tuple(routes)


def _cidr(text: object, *, address: bool = False) -> tuple[str, int]:
    """``text`` as ipaddress prints the network (an ``address``) it names, and its IP
    version. Canonical text is read without importing ipaddress (tabby.ipam.cidrtext)."""
    from tabby.ipam.cidrtext import network

    if not isinstance(text, str):
        raise TypeError(f"{text!r} is not a string")
    net = network(f"{text}/{32 if '.' in text else 128}" if address else text)
    if net is not None:
        return (net.address(0) if address else str(net)), net.version
    import ipaddress

    parsed = ipaddress.ip_address(text) if address else ipaddress.ip_network(text)
    return str(parsed), parsed.version


