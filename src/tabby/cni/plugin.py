"""``tabby-cni``: the CNI plugin the container runtime executes (spec 1.1).

A thin client. It reads ``CNI_COMMAND`` and friends and the network config on
stdin, answers ``VERSION`` itself, validates everything else, and forwards
ADD/DEL/CHECK/STATUS/GC to the node agent over a unix socket (the config's
``"socket"``, default ``/var/run/tabby/cni.sock``); whatever the agent answers
is printed on stdout. Failures are CNI error objects on stdout with exit
status 1, never a traceback::

    runtime --env+stdin--> tabby-cni --frame--> agent (tabby.agent.cniserver)
    runtime <--stdout----- tabby-cni <--frame--

Start-up is the cost paid on every pod, so this module imports only ``os``,
``sys`` and :mod:`tabby.cni.wire` (see there). The checks mirror libcni's
``skel``: which variables each command needs (DEL needs no CNI_NETNS, GC and
STATUS no container at all), container id and interface name syntax, the
network name, the config's cniVersion against the command, and CNI_ARGS
(``K=V;K=V`` in any order; unknown keys are an error unless
``IgnoreUnknown=1``).
"""

from __future__ import annotations

import os
import sys
import time

from tabby.cni import wire

TYPE_CHECKING = False  # see wire.py: typing is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

KNOWN_ARGS = frozenset(
    {"K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID", "K8S_POD_INFRA_CONTAINER_ID",
     "IgnoreUnknown"})
_CONTAINER = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": _CONTAINER,
    "CHECK": _CONTAINER,
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),  # the runtime's second DEL has no netns
    "STATUS": (),
    "GC": (),
}
BUSY_RETRY = 2.0  # seconds to keep retrying a connect the agent's full backlog refused
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class PluginError(Exception):
    """A failure to report as a CNI error object (light twin of protocol.CNIError)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def parse_cni_args(text: str) -> dict[str, str]:
    """``"A=1;B=2"`` -> ``{"A": "1", "B": "2"}``, checked the way libcni checks.

    Pairs may come in any order; empty segments are skipped. Keys outside
    KNOWN_ARGS are an error unless ``IgnoreUnknown`` is ``1``/``true``; they
    are kept in the result either way.
    """
    args: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PluginError(wire.ERR_INVALID_ENVIRONMENT, f"CNI_ARGS: invalid pair {pair!r}",
                              "expected KEY=VALUE pairs separated by ';'")
        args[key] = value
    ignore = args.get("IgnoreUnknown", "0").lower()
    if ignore not in ("1", "true", "0", "false"):
        raise PluginError(wire.ERR_INVALID_ENVIRONMENT,
                          f"CNI_ARGS: IgnoreUnknown={args['IgnoreUnknown']!r} is not a boolean",
                          "use 1, true, 0 or false")
    unknown = sorted(k for k in args if k not in KNOWN_ARGS)
    if unknown and ignore in ("0", "false"):
        raise PluginError(wire.ERR_INVALID_ENVIRONMENT,
                          f"CNI_ARGS: unknown args {unknown}",
                          "tabby-cni knows " + ", ".join(sorted(KNOWN_ARGS))
                          + "; add IgnoreUnknown=1 to pass others")
    return args


def check_container_id(container_id: str) -> None:
    if not container_id:
        raise PluginError(wire.ERR_UNKNOWN_CONTAINER, "missing containerID")
    if not (container_id[0].isascii() and container_id[0].isalnum()) or not set(
            container_id) <= _ID_CHARS:
        raise PluginError(wire.ERR_INVALID_ENVIRONMENT, "invalid characters in containerID",
                          container_id)


def check_ifname(ifname: str) -> None:
    problem = ""
    if not ifname:
        problem = "interface name is empty"
    elif len(ifname.encode()) > 15:
        problem = "interface name is too long"
    elif ifname in (".", ".."):
        problem = "interface name is . or .."
    elif any(c in "/:" or c.isspace() for c in ifname):
        problem = "interface name contains / or : or whitespace characters"
    if problem:
        raise PluginError(wire.ERR_INVALID_ENVIRONMENT, problem, ifname)


def parse_config(stdin: bytes, command: str) -> dict[str, Any]:
    """The network config, with name and cniVersion checked against the command."""
    if not stdin.strip():
        raise PluginError(wire.ERR_DECODING, "no network configuration on stdin")
    if len(stdin) > MAX_CONFIG:
        raise PluginError(wire.ERR_INVALID_CONFIG, "the network configuration is too large",
                          f"{len(stdin)} bytes; at most {MAX_CONFIG}")
    try:
        config = wire.loads(stdin.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PluginError(wire.ERR_DECODING, "error decoding the network configuration",
                          str(exc)) from None
    if not isinstance(config, dict):
        raise PluginError(wire.ERR_DECODING, "the network configuration is not a JSON object")
    version = config.get("cniVersion")
    if version not in wire.SUPPORTED_VERSIONS:
        raise PluginError(wire.ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                          f"config is {version!r}, tabby-cni supports "
                          + ", ".join(wire.SUPPORTED_VERSIONS))
    if wire.version_tuple(version) < wire.version_tuple(wire.COMMANDS[command]):
        raise PluginError(wire.ERR_INCOMPATIBLE_VERSION,
                          f"config version does not allow {command}",
                          f"{command} needs cniVersion {wire.COMMANDS[command]} or later")
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise PluginError(wire.ERR_INVALID_CONFIG, "missing network name")
    if not (name[0].isascii() and name[0].isalnum()) or not set(name) <= _ID_CHARS:
        raise PluginError(wire.ERR_INVALID_CONFIG, "invalid characters found in network name",
                          name)
    return config


MAX_CONFIG = 1024 * 1024  # a network config is a few hundred bytes; this is generous
_FLAGS = {"true": True, "false": False, True: True, False: False}


def check_settings(config: dict[str, Any], command: str) -> None:
    """What tabby-cni itself reads from the config, checked so that a nonsense value
    is a clear permanent error rather than ignored (``mtu``), an ADD without any
    address (``ipam.assign_ipv4/6``), or a GC that takes every pod down (a GC
    without the runtime's list of valid attachments)."""
    mtu = config.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                            or not 68 <= mtu <= 65535):
        raise PluginError(wire.ERR_INVALID_CONFIG, "\"mtu\" must be an integer in 68..65535",
                          repr(mtu))
    ipam = config.get("ipam")
    if isinstance(ipam, dict) and command == "ADD":
        wanted = []
        for key in ("assign_ipv4", "assign_ipv6"):
            value = ipam.get(key, "true" if key == "assign_ipv4" else "false")
            if not isinstance(value, str | bool) or value not in _FLAGS:
                raise PluginError(wire.ERR_INVALID_CONFIG,
                                  f"ipam.{key} must be \"true\" or \"false\"", repr(value))
            wanted.append(_FLAGS[value])
        if not any(wanted):
            raise PluginError(wire.ERR_INVALID_CONFIG, "ipam assigns no address",
                              "assign_ipv4 and assign_ipv6 are both false")
    if command == "GC":
        valid = config.get("cni.dev/valid-attachments", config.get("cni.dev/attachments"))
        if not isinstance(valid, list):
            raise PluginError(wire.ERR_INVALID_CONFIG,
                              "GC needs the runtime's cni.dev/valid-attachments list",
                              "without it every attachment would count as stale")


def _socket_and_timeout(config: dict[str, Any]) -> tuple[str, float]:
    path = config.get("socket", wire.DEFAULT_SOCKET)
    if not isinstance(path, str) or not path:
        raise PluginError(wire.ERR_INVALID_CONFIG, "\"socket\" must be a non-empty path",
                          repr(path))
    timeout = config.get("timeout", wire.DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise PluginError(wire.ERR_INVALID_CONFIG, "\"timeout\" must be a positive number",
                          repr(timeout))
    return path, float(timeout)


def build_request(command: str, env: Mapping[str, str], stdin: bytes) -> dict[str, Any]:
    """Validate the invocation and build the frame sent to the agent."""
    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise PluginError(wire.ERR_INVALID_ENVIRONMENT,
                          f"required env variables [{','.join(missing)}] missing")
    config = parse_config(stdin, command)
    check_settings(config, command)
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        check_container_id(container_id)
        check_ifname(ifname)
    return {
        "command": command,
        "containerID": container_id,
        "netns": env.get("CNI_NETNS", ""),
        "ifname": ifname,
        "args": parse_cni_args(env.get("CNI_ARGS", "")),
        "path": env.get("CNI_PATH", ""),
        "config": config,
    }


def _connect(path: str, timeout: float) -> Any:
    """A connected socket; a full accept backlog (EAGAIN) is retried for a while."""
    deadline = time.monotonic() + min(timeout, BUSY_RETRY)
    while True:
        sock = wire.unix_socket()
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
        except BaseException:
            sock.close()
            raise


def call_agent(path: str, timeout: float, request: dict[str, Any]) -> dict[str, Any]:
    """One request, one answer. Agent absent or gone -> code 11 (try again later)."""
    sock = None
    try:
        sock = _connect(path, timeout)
        wire.send_frame(sock, request)
        return wire.recv_frame(sock)
    except FileNotFoundError:
        raise PluginError(wire.ERR_TRY_AGAIN_LATER,
                          "the tabby agent is not running; try again later",
                          f"no socket at {path}") from None
    except ConnectionRefusedError:
        raise PluginError(wire.ERR_TRY_AGAIN_LATER,
                          "the tabby agent is not running; try again later",
                          f"{path} refuses connections") from None
    except BlockingIOError:  # the agent's accept backlog is full
        raise PluginError(wire.ERR_TRY_AGAIN_LATER, "the tabby agent is busy; try again later",
                          path) from None
    except TimeoutError:
        raise PluginError(wire.ERR_TRY_AGAIN_LATER,
                          f"the tabby agent did not answer within {timeout:g} s; "
                          "try again later", path) from None
    except (wire.FrameError, ConnectionResetError, BrokenPipeError) as exc:
        raise PluginError(wire.ERR_TRY_AGAIN_LATER,
                          "the tabby agent closed the connection without answering; "
                          "try again later", f"{path}: {exc}") from None
    except OSError as exc:
        raise PluginError(wire.ERR_IO, f"cannot talk to the tabby agent at {path}",
                          str(exc)) from None
    finally:
        if sock is not None:
            sock.close()


def render_answer(answer: dict[str, Any]) -> bytes:
    """The agent's answer as stdout bytes; its error as a PluginError."""
    if isinstance(error := answer.get("error"), dict):
        code, msg = error.get("code"), error.get("msg")
        if isinstance(code, int) and not isinstance(code, bool) and isinstance(msg, str):
            details = error.get("details", "")
            raise PluginError(code, msg, details if isinstance(details, str) else str(details))
    elif "result" in answer:
        result = answer["result"]
        if result is None:
            return b""
        if isinstance(result, dict):
            return (wire.dumps(result) + "\n").encode()
    raise PluginError(wire.ERR_INTERNAL, "the tabby agent sent an answer tabby-cni cannot read",
                      wire.dumps(answer)[:500])


def version_answer(stdin: bytes) -> bytes:
    """VERSION, answered locally in the version the runtime asked about (if we have it)."""
    asked = wire.LATEST_VERSION
    try:
        config = wire.loads(stdin.decode()) if stdin.strip() else {}
        if isinstance(config, dict) and config.get("cniVersion") in wire.SUPPORTED_VERSIONS:
            asked = config["cniVersion"]
    except (ValueError, UnicodeDecodeError):
        pass  # skel ignores VERSION's stdin altogether
    body = {"cniVersion": asked, "supportedVersions": list(wire.SUPPORTED_VERSIONS)}
    return (wire.dumps(body) + "\n").encode()


def error_output(version: str, code: int, msg: str, details: str = "") -> bytes:
    body = {"cniVersion": version, "code": code, "msg": msg, "details": details}
    return (wire.dumps(body) + "\n").encode()


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """One invocation: (exit status, stdout bytes). Never raises."""
    version = wire.LATEST_VERSION
    try:
        command = env.get("CNI_COMMAND", "")
        if not command:
            raise PluginError(wire.ERR_INVALID_ENVIRONMENT,
                              "required env variables [CNI_COMMAND] missing")
        if command == "VERSION":
            return 0, version_answer(stdin)
        if command not in wire.COMMANDS:
            raise PluginError(wire.ERR_INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}",
                              "tabby-cni knows ADD, DEL, CHECK, STATUS, GC and VERSION")
        request = build_request(command, env, stdin)
        version = request["config"]["cniVersion"]
        path, timeout = _socket_and_timeout(request["config"])
        return 0, render_answer(call_agent(path, timeout, request))
    except PluginError as exc:
        return 1, error_output(version, exc.code, exc.msg, exc.details)
    except Exception as exc:  # the runtime must get an error object, never a traceback
        return 1, error_output(version, wire.ERR_INTERNAL,
                               f"tabby-cni failed: {type(exc).__name__}: {exc}")


def _read_stdin() -> bytes:
    try:
        return b"" if os.isatty(0) else sys.stdin.buffer.read()
    except (OSError, ValueError, AttributeError):
        return b""  # stdin closed or absent: treated as an empty config


def main() -> int:
    """Console entry point (``tabby-cni``)."""
    try:
        code, out = run(os.environ, _read_stdin())
    except BaseException as exc:  # KeyboardInterrupt, MemoryError: still an error object
        code, out = 1, error_output(wire.LATEST_VERSION, wire.ERR_INTERNAL,
                                    f"tabby-cni interrupted: {type(exc).__name__}")
    try:
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        code = code or 1  # nobody is reading our answer; the status still tells
    return code


if __name__ == "__main__":
    sys.exit(main())
