"""nftables in-process: the ``NftRunner`` seam on libnftables, through ctypes.

``NftCommand`` runs the ``nft`` binary per transaction: a fork, an exec and the
library's start-up, 2.4 ms at best and 5.8 ms typical on this (loaded) VM for
a one-element delta; the same transaction through the library already loaded
in the agent takes 0.07 ms. Every CNI ADD waits for one such transaction (the
pass that programs the pod), so that was the largest single cost of an ADD.

The library is what the ``nft`` binary links against (Debian's libnftables1),
so scripts, errors and results are the binary's. ctypes releases the GIL
during the call: other threads run while the kernel works.

A context is not thread-safe: one lock serialises its use (passes are serial
anyway). Its netlink socket belongs to the network namespace of the thread
that made it, so the context is remade when a caller stands in another
namespace than the one it was made in (tests run reconcilers in scratch
namespaces from threads).
"""

from __future__ import annotations

import ctypes
import os
import threading

from tabby.errors import DataplaneError

__all__ = ["LIBRARY", "NftLibrary"]

LIBRARY = "libnftables.so.1"
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON


def _load(name: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(name, use_errno=True)
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    for getter in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
        getter.argtypes = [ctypes.c_void_p]
        getter.restype = ctypes.c_char_p
    lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


def _namespace() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class NftLibrary:
    """Run nft scripts with libnftables in this process; OSError if it cannot be loaded."""

    def __init__(self, library: str = LIBRARY) -> None:
        self._lib = _load(library)
        self._lock = threading.Lock()
        self._ctx: int | None = None
        self._ns = 0
        self.calls = 0

    def close(self) -> None:
        with self._lock:
            self._free()

    def _free(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def _context(self) -> int:
        """The context for the caller's namespace (made, or remade, here)."""
        ns = _namespace()
        if self._ctx is None or ns != self._ns:
            self._free()
            ctx = self._lib.nft_ctx_new(0)
            if not ctx:
                raise DataplaneError("libnftables: cannot create a context (out of memory?)")
            self._lib.nft_ctx_buffer_output(ctx)
            self._lib.nft_ctx_buffer_error(ctx)
            self._ctx, self._ns = ctx, ns
        return self._ctx

    def _run(self, ctx: int, script: str) -> tuple[int, bytes, bytes]:
        """(return code, output, errors) of one command buffer."""
        rc = self._lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = self._lib.nft_ctx_get_output_buffer(ctx) or b""
        err = self._lib.nft_ctx_get_error_buffer(ctx) or b""
        return rc, out, err

    def run(self, script: str) -> None:
        """Apply ``script`` as one transaction; DataplaneError if nft refuses it."""
        with self._lock:
            self.calls += 1
            rc, _, err = self._run(self._context(), script)
        if rc != 0:
            raise DataplaneError(f"nft refused the transaction: {_first_error(err)}")

    def read(self, what: str) -> str:
        """``nft -j list WHAT`` (e.g. ``table inet tabby``); DataplaneError on failure."""
        with self._lock:
            ctx = self._context()
            flags = self._lib.nft_ctx_output_get_flags(ctx)
            self._lib.nft_ctx_output_set_flags(ctx, flags | _OUTPUT_JSON)
            try:
                rc, out, err = self._run(ctx, f"list {what}")
            finally:
                self._lib.nft_ctx_output_set_flags(ctx, flags)
        if rc != 0:
            raise DataplaneError(f"nft list {what}: {_first_error(err)}")
        return out.decode()


def _first_error(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[:3]) or "no message"
