"""A pod template's container as the lab runs it: a process, not a container. Pure.

    container_process(template, "tabby-node", node="node-1", namespace="tabby-system",
                      config_maps={"tabby-config": {...}}, host_dirs={"/run/tabby": DIR})
        -> Process(argv, env)

The lab starts tabby's agents (the ``tabby-node`` DaemonSet) and controllers
(the ``tabby-controllers`` Deployment) from the rendered manifest
(``tabby.kube.manifests``), doing what a kubelet does with a container spec
as far as a process can:

- ``env``: ``value``; ``valueFrom.fieldRef`` of ``spec.nodeName``,
  ``metadata.namespace`` and ``spec.serviceAccountName``;
  ``valueFrom.configMapKeyRef`` from the given ConfigMaps (a missing key is an
  error unless ``optional``). Other sources are refused by name.
- ``command`` + ``args`` with ``$(VAR)`` expanded from that env, ``$$`` kept
  as a literal ``$``, an unknown ``$(VAR)`` left as written (the kubelet's
  rules); env values may refer to the variables before them.
- hostPath volumes: a container path under a ``volumeMount`` of a hostPath
  volume, in argv or env, becomes the host path, then the lab's directory for
  it (``host_dirs``, longest prefix first; a host path the lab does not map
  stays as it is, e.g. ``/var/run/netns``).

What it does not do (there is no kubelet and no container runtime here): no
image (the caller runs the lab's own ``tabby``), no mount namespace, cgroup,
capabilities or user (the process runs as root in the node's network
namespace, with the lab's environment beneath the container's), no
ServiceAccount token files (the caller gives a kubeconfig holding the
ServiceAccount's token instead of in-cluster credentials), no init
containers, no probes, no restarts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from tabby.errors import LabError

__all__ = ["Process", "container_process", "expand"]

Json = dict[str, Any]
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELDS = ("spec.nodeName", "metadata.namespace", "spec.serviceAccountName", "status.hostIP")


@dataclass(frozen=True, slots=True)
class Process:
    argv: tuple[str, ...]
    env: Mapping[str, str]  # the container's own variables, resolved, in spec order


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` replaced from ``env`` as the kubelet does; ``$$`` is ``$``."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REF.sub(one, text)


def container_process(template: Json, container: str, *, node: str, namespace: str,
                      config_maps: Mapping[str, Mapping[str, str]],
                      host_dirs: Mapping[str, str], host_ip: str = "") -> Process:
    """``container`` of pod template ``template`` (its ``spec`` inside) as a process
    (``host_ip``: the node's address, ``status.hostIP`` of a hostNetwork pod)."""
    spec: Json = template.get("spec") or {}
    found = [c for c in spec.get("containers") or [] if c.get("name") == container]
    if not found:
        raise LabError(f"the pod template has no container {container!r}")
    c = found[0]
    fields = {"spec.nodeName": node, "metadata.namespace": namespace,
              "spec.serviceAccountName": str(spec.get("serviceAccountName") or "default"),
              **({"status.hostIP": host_ip} if host_ip else {})}
    env: dict[str, str] = {}
    for var in c.get("env") or []:
        value = _env_value(container, var, env, fields, config_maps)
        if value is not None:
            env[var["name"]] = value
    mounts = _mounts(spec, c)
    argv = [_path(expand(a, env), mounts, host_dirs)
            for a in [*c.get("command", []), *c.get("args", [])]]
    if not argv:
        raise LabError(f"container {container!r} names no command (the image's entrypoint"
                       " is not known here)")
    return Process(tuple(argv), {k: _path(v, mounts, host_dirs) for k, v in env.items()})


def _env_value(container: str, var: Json, env: Mapping[str, str], fields: Mapping[str, str],
               config_maps: Mapping[str, Mapping[str, str]]) -> str | None:
    name = var.get("name")
    if "value" in var:
        return expand(str(var["value"]), env)
    source: Json = var.get("valueFrom") or {}
    if "fieldRef" in source:
        path = source["fieldRef"].get("fieldPath")
        if path not in fields:
            raise LabError(f"container {container!r} env {name}: fieldRef {path} is not"
                           f" supported here ({', '.join(_FIELDS)})")
        return fields[path]
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        data = config_maps.get(ref.get("name", ""))
        if data is None or ref.get("key") not in data:
            if ref.get("optional"):
                return None
            raise LabError(f"container {container!r} env {name}: ConfigMap"
                           f" {ref.get('name')!r} has no key {ref.get('key')!r}")
        return data[ref["key"]]
    if not source:
        return ""
    raise LabError(f"container {container!r} env {name}: {', '.join(source)} is not"
                   " supported here (value, fieldRef, configMapKeyRef)")


def _mounts(spec: Json, c: Json) -> list[tuple[str, str]]:
    """(container path, host path) per hostPath mount, deepest container path first."""
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    out = []
    for mount in c.get("volumeMounts") or []:
        host = (volumes.get(mount.get("name")) or {}).get("hostPath")
        if host is not None:
            out.append((mount["mountPath"].rstrip("/") or "/", host["path"]))
    return sorted(out, key=lambda m: -len(m[0]))


def _path(value: str, mounts: list[tuple[str, str]], host_dirs: Mapping[str, str]) -> str:
    """A container path under a hostPath mount: the lab's directory for its host path."""
    for inside, host in mounts:
        rest = _under(value, inside)
        if rest is not None:
            return _lab_dir(str(PurePosixPath(host, rest)) if rest else host, host_dirs)
    return value


def _lab_dir(host: str, host_dirs: Mapping[str, str]) -> str:
    for prefix in sorted(host_dirs, key=len, reverse=True):
        rest = _under(host, prefix)
        if rest is not None:
            return str(PurePosixPath(host_dirs[prefix], rest)) if rest else host_dirs[prefix]
    return host


def _under(path: str, prefix: str) -> str | None:
    """The rest of ``path`` below directory ``prefix`` ('' if equal), else None."""
    prefix = prefix.rstrip("/")
    if path == prefix:
        return ""
    if path.startswith(prefix + "/"):
        return path[len(prefix) + 1:]
    return None
