"""Flow logs on a real lab (lab ``flw``, two nodes, dual stack): NFLOG, conntrack, /flows.

A client pod on node-1 and a server pod on node-2 (TCP 80 and 81). A tabby
NetworkPolicy on the server allows 80 (rule 0) and denies 81 (rule 1); a pod no
policy selects (``open``) takes the rest. For each family:

- a denied connection shows up in ``tabby flows -o json`` (node-2, ingress,
  verdict deny, the policy and rule 1) within a second of the probe (polled
  with a generous deadline: the figure is printed, not asserted tightly);
- an allowed one shows, once it has ended, with its policy and rule 0 and
  packets and bytes from conntrack;
- a flow to a pod no policy selects is "allow" without a policy;
- filters (``--verdict``, ``--port``, ``--policy``, ``-n``) narrow the answer and bad
  syntax gets one clear line and exit 1.

Also: an agent whose flow store path is read-only keeps programming (a policy
still denies), and serves flows from memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tabby.lab import builder, system
from tabby.lab.state import LabState, load, require

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "flw"
TABBY = [sys.executable, "-m", "tabby.cli.main"]
MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: fl}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: fl, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: main, image: busybox, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: fl, labels: {app: server}}
spec:
  nodeName: node-2
  containers: [{name: main, image: busybox, ports: [{containerPort: 80}, {containerPort: 81}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: open, namespace: fl, labels: {app: open}}
spec:
  nodeName: node-2
  containers: [{name: main, image: busybox, ports: [{containerPort: 80}]}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-in, namespace: fl}
spec:
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, destination: {ports: [80]}}
  - {action: Deny, protocol: TCP, destination: {ports: [81]}}
"""


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


def probe(to: str, port: int, family: str) -> bool:
    out = tabby("lab", "probe", "--from", "fl/client", "--to", to, "--port", str(port),
                "--family", family, "--timeout", "1", "-o", "json").stdout
    return bool(json.loads(out)["probes"][0]["connected"])


def flows(*args: str) -> list[dict[str, Any]]:
    return list(json.loads(tabby("flows", "-o", "json", "--since", "5m", *args).stdout)
                ["items"])


def pod_ip(name: str, family: str) -> str:
    pod = json.loads(tabby("get", "pod", name, "-n", "fl", "-o", "json").stdout)
    return str(next(p["ip"] for p in pod["status"]["podIPs"]
                    if (":" in p["ip"]) == (family == "ipv6")))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    if load(LAB) is not None:
        builder.down(LAB)
    try:
        tabby("lab", "up", "--name", LAB, "--nodes", "2", "--stack", "dual")
        f = tmp_path_factory.mktemp("flw") / "m.yaml"
        f.write_text(MANIFESTS)
        tabby("apply", "-f", str(f))
        wait_for("the policy", lambda: not probe("fl/server", 81, "ipv4")
                 and probe("fl/server", 80, "ipv4"))
        yield require(LAB)
    finally:
        state = load(LAB)
        if state is not None:
            builder.down(LAB)
            assert [p for p in state.all_procs() if system.alive(p)] == []
        assert not [ns for ns in system.netns_list() if ns.startswith((f"{LAB}-", f"{LAB}_"))]


def _from_client(items: list[dict[str, Any]], ip: str, port: int, verdict: str
                 ) -> list[dict[str, Any]]:
    return [i for i in items if i["destinationAddress"] == ip and i["port"] == port
            and i["verdict"] == verdict and i["source"] == "fl/client"]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_denied_connection_shows_with_policy_and_rule(lab: LabState, family: str) -> None:
    ip = pod_ip("server", family)
    before = {i["start"] for i in _from_client(flows(), ip, 81, "deny")}
    assert not probe("fl/server", 81, family)
    sent = time.monotonic()
    got = wait_for("the denied flow in tabby flows", lambda: [
        i for i in _from_client(flows("--verdict", "deny"), ip, 81, "deny")
        if i["start"] not in before], timeout=20)
    print(f"{family}: denied flow listed {time.monotonic() - sent:.2f}s after the probe")
    rec = got[0]
    assert rec["policy"] == {"kind": "NetworkPolicy", "namespace": "fl", "name": "server-in",
                             "tier": "default"}
    assert rec["rule"] == 1 and rec["node"] == "node-2" and rec["direction"] == "ingress"
    assert rec["destination"] == "fl/server" and rec["protocol"] == "tcp"
    assert rec["family"] == family and rec["packets"] >= 1 and rec["bytes"] > 0
    assert rec["start"] <= rec["end"]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_allowed_connection_has_packets_and_bytes_after_it_ends(lab: LabState,
                                                               family: str) -> None:
    ip = pod_ip("server", family)
    assert probe("fl/server", 80, family)

    def ended() -> list[dict[str, Any]]:
        return [i for i in _from_client(flows("--port", "80"), ip, 80, "allow")
                if i["state"] == "ended" and i["packets"] > 0 and i["node"] == "node-2"]
    rec = wait_for("the allowed flow to end with counters", ended, timeout=30)[0]
    assert rec["policy"]["name"] == "server-in" and rec["rule"] == 0
    assert rec["node"] == "node-2" and rec["direction"] == "ingress"
    assert rec["packets"] >= 3 and rec["bytes"] > 100  # a handshake, a reply, a close
    # the client's side: no egress policy selects it on node-1
    mine = [i for i in flows("--port", "80") if i["node"] == "node-1"
            and i["destinationAddress"] == ip and i["reason"] == "no-policy"]
    assert mine and "policy" not in mine[0] and mine[0]["direction"] == "egress"


def test_no_policy_flow_and_filters(lab: LabState) -> None:
    ip = pod_ip("open", "ipv4")
    assert probe("fl/open", 80, "ipv4")
    rec = wait_for("the flow to the open pod", lambda: [
        i for i in flows("-n", "fl", "--pod", "open") if i["destinationAddress"] == ip
        and i["direction"] == "ingress"])[0]
    assert rec["verdict"] == "allow" and rec["reason"] == "no-policy" and "policy" not in rec
    assert all(i["verdict"] == "deny" for i in flows("--verdict", "deny"))
    assert all(i["policy"]["name"] == "server-in" for i in flows("--policy", "fl/server-in"))
    assert flows("-n", "nowhere") == []
    table = tabby("flows", "--since", "5m").stdout
    assert "fl/server-in" in table and "VERDICT" in table
    for bad, word in ((("--since", "5 minutes"), "--since"), (("--port", "http"), "--port"),
                      (("--verdict", "maybe"), "--verdict")):
        done = tabby("flows", *bad, ok=False)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and word in done.stderr


def test_metrics_count_records(lab: LabState) -> None:
    node = next(n for n in lab.nodes if n.name == "node-2")
    host, port = builder.AGENT_METRICS.split(":")
    text = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-c",
                           "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
                           f"'http://{host}:{port}/metrics').read().decode())"],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    records = [line for line in text.splitlines()
               if line.startswith("tabby_flow_log_records_total ")]
    assert records and float(records[0].split()[1]) > 0
    assert "tabby_flow_store_rows " in text
