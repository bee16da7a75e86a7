"""A real headless Chromium (Debian's ``chromium``), driven over the DevTools protocol.

The protocol runs over a pipe (``--remote-debugging-pipe``: commands on the
browser's fd 3, answers on its fd 4, each message JSON ended by a NUL byte), so
no websocket client and no open debugging port are needed. One ``Browser`` per
test module (start-up is the slow part); ``open`` gives a page, whose
``evaluate`` runs JavaScript in it and returns the value, ``wait_for`` polls an
expression until it is truthy, and ``screenshot`` writes a PNG.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

# The browser itself: Debian's /usr/bin/chromium is a launcher script around it
CHROMIUM = next((str(p) for p in (Path("/usr/lib/chromium/chromium"),) if p.is_file()),
                shutil.which("chromium"))
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update",
         "--remote-debugging-pipe", "--window-size=1400,1000")


class BrowserError(Exception):
    pass


class Browser:
    def __init__(self, timeout: float = 60.0) -> None:
        if CHROMIUM is None:
            raise BrowserError("no chromium on PATH (scripts/bootstrap installs Debian's)")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="tabby-chromium-")
        cmd_r, self._cmd = _high(os.pipe())  # we write commands; chromium reads them on fd 3
        self._out, out_w = _high(os.pipe())  # chromium writes answers on fd 4; we read them
        shell = f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, CHROMIUM, *FLAGS, f"--user-data-dir={self._profile}",
             "about:blank"], pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(cmd_r)
        os.close(out_w)
        self._ids = itertools.count(1)
        self._buffer = b""

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        """One command; its result (BrowserError for a protocol error or no answer)."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            got = self._read(deadline)
            if got.get("id") != ident:
                continue  # an event, or an answer nobody waits for
            if "error" in got:
                raise BrowserError(f"{method}: {got['error']}")
            result: dict[str, Any] = got.get("result", {})
            return result

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise BrowserError(f"chromium did not answer within {self.timeout:g}s")
            chunk = os.read(self._out, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr \
                    else ""
                raise BrowserError(f"chromium closed its pipe: {err[-2000:]}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\0")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, session["sessionId"])
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send("Page.navigate", {"url": url})
        return page

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(BrowserError, OSError):
                    self.send("Browser.close")
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()  # our own child, by its handle
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._cmd, self._out):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self.proc.stderr:
                self.proc.stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The pipe's ends moved to 10 and up, clear of the 3 and 4 bash sets up (not sh: dash
    takes one-digit descriptors only)."""
    out = []
    for fd in fds:
        out.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return out[0], out[1]


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        got = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in got:
            raise BrowserError(f"{expression[:80]}: {got['exceptionDetails']}")
        return got["result"].get("value")

    def wait_for(self, what: str, expression: str, timeout: float = 30.0) -> Any:
        """Poll ``expression`` until it is truthy (every 0.1 s); its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}"
                                     f" (last value {value!r})")
            time.sleep(0.1)

    def screenshot(self, path: Path, width: int = 1400, height: int = 1000) -> None:
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport":
                                                    True})["data"]
        path.write_bytes(base64.b64decode(data))
