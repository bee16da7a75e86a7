"""``tabby-cni``: the CNI plugin the container runtime executes (spec 1.1).

A thin client. :mod:`tabby.cni.frontend` reads ``CNI_COMMAND`` and friends
and the network config on stdin, answers ``VERSION`` and checks what the spec
asks of every plugin; this module checks what tabby-cni itself reads from the
config (``mtu``, ``ipam``, ``socket``, ``timeout``) and forwards ADD, DEL,
CHECK, STATUS and GC to the node agent over a unix socket (the config's
``"socket"``, default ``/var/run/tabby/cni.sock``); whatever the agent answers
is printed on stdout. Failures are CNI error objects on stdout with exit
status 1, never a traceback::

    runtime --env+stdin--> frontend --request--> forward --frame--> agent
    runtime <--stdout----- frontend <--bytes---- forward <--frame--  (tabby.agent.cniserver)

Start-up is the cost paid on every pod, so this module imports only ``os``,
``sys``, ``time``, :mod:`tabby.cni.frontend`, :mod:`tabby.cni.wire` and
:mod:`tabby.errors` (see wire.py).
"""

from __future__ import annotations

import sys
import time

from tabby.cni import frontend, wire
from tabby.errors import CNIError

TYPE_CHECKING = False  # see wire.py: typing is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

NAME = "tabby-cni"
BUSY_RETRY = 2.0  # seconds to keep retrying a connect the agent's full backlog refused
_FLAGS = {"true": True, "false": False, True: True, False: False}


def check_settings(config: dict[str, Any], command: str) -> None:
    """What tabby-cni itself reads from the config, checked so that a nonsense value
    is a clear permanent error rather than ignored (``mtu``) or an ADD without any
    address (``ipam.assign_ipv4/6``)."""
    mtu = config.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                            or not 68 <= mtu <= 65535):
        raise CNIError(wire.ERR_INVALID_CONFIG, "\"mtu\" must be an integer in 68..65535",
                       repr(mtu))
    ipam = config.get("ipam")
    if isinstance(ipam, dict) and command == "ADD":
        wanted = []
        for key in ("assign_ipv4", "assign_ipv6"):
            value = ipam.get(key, "true" if key == "assign_ipv4" else "false")
            if not isinstance(value, str | bool) or value not in _FLAGS:
                raise CNIError(wire.ERR_INVALID_CONFIG,
                               f"ipam.{key} must be \"true\" or \"false\"", repr(value))
            wanted.append(_FLAGS[value])
        if not any(wanted):
            raise CNIError(wire.ERR_INVALID_CONFIG, "ipam assigns no address",
                           "assign_ipv4 and assign_ipv6 are both false")


def _socket_and_timeout(config: dict[str, Any]) -> tuple[str, float]:
    path = config.get("socket", wire.DEFAULT_SOCKET)
    if not isinstance(path, str) or not path:
        raise CNIError(wire.ERR_INVALID_CONFIG, "\"socket\" must be a non-empty path",
                       repr(path))
    timeout = config.get("timeout", wire.DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise CNIError(wire.ERR_INVALID_CONFIG, "\"timeout\" must be a positive number",
                       repr(timeout))
    return path, float(timeout)


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
        raise CNIError(wire.ERR_TRY_AGAIN_LATER,
                       "the tabby agent is not running; try again later",
                       f"no socket at {path}") from None
    except ConnectionRefusedError:
        raise CNIError(wire.ERR_TRY_AGAIN_LATER,
                       "the tabby agent is not running; try again later",
                       f"{path} refuses connections") from None
    except BlockingIOError:  # the agent's accept backlog is full
        raise CNIError(wire.ERR_TRY_AGAIN_LATER, "the tabby agent is busy; try again later",
                       path) from None
    except TimeoutError:
        raise CNIError(wire.ERR_TRY_AGAIN_LATER,
                       f"the tabby agent did not answer within {timeout:g} s; "
                       "try again later", path) from None
    except (wire.FrameError, ConnectionResetError, BrokenPipeError) as exc:
        raise CNIError(wire.ERR_TRY_AGAIN_LATER,
                       "the tabby agent closed the connection without answering; "
                       "try again later", f"{path}: {exc}") from None
    except OSError as exc:
        raise CNIError(wire.ERR_IO, f"cannot talk to the tabby agent at {path}",
                       str(exc)) from None
    finally:
        if sock is not None:
            sock.close()


def render_answer(answer: dict[str, Any]) -> bytes:
    """The agent's answer as stdout bytes; its error as a CNIError."""
    if isinstance(error := answer.get("error"), dict):
        code, msg = error.get("code"), error.get("msg")
        if isinstance(code, int) and not isinstance(code, bool) and isinstance(msg, str):
            details = error.get("details", "")
            raise CNIError(code, msg, details if isinstance(details, str) else str(details))
    elif "result" in answer:
        result = answer["result"]
        if result is None:
            return b""
        if isinstance(result, dict):
            return (wire.dumps(result) + "\n").encode()
    raise CNIError(wire.ERR_INTERNAL, "the tabby agent sent an answer tabby-cni cannot read",
                   wire.dumps(answer)[:500])


def forward(request: dict[str, Any]) -> bytes:
    """tabby-cni's own work on a request the front-end accepted: stdout bytes."""
    config = request["config"]
    check_settings(config, request["command"])
    path, timeout = _socket_and_timeout(config)
    return render_answer(call_agent(path, timeout, request))


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """One invocation: (exit status, stdout bytes). Never raises."""
    return frontend.serve(NAME, forward, env, stdin)


def main() -> int:
    """Console entry point (``tabby-cni``)."""
    return frontend.main(NAME, forward)


if __name__ == "__main__":
    sys.exit(main())
