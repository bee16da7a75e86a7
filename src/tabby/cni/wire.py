"""What travels between ``tabby-cni`` and the node agent, kept start-up cheap.

``tabby-cni`` is executed once per CNI operation, so every millisecond of
interpreter start-up is paid on every pod. The plugin imports only this
module, :mod:`tabby.cni.frontend` and :mod:`tabby.errors`, and none of them
imports anything heavier than ``_json`` and ``_socket`` (the C halves of
:mod:`json` and :mod:`socket`). The Python halves pull in ``re`` and
``enum`` and double the plugin's start-up (measured here, medians: bare
``python3 -I -S -c pass`` 8.2 ms, the same importing json and socket
20.1 ms, tabby-cni answering VERSION 10.7 ms). Where the C halves are
missing or change shape, the stdlib modules are used instead, with the same
results.

Wire format: one request frame from the plugin, one response frame from the
agent, then the connection closes. A frame is a 4-byte big-endian length and
that many bytes of UTF-8 JSON::

    request  {"command": "ADD", "containerID": ..., "netns": ..., "ifname": ...,
              "args": {"K8S_POD_NAME": ...}, "path": ..., "config": {...}}
    response {"result": <object or null>}          success; result printed as is
           | {"error": {"code": 7, "msg": ..., "details": ...}}
"""

from __future__ import annotations

# The CNI error codes and FrameError live in tabby.errors (cheap to import); the
# plugin and the agent know them as wire.ERR_* and wire.FrameError.
from tabby.errors import ERR_DECODING as ERR_DECODING
from tabby.errors import ERR_INCOMPATIBLE_VERSION as ERR_INCOMPATIBLE_VERSION
from tabby.errors import ERR_INTERNAL as ERR_INTERNAL
from tabby.errors import ERR_INVALID_CONFIG as ERR_INVALID_CONFIG
from tabby.errors import ERR_INVALID_ENVIRONMENT as ERR_INVALID_ENVIRONMENT
from tabby.errors import ERR_IO as ERR_IO
from tabby.errors import ERR_IPAM as ERR_IPAM
from tabby.errors import ERR_NOT_AVAILABLE as ERR_NOT_AVAILABLE
from tabby.errors import ERR_NOT_AVAILABLE_LIMITED as ERR_NOT_AVAILABLE_LIMITED
from tabby.errors import ERR_TRY_AGAIN_LATER as ERR_TRY_AGAIN_LATER
from tabby.errors import ERR_UNKNOWN_CONTAINER as ERR_UNKNOWN_CONTAINER
from tabby.errors import ERR_UNSUPPORTED_FIELD as ERR_UNSUPPORTED_FIELD
from tabby.errors import FrameError as FrameError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the plugin ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    class _Socket(Protocol):
        def sendall(self, data: bytes, /) -> None: ...
        def recv(self, bufsize: int, /) -> bytes: ...

# The spec versions both plugins (and the agent) speak: every version since the
# result format of 0.3.0 (0.1.0 and 0.2.0 had another one, which tabby never wrote).
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
DEFAULT_SOCKET = "/var/run/tabby/cni.sock"
DEFAULT_TIMEOUT = 60.0  # seconds the plugin waits for the agent's answer
MAX_FRAME = 16 * 1024 * 1024

# Commands and the first spec version that has them.
COMMANDS: dict[str, str] = {
    "ADD": "0.3.0", "DEL": "0.3.0", "CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0",
}
# The keys under which libcni passes GC's still-valid attachments (it sends both:
# the spec's name and the one an earlier draft used).
VALID_ATTACHMENTS_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")
_WS = " \t\n\r"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; ValueError for anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(f"not a CNI version: {version!r}")
    return tuple(int(p) for p in parts)


# --- JSON -----------------------------------------------------------------


def _parse_constant(name: str) -> Any:
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


class _Context:
    """The attributes ``_json.make_scanner`` reads (those of json.JSONDecoder)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    array_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_parse_constant)


def _make_loads() -> Callable[[str], Any]:
    try:
        from _json import make_scanner

        scan = make_scanner(_Context())  # type: ignore[arg-type]
    except Exception:  # no C accelerator (or a new shape of it): use json itself
        import json

        return json.loads

    def loads(text: str) -> Any:
        start = len(text) - len(text.lstrip(_WS))
        try:
            value, end = scan(text, start)
        except Exception:
            # Bad input. _json reports errors through json.decoder, which it finds
            # only once imported (else SystemError): let json itself raise.
            import json

            return json.loads(text)
        if text[end:].strip(_WS):
            raise ValueError(f"Extra data: char {end}")
        return value

    return loads


def _make_quote() -> Callable[[str], str]:
    try:
        from _json import encode_basestring_ascii
    except ImportError:
        import json

        return json.dumps
    return encode_basestring_ascii


loads: Callable[[str], Any] = _make_loads()
_quote: Callable[[str], str] = _make_quote()


def dumps(value: Any) -> str:
    """Compact JSON of dicts, lists, strings, numbers, booleans and None."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_quote(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, dict):
        _encode_dict(value, out)
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _encode_dict(value: dict[Any, Any], out: list[str]) -> None:
    out.append("{")
    for i, (key, item) in enumerate(value.items()):
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
        if i:
            out.append(",")
        out.append(_quote(key))
        out.append(":")
        _encode(item, out)
    out.append("}")


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


# --- framing ----------------------------------------------------------------


def encode_frame(message: dict[str, Any]) -> bytes:
    payload = dumps(message).encode()
    if len(payload) > MAX_FRAME:
        raise FrameError(f"message of {len(payload)} bytes exceeds {MAX_FRAME}")
    return len(payload).to_bytes(4, "big") + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        message = loads(payload.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError(f"frame is a JSON {type(message).__name__}, not an object")
    return message


def send_frame(sock: _Socket, message: dict[str, Any]) -> None:
    sock.sendall(encode_frame(message))


def recv_frame(sock: _Socket) -> dict[str, Any]:
    """Read one frame; FrameError if the peer closes early or sends junk."""
    size = int.from_bytes(_recv_exact(sock, 4), "big")
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    return decode_payload(_recv_exact(sock, size))


def _recv_exact(sock: _Socket, size: int) -> bytes:
    chunks: list[bytes] = []
    missing = size
    while missing:
        chunk = sock.recv(min(missing, 1 << 16))
        if not chunk:
            raise FrameError(f"connection closed with {missing} of {size} bytes unread")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def unix_socket() -> Any:
    """A blocking AF_UNIX stream socket without importing :mod:`socket`."""
    try:
        import _socket

        return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except (ImportError, AttributeError):
        import socket

        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
