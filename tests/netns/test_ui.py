"""``tabby ui`` in a real headless Chromium, on a real lab (lab ``uix``, two nodes, IPv4).

A client pod on node-1, a server pod on node-2 (TCP 80 and 81) and a tabby
NetworkPolicy on the server: rule 0 allows 80, rule 1 denies 81. ``tabby ui``
runs as a user would start it (its own process, port 0, the printed URL) and
Chromium (Debian's, over the DevTools protocol: tests/netns/chromium.py) opens
the page, once for the module. Then:

- a denied connection made in the lab (``tabby lab probe``) appears in the
  page's flow table, with its policy and rule, without reloading the page;
- the matrix shows that pair denied on port 81 by the policy's rule 1 and
  allowed on 80, and the live probes show the same connection failing.

``TABBY_UI_SCREENSHOT=PATH`` saves a screenshot of the page there at the end
(docs/ui.png is made that way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.lab import builder, system
from tabby.lab.state import LabState, load, require
from tests.netns.chromium import CHROMIUM, Browser, Page

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/bootstrap installs it)"),
]

LAB = "uix"
TABBY = [sys.executable, "-m", "tabby.cli.main"]
MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: ui}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ui, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: main, image: busybox, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: ui, labels: {app: server}}
spec:
  nodeName: node-2
  containers: [{name: main, image: busybox, ports: [{containerPort: 80}, {containerPort: 81}]}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-in, namespace: ui}
spec:
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, destination: {ports: [80]}}
  - {action: Deny, protocol: TCP, destination: {ports: [81]}}
"""
DENIED_ROWS = """[...document.querySelectorAll(
  'tr.flow[data-verdict="deny"][data-port="81"][data-destination="ui/server"]')]
  .map(r => ({key: r.dataset.key, source: r.dataset.source, node: r.dataset.node,
              policy: r.querySelector('td.policy').textContent,
              rule: r.querySelector('td.rule').textContent}))"""


def tabby(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*TABBY, "--lab", LAB, *args], capture_output=True, text=True,
                          timeout=300, check=False)
    if ok:
        assert done.returncode == 0, f"tabby {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def probe(port: int) -> bool:
    out = tabby("lab", "probe", "--from", "ui/client", "--to", "ui/server", "--port", str(port),
                "--timeout", "1", "-o", "json").stdout
    return bool(json.loads(out)["probes"][0]["connected"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    if load(LAB) is not None:
        builder.down(LAB)
    try:
        tabby("lab", "up", "--name", LAB, "--nodes", "2", "--stack", "ipv4")
        f = tmp_path_factory.mktemp("uix") / "m.yaml"
        f.write_text(MANIFESTS)
        tabby("apply", "-f", str(f))
        wait_for("the policy", lambda: not probe(81) and probe(80))
        yield require(LAB)
    finally:
        state = load(LAB)
        if state is not None:
            builder.down(LAB)
            assert [p for p in state.all_procs() if system.alive(p)] == []
        assert not [ns for ns in system.netns_list() if ns.startswith((f"{LAB}-", f"{LAB}_"))]


@pytest.fixture(scope="module")
def url(lab: LabState) -> Iterator[str]:
    """``tabby ui`` as its own process, on a free port; stopped by its PID afterwards."""
    proc = subprocess.Popen([*TABBY, "--lab", LAB, "ui", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()  # "tabby ui: http://127.0.0.1:PORT/ (lab uix); ..."
        assert line.startswith("tabby ui: http://127.0.0.1:"), line + proc.stderr.read()
        assert f"(lab {LAB})" in line
        yield line.split()[2]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def page(url: str) -> Iterator[Page]:
    browser = Browser()
    try:
        page = browser.open(url)
        page.wait_for("the page to load its topology",
                      "document.querySelectorAll('[data-pod]').length === 2")
        yield page
        shot = os.environ.get("TABBY_UI_SCREENSHOT")
        if shot:  # the policy matrix on the denied port, beside the flows
            page.evaluate("document.querySelector('input[name=mode][value=policy]').checked"
                          " = true")
            _set_port(page, 81)
            page.wait_for("the policy matrix on port 81", _cell(81, "policy"))
            page.screenshot(Path(shot), height=int(page.evaluate(
                "Math.max(700, document.documentElement.scrollHeight)")))
    finally:
        browser.close()


def test_the_page_shows_the_lab(page: Page) -> None:
    assert page.evaluate("document.getElementById('lab-name').textContent") == f"lab {LAB}"
    nodes = page.evaluate("[...document.querySelectorAll('.node')].map(n => n.dataset.node)")
    assert nodes == ["node-1", "node-2"]
    assert page.evaluate("document.querySelector('[data-pod=\"ui/server\"]')"
                         ".closest('.node').dataset.node") == "node-2"
    assert page.evaluate("!!document.querySelector('[data-router]')")


def test_a_denied_connection_appears_live_with_its_policy_and_rule(page: Page) -> None:
    page.wait_for("the flow table to answer", "document.getElementById('status')"
                  ".textContent.startsWith('updated')")
    before = {row["key"] for row in page.evaluate(DENIED_ROWS)}
    sent = time.monotonic()
    assert not probe(81)  # returns after its 1 s timeout: the page may already show it
    rows = page.wait_for("the denied flow in the page", f"""(() => {{
        const before = new Set({json.dumps(sorted(before))});
        return ({DENIED_ROWS}).filter(r => !before.has(r.key)); }})()""", timeout=30)
    print(f"denied flow shown in Chromium {time.monotonic() - sent:.2f}s after the probe began")
    row = rows[0]
    assert row["source"] == "ui/client" and row["node"] == "node-2"
    assert row["policy"] == "ui/server-in" and row["rule"] == "1"


def _cell(port: int, mode: str) -> str:
    return f"""(() => {{
        const t = document.querySelector('#matrix table[data-port="{port}"][data-mode="{mode}"]');
        const c = t && t.querySelector('td[data-from="ui/client"][data-to="ui/server"]');
        return c && {{verdict: c.dataset.verdict, policy: c.dataset.policy || null,
                      rule: c.dataset.rule || null, text: c.textContent}}; }})()"""


def _set_port(page: Page, port: int) -> None:
    page.evaluate(f"""(() => {{ const p = document.getElementById('matrix-port');
        p.value = '{port}'; p.dispatchEvent(new Event('input', {{bubbles: true}}));
        p.dispatchEvent(new Event('change', {{bubbles: true}})); }})()""")


def test_the_matrix_shows_the_pair_denied_by_the_rule(page: Page) -> None:
    _set_port(page, 81)
    cell = page.wait_for("the policy matrix on port 81", _cell(81, "policy"))
    assert cell["verdict"] == "deny" and cell["policy"] == "ui/server-in"
    assert cell["rule"] == "1" and "ingress rule 1" in cell["text"]
    assert "tabby policy explain" in page.evaluate(
        "document.getElementById('matrix-source').textContent")
    _set_port(page, 80)
    cell = page.wait_for("the policy matrix on port 80", _cell(80, "policy"))
    assert cell["verdict"] == "allow" and cell["rule"] == "0"
    # live probes: real connections from every pod, on request
    _set_port(page, 81)
    page.evaluate("document.getElementById('matrix-probe').click()")
    cell = page.wait_for("the live probes on port 81", _cell(81, "probe"), timeout=60)
    assert cell["verdict"] == "deny" and "failed" in cell["text"]
    assert "Live probes" in page.evaluate(
        "document.getElementById('matrix-source').textContent")
