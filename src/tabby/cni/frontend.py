"""The one CNI front-end of tabby's plugins: environment, stdin, versions, errors.

A container runtime executes ``tabby-cni`` (:mod:`tabby.cni.plugin`) and
``tabby-ipam`` (:mod:`tabby.ipam.plugin`) with the ``CNI_*`` variables and
a network configuration on stdin. Both pass their own work to :func:`main`
(:func:`serve` is the same without the process around it); this module is the
only place that reads the invocation, and it checks everything the CNI spec
asks of any plugin before that work starts::

    runtime --env, stdin--> main(name, handler)
        CNI_COMMAND missing or unknown                        4
        VERSION: answered here, stdin read for cniVersion only
        the command's variables (REQUIRED_ENV) missing        4 names them
        stdin empty, not JSON, not an object                  6
        stdin over MAX_CONFIG                                 7 (no retry fixes it)
        cniVersion not in SUPPORTED_VERSIONS, or too old
          for the command (CHECK 0.4.0, STATUS and GC 1.1.0)  1
        network name missing or malformed                     7
        CNI_CONTAINERID, CNI_IFNAME malformed                 4
        CNI_ARGS malformed, unknown keys (parse_cni_args)     4
        GC without cni.dev/valid-attachments                  7
        handler(request) -> stdout bytes, or raises CNIError
    runtime <--stdout, exit status-- 0, or 1 with {"cniVersion", "code", "msg", "details"}

Never a traceback: a :class:`~tabby.errors.CNIError` from any step, the
handler's included, becomes the spec's error object (in the config's
cniVersion once it is known, else the latest); anything else becomes code 999
naming the exception. ``request`` is the dict tabby-cni sends the agent
unchanged (``command``, ``containerID``, ``netns``, ``ifname``, ``args``,
``path``, ``config``: the shape in wire.py).

Where the rules come from. Required variables: the spec 1.1 table (ADD and
CHECK need CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME; DEL CNI_CONTAINERID and
CNI_IFNAME, the runtime's second DEL has no netns; STATUS nothing; GC
CNI_PATH), plus CNI_PATH for ADD and CHECK, which both plugins have always
required, as libcni's skel does. Syntax of the container id, interface and
network names: the spec's, as skel checks them. CNI_ARGS: libcni's
``types.LoadArgs`` (see :func:`parse_cni_args`). Versions: every spec version
with the result format of 0.3.0 and later (wire.SUPPORTED_VERSIONS).

Start-up is paid on every pod, so this module imports only ``sys``,
:mod:`tabby.cni.wire` and :mod:`tabby.errors` (none of them imports ``os``,
``typing``, ``re``, ``json`` or ``dataclasses``; tests/unit/test_cni_plugin.py
holds that).
"""

from __future__ import annotations

import sys

from tabby.cni import wire
from tabby.errors import (
    ERR_DECODING,
    ERR_INCOMPATIBLE_VERSION,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENVIRONMENT,
    CNIError,
)

TYPE_CHECKING = False  # see wire.py: typing is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    Handler = Callable[[dict[str, Any]], bytes]

__all__ = ["KNOWN_ARGS", "MAX_CONFIG", "REQUIRED_ENV", "environment", "error_output", "main",
           "parse_cni_args", "parse_request", "serve", "version_answer"]

KNOWN_ARGS = frozenset(
    {"K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID", "K8S_POD_INFRA_CONTAINER_ID",
     "IgnoreUnknown"})
_CONTAINER = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": _CONTAINER,
    "CHECK": _CONTAINER,
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "STATUS": (),
    "GC": ("CNI_PATH",),
}
MAX_CONFIG = 1024 * 1024  # a network config is a few kilobytes at most; this is generous
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_BOOLS = {"1": True, "true": True, "0": False, "false": False}


def parse_cni_args(text: str) -> dict[str, str]:
    """``"A=1;B=2"`` -> ``{"A": "1", "B": "2"}``, by the rules of libcni's LoadArgs.

    Every ``;``-separated part is one ``KEY=VALUE`` with exactly one ``=`` (so
    ``A=1;;B=2``, a trailing ``;`` and ``A=x=y`` are malformed). ``IgnoreUnknown``
    is a boolean (``1``, ``true``, ``0``, ``false`` in any case); keys outside
    KNOWN_ARGS are an error unless it is true, and are kept in the result either
    way. Any failure is CNIError 4. Pairs may come in any order.
    """
    if not text:
        return {}
    args: dict[str, str] = {}
    for pair in text.split(";"):
        key, sep, value = pair.partition("=")
        if not sep or "=" in value:
            raise CNIError(ERR_INVALID_ENVIRONMENT, f"CNI_ARGS: invalid pair {pair!r}",
                           "expected KEY=VALUE pairs separated by ';'")
        args[key] = value
    ignore = _BOOLS.get(args.get("IgnoreUnknown", "0").lower())
    if ignore is None:
        raise CNIError(ERR_INVALID_ENVIRONMENT,
                       f"CNI_ARGS: IgnoreUnknown={args['IgnoreUnknown']!r} is not a boolean",
                       "use 1, true, 0 or false")
    unknown = sorted(k for k in args if k not in KNOWN_ARGS)
    if unknown and not ignore:
        raise CNIError(ERR_INVALID_ENVIRONMENT, f"CNI_ARGS: unknown args {unknown}",
                       "tabby knows " + ", ".join(sorted(KNOWN_ARGS))
                       + "; add IgnoreUnknown=1 to pass others")
    return args


def _check_container_id(container_id: str) -> None:
    if not _well_formed(container_id):
        raise CNIError(ERR_INVALID_ENVIRONMENT,
                       "CNI_CONTAINERID: invalid characters in the container ID", container_id)


def _check_ifname(ifname: str) -> None:
    problem = ""
    if len(ifname.encode()) > 15:
        problem = "interface name is too long"
    elif ifname in (".", ".."):
        problem = "interface name is . or .."
    elif any(c in "/:" or c.isspace() for c in ifname):
        problem = "interface name contains / or : or whitespace characters"
    if problem:
        raise CNIError(ERR_INVALID_ENVIRONMENT, f"CNI_IFNAME: {problem}", ifname)


def _well_formed(name: str) -> bool:
    """The spec's container id (and skel's network name): alphanumeric first, then
    alphanumerics, ``_``, ``.`` or ``-``."""
    return bool(name) and name[0].isascii() and name[0].isalnum() and set(name) <= _NAME_CHARS


def _check_valid_attachments(config: dict[str, Any]) -> None:
    """GC's list of attachments still in use (under the first key present, as the
    agent reads it): without one, every attachment would look stale."""
    valid = next((config[key] for key in wire.VALID_ATTACHMENTS_KEYS if key in config), None)
    if not isinstance(valid, list):
        raise CNIError(ERR_INVALID_CONFIG,
                       "GC needs the runtime's cni.dev/valid-attachments list",
                       "without it every attachment would count as stale")


def _parse_config(name: str, stdin: bytes, command: str) -> dict[str, Any]:
    """The network config, with cniVersion and network name checked against the command."""
    if not stdin.strip():
        raise CNIError(ERR_DECODING, "no network configuration on stdin")
    if len(stdin) > MAX_CONFIG:
        raise CNIError(ERR_INVALID_CONFIG, "the network configuration is too large",
                       f"{len(stdin)} bytes; at most {MAX_CONFIG}")
    try:
        config = wire.loads(stdin.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(ERR_DECODING, "error decoding the network configuration",
                       str(exc)) from None
    if not isinstance(config, dict):
        raise CNIError(ERR_DECODING, "the network configuration is not a JSON object")
    version = config.get("cniVersion")
    if version not in wire.SUPPORTED_VERSIONS:
        raise CNIError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, {name} supports "
                       + ", ".join(wire.SUPPORTED_VERSIONS))
    needed = wire.COMMANDS[command]
    if wire.version_tuple(version) < wire.version_tuple(needed):
        raise CNIError(ERR_INCOMPATIBLE_VERSION,
                       f"config version {version} does not allow {command}",
                       f"{command} needs cniVersion {needed} or later")
    network = config.get("name")
    if not isinstance(network, str) or not network:
        raise CNIError(ERR_INVALID_CONFIG, "missing network name",
                       'the network configuration needs a "name"')
    if not _well_formed(network):
        raise CNIError(ERR_INVALID_CONFIG, "invalid characters found in network name", network)
    return config


def parse_request(name: str, env: Mapping[str, str], stdin: bytes) -> dict[str, Any]:
    """Every check of the table above but VERSION's; the request, or CNIError."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(ERR_INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
    if command not in REQUIRED_ENV:
        raise CNIError(ERR_INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}",
                       f"{name} knows ADD, DEL, CHECK, STATUS, GC and VERSION")
    missing = [var for var in REQUIRED_ENV[command] if not env.get(var)]
    if missing:
        raise CNIError(ERR_INVALID_ENVIRONMENT,
                       f"required env variables [{','.join(missing)}] missing")
    config = _parse_config(name, stdin, command)
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        _check_container_id(container_id)
        _check_ifname(ifname)
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    if command == "GC":
        _check_valid_attachments(config)
    return {"command": command, "containerID": container_id, "netns": env.get("CNI_NETNS", ""),
            "ifname": ifname, "args": args, "path": env.get("CNI_PATH", ""), "config": config}


def version_answer(stdin: bytes) -> bytes:
    """VERSION: the versions we speak, in the version the runtime asked about (if ours)."""
    asked = wire.LATEST_VERSION
    try:
        config = wire.loads(stdin.decode()) if stdin.strip() else {}
        if isinstance(config, dict) and config.get("cniVersion") in wire.SUPPORTED_VERSIONS:
            asked = config["cniVersion"]
    except (ValueError, UnicodeDecodeError):
        pass  # skel ignores VERSION's stdin altogether
    return _json_line({"cniVersion": asked, "supportedVersions": list(wire.SUPPORTED_VERSIONS)})


def error_output(version: str, error: CNIError) -> bytes:
    """The spec's error object, as the plugin prints it."""
    return _json_line(error.to_dict(version))


def _json_line(value: dict[str, Any]) -> bytes:
    return (wire.dumps(value) + "\n").encode()


def serve(name: str, handler: Handler, env: Mapping[str, str],
          stdin: bytes) -> tuple[int, bytes]:
    """One invocation of plugin ``name``: (exit status, stdout bytes). Never raises."""
    version = wire.LATEST_VERSION
    try:
        if env.get("CNI_COMMAND") == "VERSION":
            return 0, version_answer(stdin)
        request = parse_request(name, env, stdin)
        version = request["config"]["cniVersion"]
        return 0, handler(request)
    except CNIError as exc:
        return 1, error_output(version, exc)
    except Exception as exc:  # the runtime must get an error object, never a traceback
        return 1, error_output(version, CNIError(ERR_INTERNAL, f"{name}: unexpected error",
                                                 f"{type(exc).__name__}: {exc}"))


def _read_stdin() -> bytes:
    try:
        return b"" if sys.stdin.isatty() else sys.stdin.buffer.read()
    except (OSError, ValueError, AttributeError):
        return b""  # stdin closed or absent: treated as an empty config


def environment() -> dict[str, str]:
    """The environment, decoded as ``os.environ`` decodes it, without importing
    :mod:`os`: under ``-I -S`` nothing else has, and it costs ~0.8 ms a pod."""
    try:
        from posix import environ
    except ImportError:  # not a POSIX system
        import os

        return dict(os.environ)
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {k.decode(encoding, errors): v.decode(encoding, errors) for k, v in environ.items()}


def main(name: str, handler: Handler) -> int:
    """A plugin's console entry point: environment and stdin in, stdout written, the
    exit status returned."""
    try:
        code, out = serve(name, handler, environment(), _read_stdin())
    except BaseException as exc:  # KeyboardInterrupt, MemoryError: still an error object
        code, out = 1, error_output(wire.LATEST_VERSION, CNIError(
            ERR_INTERNAL, f"{name} interrupted", type(exc).__name__))
    try:
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        code = code or 1  # nobody is reading our answer; the status still tells
    return code
