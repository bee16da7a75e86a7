"""Drive CNI plugins exactly as a container runtime does (libcni's conflist semantics).

For tests, the lab and benchmarks: executes the plugins of a network config
list from ``cni_path`` with the CNI_* environment and the per-plugin config on
stdin, the way containerd/libcni does:

- ADD runs the plugins in order; each plugin's config gets the list's
  ``name`` and ``cniVersion``, the previous plugin's result as ``prevResult``
  and a ``runtimeConfig`` holding the capability args it declares in
  ``capabilities`` (e.g. ``portMappings``). The last result is returned (and
  cached when ``cache_dir`` is set, as libcni caches under /var/lib/cni).
- DEL runs them in reverse with the cached (or given) result as prevResult;
  without one (the kubelet's second DEL) there is none, and the netns may be "".
- CHECK (0.4.0+, unless disableCheck) needs a prevResult; STATUS and GC only
  run for 1.1.0+ lists, like libcni. GC first DELs cached attachments not
  listed as valid, then sends ``cni.dev/valid-attachments`` to each plugin.

Plugins run in the caller's network namespace unless ``exec_prefix`` wraps
them, e.g. ``netns_exec("tc-node")`` -> ``ip netns exec tc-node PLUGIN``.
Failures raise :class:`~tabby.errors.PluginFailed` (a CNIError naming the
plugin, re-exported here); nothing is rolled back after a failed ADD: call
DEL, as runtimes do.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabby.cni import wire
from tabby.cni.wire import VALID_ATTACHMENTS_KEYS
from tabby.errors import CNIError, ConfigError, PluginFailed

__all__ = ["ConfList", "Invocation", "PluginFailed", "Runtime", "exec_plugin", "find_plugin",
           "format_cni_args", "netns_exec"]

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class ConfList:
    """A network configuration list (the ``.conflist`` a runtime reads)."""

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    disable_check: bool = False
    disable_gc: bool = False

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ConfList:
        name, version, plugins = obj.get("name"), obj.get("cniVersion"), obj.get("plugins")
        if not isinstance(name, str) or not name:
            raise ConfigError("conflist: missing name")
        if not isinstance(version, str):
            raise ConfigError(f"conflist {name}: missing cniVersion")
        if not isinstance(plugins, list) or not plugins or not all(
                isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
            raise ConfigError(f"conflist {name}: plugins must be a non-empty list of "
                              "objects with a type")
        return cls(name, version, tuple(plugins), bool(obj.get("disableCheck", False)),
                   bool(obj.get("disableGC", False)))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConfList:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read CNI config list {path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": self.cni_version, "name": self.name,
                               "plugins": [dict(p) for p in self.plugins]}
        if self.disable_check:
            out["disableCheck"] = True
        if self.disable_gc:
            out["disableGC"] = True
        return out

    def at_least(self, version: str) -> bool:
        return wire.version_tuple(self.cni_version) >= wire.version_tuple(version)


def netns_exec(name: str) -> tuple[str, ...]:
    """An exec_prefix that runs plugins inside the named netns (the node's)."""
    return ("ip", "netns", "exec", name)


def find_plugin(plugin_type: str, cni_path: Sequence[str | os.PathLike[str]]) -> Path:
    for directory in cni_path:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(f"failed to find plugin {plugin_type!r} in path "
                      f"{[str(d) for d in cni_path]}")


def format_cni_args(args: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in args.items())


@dataclass(frozen=True, slots=True)
class Invocation:
    """The environment of one plugin execution (CNI_PATH comes from the runtime)."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)


def exec_plugin(executable: Path, inv: Invocation, config: Mapping[str, Any], *,
                cni_path: Sequence[str | os.PathLike[str]] = (),
                exec_prefix: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT,
                base_env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Run one plugin once; its parsed stdout (None when empty) or PluginFailed."""
    env = {k: v for k, v in (os.environ if base_env is None else base_env).items()
           if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=inv.command, CNI_CONTAINERID=inv.container_id,
               CNI_NETNS=inv.netns, CNI_IFNAME=inv.ifname, CNI_ARGS=format_cni_args(inv.args),
               CNI_PATH=os.pathsep.join(str(p) for p in cni_path))
    name = executable.name
    try:
        proc = subprocess.run([*exec_prefix, str(executable)], input=json.dumps(config).encode(),
                              capture_output=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PluginFailed(name, inv.command, wire.ERR_IO,
                           f"plugin timed out after {timeout:g} s") from None
    except OSError as exc:
        raise PluginFailed(name, inv.command, wire.ERR_IO, f"cannot execute {executable}",
                           str(exc)) from None
    stderr = proc.stderr.decode(errors="replace")
    try:
        output = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        raise PluginFailed(name, inv.command, wire.ERR_DECODING,
                           f"plugin printed something that is not JSON (exit {proc.returncode})",
                           proc.stdout.decode(errors="replace")[:500], stderr) from None
    if proc.returncode != 0:
        if isinstance(output, dict) and "code" in output:
            err = CNIError.from_dict(output)
            raise PluginFailed(name, inv.command, err.code, err.msg, err.details, stderr)
        raise PluginFailed(name, inv.command, wire.ERR_INTERNAL,
                           f"plugin exited {proc.returncode} without an error object",
                           stderr[-500:], stderr)
    if output is not None and not isinstance(output, dict):
        raise PluginFailed(name, inv.command, wire.ERR_DECODING, "plugin output is not an object",
                           repr(output)[:500], stderr)
    return output


class Runtime:
    """Run a ConfList's plugins like a runtime (see the module docstring)."""

    def __init__(self, conflist: ConfList, cni_path: Sequence[str | os.PathLike[str]], *,
                 exec_prefix: Sequence[str] = (), cache_dir: str | os.PathLike[str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None) -> None:
        self.conflist = conflist
        self.cni_path = tuple(cni_path)
        self.exec_prefix = tuple(exec_prefix)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.timeout = timeout
        self.env = env

    def add(self, container_id: str, netns: str, ifname: str = "eth0", *,
            args: Mapping[str, str] | None = None,
            capability_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        inv = Invocation("ADD", container_id, netns, ifname, dict(args or {}))
        result: dict[str, Any] | None = None
        for plugin in self.conflist.plugins:
            output = self._run(plugin, inv, result, capability_args)
            if output is None:
                raise PluginFailed(str(plugin["type"]), "ADD", wire.ERR_DECODING,
                                   "ADD printed no result")
            result = output
        if result is None:
            raise ConfigError(f"conflist {self.conflist.name} has no plugins")
        self._cache_write(inv, capability_args, result)
        return result

    def delete(self, container_id: str, netns: str = "", ifname: str = "eth0", *,
               args: Mapping[str, str] | None = None,
               capability_args: Mapping[str, Any] | None = None,
               prev_result: Mapping[str, Any] | None = None, use_cache: bool = True) -> None:
        """DEL in reverse order; prevResult = ``prev_result`` or the cached ADD result."""
        inv = Invocation("DEL", container_id, netns, ifname, dict(args or {}))
        cached = self._cache_read(container_id, ifname) if use_cache else None
        if prev_result is None and cached is not None:
            prev_result = cached.get("result")
        if not self.conflist.at_least("0.4.0"):
            prev_result = None  # libcni only passes prevResult on DEL from 0.4.0
        for plugin in reversed(self.conflist.plugins):
            self._run(plugin, inv, prev_result, capability_args)
        self._cache_remove(container_id, ifname)

    def check(self, container_id: str, netns: str, ifname: str = "eth0", *,
              args: Mapping[str, str] | None = None,
              capability_args: Mapping[str, Any] | None = None,
              prev_result: Mapping[str, Any] | None = None) -> None:
        if not self.conflist.at_least("0.4.0") or self.conflist.disable_check:
            return
        if prev_result is None:
            cached = self._cache_read(container_id, ifname)
            prev_result = cached.get("result") if cached else None
        if prev_result is None:
            raise ConfigError(f"CHECK of {container_id}/{ifname} needs a prevResult "
                              "(none given, none cached)")
        inv = Invocation("CHECK", container_id, netns, ifname, dict(args or {}))
        for plugin in self.conflist.plugins:
            self._run(plugin, inv, prev_result, capability_args)

    def status(self) -> None:
        if not self.conflist.at_least("1.1.0"):
            return
        for plugin in self.conflist.plugins:
            self._run(plugin, Invocation("STATUS"), None, None)

    def gc(self, valid: Iterable[tuple[str, str]]) -> None:
        keep = set(valid)
        for entry in self.cached_attachments():
            if (entry["containerId"], entry["ifName"]) not in keep:
                self.delete(entry["containerId"], entry.get("netns", ""), entry["ifName"],
                            args=entry.get("cniArgs"), capability_args=entry.get("capabilityArgs"))
        if not self.conflist.at_least("1.1.0") or self.conflist.disable_gc:
            return
        attachments = [{"containerID": c, "ifname": i} for c, i in sorted(keep)]
        extra = {key: attachments for key in VALID_ATTACHMENTS_KEYS}
        for plugin in self.conflist.plugins:
            self._run({**plugin, **extra}, Invocation("GC"), None, None)

    def version(self, plugin_type: str) -> dict[str, Any]:
        output = exec_plugin(find_plugin(plugin_type, self.cni_path), Invocation("VERSION"),
                             {"cniVersion": self.conflist.cni_version},
                             cni_path=self.cni_path, exec_prefix=self.exec_prefix,
                             timeout=self.timeout, base_env=self.env)
        return output or {}

    def plugin_config(self, plugin: Mapping[str, Any], prev_result: Mapping[str, Any] | None,
                      capability_args: Mapping[str, Any] | None) -> dict[str, Any]:
        """What one plugin reads on stdin (libcni's buildOneConfig)."""
        config = {**plugin, "name": self.conflist.name, "cniVersion": self.conflist.cni_version}
        if prev_result is not None:
            config["prevResult"] = dict(prev_result)
        declared = plugin.get("capabilities") or {}
        runtime = {k: v for k, v in (capability_args or {}).items() if declared.get(k)}
        if runtime:
            config["runtimeConfig"] = runtime
        return config

    def _run(self, plugin: Mapping[str, Any], inv: Invocation,
             prev_result: Mapping[str, Any] | None,
             capability_args: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return exec_plugin(find_plugin(str(plugin["type"]), self.cni_path), inv,
                           self.plugin_config(plugin, prev_result, capability_args),
                           cni_path=self.cni_path, exec_prefix=self.exec_prefix,
                           timeout=self.timeout, base_env=self.env)

    # --- result cache (libcni keeps one per attachment under /var/lib/cni/results) ---

    def _cache_file(self, container_id: str, ifname: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.conflist.name}-{container_id}-{ifname}.json"

    def _cache_write(self, inv: Invocation, capability_args: Mapping[str, Any] | None,
                     result: Mapping[str, Any]) -> None:
        path = self._cache_file(inv.container_id, inv.ifname)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"kind": "cniCacheV1", "containerId": inv.container_id, "ifName": inv.ifname,
                 "networkName": self.conflist.name, "netns": inv.netns,
                 "cniArgs": dict(inv.args), "capabilityArgs": dict(capability_args or {}),
                 "result": dict(result)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        tmp.replace(path)

    def _cache_read(self, container_id: str, ifname: str) -> dict[str, Any] | None:
        path = self._cache_file(container_id, ifname)
        if path is None or not path.exists():
            return None
        entry: dict[str, Any] = json.loads(path.read_text())
        return entry

    def _cache_remove(self, container_id: str, ifname: str) -> None:
        path = self._cache_file(container_id, ifname)
        if path is not None:
            path.unlink(missing_ok=True)

    def cached_attachments(self) -> list[dict[str, Any]]:
        """The cache entries of this network (what GC compares with the valid list)."""
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return []
        entries = []
        for path in sorted(self.cache_dir.glob(f"{self.conflist.name}-*.json")):
            entry = json.loads(path.read_text())
            if entry.get("networkName") == self.conflist.name:
                entries.append(entry)
        return entries
