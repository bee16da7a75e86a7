"""Per-rule counters, staged policies and whatif on a real lab (lab ``stg``, two nodes,
dual stack), with real packets.

A client pod on node-1, a server pod on node-2 (TCP 80 and 81). An enforced tabby
NetworkPolicy on the server allows 80 (rule 0) and denies 81 (rule 1). Then:

- each family's denied and allowed connection moves its rule's counter in node-2's
  ``/metrics`` (``tabby_policy_rule_packets_total``, read from nft's named counters),
  and a connection to 82, which no rule names, the default tier's end counter;
- a StagedNetworkPolicy of the same name that would deny 80 changes nothing on the wire
  (80 still connects) but the allowed flow's record says what it would have decided:
  ``staged: {verdict: deny, policy: StagedNetworkPolicy fl/server-in, rule: 0}``;
- ``tabby policy whatif -f`` with that policy lists the flow to 80 as changing verdict,
  and not the denied one to 81 (denied either way).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.dataplane.netlink import entered_netns
from tabby.lab import builder, system
from tabby.lab.state import LabState, load, require

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "stg"
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
  containers: [{name: main, image: busybox, ports: [{containerPort: 80}, {containerPort: 81},
                                                  {containerPort: 82}]}]
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
STAGED = """\
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: server-in, namespace: fl}
spec:
  stagedAction: Set
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: TCP, destination: {ports: [80, 81]}}
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
        time.sleep(0.2)


def probe(port: int, family: str) -> bool:
    out = tabby("lab", "probe", "--from", "fl/client", "--to", "fl/server", "--port",
                str(port), "--family", family, "--timeout", "1", "-o", "json").stdout
    return bool(json.loads(out)["probes"][0]["connected"])


def metrics(lab: LabState, node: str) -> str:
    netns = next(n.netns for n in lab.nodes if n.name == node)
    host, _, port = builder.AGENT_METRICS.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        with entered_netns(f"/var/run/netns/{netns}"):
            conn.connect()
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def rule_packets(text: str, rule: int, action: str) -> int:
    pattern = (r'^tabby_policy_rule_packets_total\{kind="NetworkPolicy",namespace="fl",'
               rf'name="server-in",tier="default",direction="ingress",rule="{rule}",'
               rf'action="{action}"\}} (\d+)$')
    m = re.search(pattern, text, re.M)
    return int(m.group(1)) if m else -1


def tier_end_packets(text: str) -> int:
    m = re.search(r'^tabby_policy_rule_packets_total\{kind="",namespace="",name="",'
                  r'tier="default",direction="ingress",rule="",action="tier-deny"\} (\d+)$',
                  text, re.M)
    return int(m.group(1)) if m else -1


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
        f = tmp_path_factory.mktemp("stg") / "m.yaml"
        f.write_text(MANIFESTS)
        tabby("apply", "-f", str(f))
        wait_for("the policy", lambda: not probe(81, "ipv4") and probe(80, "ipv4"))
        yield require(LAB)
    finally:
        state = load(LAB)
        if state is not None:
            builder.down(LAB)
            assert [p for p in state.all_procs() if system.alive(p)] == []
        assert not [ns for ns in system.netns_list() if ns.startswith((f"{LAB}-", f"{LAB}_"))]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_rule_counters_move_with_real_packets(lab: LabState, family: str) -> None:
    before = metrics(lab, "node-2")
    deny0, allow0 = rule_packets(before, 1, "deny"), rule_packets(before, 0, "allow")
    end0 = tier_end_packets(before)
    assert deny0 >= 0 and allow0 >= 0 and end0 >= 0, "the rules' series are exported"
    assert not probe(81, family)
    assert probe(80, family)
    assert not probe(82, family)  # no rule for 82: the end of the default tier denies
    after = wait_for("the counters", lambda: (
        (t := metrics(lab, "node-2")) and rule_packets(t, 1, "deny") > deny0
        and rule_packets(t, 0, "allow") > allow0 and tier_end_packets(t) > end0 and t))
    assert 'tabby_policy_rule_bytes_total{kind="NetworkPolicy",namespace="fl"' in after
    assert re.search(r'^tabby_nft_program_duration_seconds_count\{mode="full"\} [1-9]', after,
                     re.M)
    assert re.search(r'^tabby_ipam_addresses\{pool="[^"]+",state="used"\} [1-9]', after, re.M)
    # the client's node has no rule of that policy: no series there
    assert rule_packets(metrics(lab, "node-1"), 1, "deny") == -1


def _staged_flow(family: str) -> dict[str, Any] | None:
    ip = pod_ip("server", family)
    out = tabby("flows", "-o", "json", "--since", "5m", "--node", "node-2", "--port", "80",
                "--verdict", "allow").stdout
    for item in json.loads(out)["items"]:
        if item["destinationAddress"] == ip and item["source"] == "fl/client" \
                and item.get("staged"):
            return dict(item)
    return None


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_staged_verdict_on_an_allowed_flow_and_whatif(lab: LabState, family: str,
                                                      tmp_path: Path) -> None:
    f = tmp_path / "staged.yaml"
    f.write_text(STAGED)
    tabby("apply", "-f", str(f))
    assert probe(80, family), "a staged policy is never enforced"

    def flow() -> dict[str, Any] | None:
        assert probe(80, family)
        return _staged_flow(family)

    item = wait_for("a flow record with its staged verdict", flow)
    assert item["verdict"] == "allow" and item["policy"]["name"] == "server-in"
    assert item["staged"]["verdict"] == "deny"
    assert item["staged"]["policy"] == {"kind": "StagedNetworkPolicy", "namespace": "fl",
                                        "name": "server-in", "tier": "default"}
    assert item["staged"]["rule"] == 0
    assert not probe(81, family)
    out = json.loads(tabby("policy", "whatif", "-f", str(f), "--since", "5m",
                           "-o", "json").stdout)
    ip = pod_ip("server", family)
    changed = [i for i in out["items"] if i["flow"]["destinationAddress"] == ip]
    assert [(i["flow"]["port"], i["now"]["verdict"], i["wouldBe"]["verdict"])
            for i in changed if i["flow"]["direction"] == "ingress"] == [(80, "allow", "deny")]
    table = tabby("policy", "whatif", "-f", str(f), "--since", "5m").stdout
    assert "StagedNetworkPolicy fl/server-in rule 0" in table and "would change" in table
