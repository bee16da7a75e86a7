"""The agent's side of the CNI plumbing: requests, errors and results as values.

``tabby-cni`` (plugin.py) sends one frame per invocation (see wire.py for
the framing and the JSON shape); the agent's CNI server decodes it into a
:class:`CNIRequest`, calls its pod handler, and answers with a
:class:`~tabby.cni.results.PodResult` rendered in the request's cniVersion,
or with a :class:`~tabby.errors.CNIError` (defined in tabby's error tree,
re-exported here). Standard library only, plus tabby's error tree.

    CNIRequest.from_wire(frame)  -- validated; CNIError(6/7/1) otherwise
    PodResult(...).render("0.4.0") / PodResult.from_dict(prev_result)
    CNIError(code, msg, details).to_dict(cni_version)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tabby.cni import wire
from tabby.cni.results import DNS, Interface, IPConfig, PodResult, Route
from tabby.cni.wire import (
    COMMANDS,
    DEFAULT_SOCKET,
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    VALID_ATTACHMENTS_KEYS,
    FrameError,
    recv_frame,
    send_frame,
)
from tabby.errors import CNIError

__all__ = [
    "COMMANDS", "DEFAULT_SOCKET", "DNS", "LATEST_VERSION", "SUPPORTED_VERSIONS",
    "VALID_ATTACHMENTS_KEYS", "CNIError", "CNIRequest", "FrameError", "IPConfig", "Interface",
    "PodResult", "Route", "recv_frame", "send_frame",
]


@dataclass(frozen=True, slots=True)
class CNIRequest:
    """One CNI invocation as forwarded by tabby-cni (already checked by it)."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cni_version(self) -> str:
        version = self.config.get("cniVersion", LATEST_VERSION)
        return version if isinstance(version, str) else LATEST_VERSION

    @property
    def network_name(self) -> str:
        name = self.config.get("name", "")
        return name if isinstance(name, str) else ""

    @property
    def handle_id(self) -> str:
        """The IPAM handle of this attachment (Calico's form: network.container.ifname)."""
        return f"{self.network_name}.{self.container_id}.{self.ifname}"

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_uid(self) -> str:
        return self.args.get("K8S_POD_UID", "")

    @property
    def runtime_config(self) -> Mapping[str, Any]:
        value = self.config.get("runtimeConfig")
        return value if isinstance(value, Mapping) else {}

    @property
    def prev_result(self) -> Mapping[str, Any] | None:
        """The raw prevResult (DEL/CHECK, or ADD when chained after another plugin)."""
        value = self.config.get("prevResult")
        return value if isinstance(value, Mapping) else None

    def prev_pod_result(self) -> PodResult | None:
        """prevResult parsed; CNIError(6) if it is not a result tabby can read."""
        raw = self.prev_result
        if raw is None:
            return None
        try:
            return PodResult.from_dict(raw)
        except ValueError as exc:
            raise CNIError(wire.ERR_DECODING, "cannot decode prevResult", str(exc)) from None

    def valid_attachments(self) -> list[tuple[str, str]]:
        """GC's list of (container id, ifname) that are still in use."""
        for key in VALID_ATTACHMENTS_KEYS:
            if key in self.config:
                return _attachments(self.config[key], key)
        return []

    def to_wire(self) -> dict[str, Any]:
        return {"command": self.command, "containerID": self.container_id,
                "netns": self.netns, "ifname": self.ifname, "args": dict(self.args),
                "path": self.path, "config": dict(self.config)}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> CNIRequest:
        """Validate a request frame; CNIError(6) if malformed, (1) if unsupported version."""
        command = obj.get("command")
        if command not in COMMANDS:
            raise CNIError(wire.ERR_INVALID_ENVIRONMENT, f"unknown CNI command {command!r}")
        strings = {k: obj.get(k, "") for k in ("containerID", "netns", "ifname", "path")}
        bad = sorted(k for k, v in strings.items() if not isinstance(v, str))
        args, config = obj.get("args", {}), obj.get("config")
        if not isinstance(args, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
            bad.append("args")
        if not isinstance(config, dict):
            bad.append("config")
        if bad or not isinstance(config, dict):
            raise CNIError(wire.ERR_DECODING, "malformed request", f"bad fields: {bad}")
        if config.get("cniVersion") not in SUPPORTED_VERSIONS:
            raise CNIError(wire.ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                           f"config is {config.get('cniVersion')!r}, tabby supports "
                           + ", ".join(SUPPORTED_VERSIONS))
        return cls(command, strings["containerID"], strings["netns"], strings["ifname"],
                   dict(args), strings["path"], config)


def _attachments(value: Any, key: str) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise CNIError(wire.ERR_INVALID_CONFIG, f"{key} must be a list")
    found = []
    for item in value:
        cid = item.get("containerID") if isinstance(item, dict) else None
        ifname = item.get("ifname") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not isinstance(ifname, str) or not cid:
            raise CNIError(wire.ERR_INVALID_CONFIG,
                           f"{key} entries need string containerID and ifname", repr(item))
        found.append((cid, ifname))
    return found
