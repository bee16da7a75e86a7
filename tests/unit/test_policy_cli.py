"""``tabby policy explain`` and ``tabby get`` for the policy kinds, on a SQLite datastore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabby.cli.main import main
from tabby.policy.synthetic import from_yaml, pod_endpoint
from tabby.store import open_store
from tabby.store.client import Client

DOCS = """
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {tier: back}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {tier: back}}}]
    ports: [{port: http}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: no-smtp}
spec:
  order: 10
  selector: all()
  types: [Egress]
  egress: [{action: Deny, protocol: TCP, destination: {ports: [25]}}, {action: Allow}]
"""


@pytest.fixture
def datastore(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    client = Client(store)
    for obj in from_yaml(DOCS):
        client.apply(obj)
    client.apply(pod_endpoint("default/a", {"app": "a"}, "node-1",
                              ("198.19.0.1/32", "fd7a:bb1e:1::1/128"), (("http", "TCP", 80),)))
    client.apply(pod_endpoint("team/c", {"app": "c"}, "node-2",
                              ("198.19.0.65/32", "fd7a:bb1e:1::41/128"),
                              namespace_labels={"tier": "back"}))
    store.close()
    return url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_json_names_policy_and_rule(datastore: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--datastore", datastore, "policy", "explain", "--from", "team/c",
                       "--to", "default/a", "--port", "80", "-o", "json")
    assert code == 0
    data = json.loads(out)
    assert data["verdict"] == "allow" and data["family"] == "ipv4"
    assert data["ingress"]["policy"]["name"] == "web"
    assert data["ingress"]["rule"] == {"direction": "ingress", "index": 0, "peer": 0,
                                       "action": "Allow"}
    assert data["egress"]["rule"]["index"] == 1  # no-smtp's Allow


def test_explain_table(datastore: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--datastore", datastore, "policy", "explain", "--from", "team/c",
                       "--to", "default/a", "--port", "81", "--family", "ipv6")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "team/c (fd7a:bb1e:1::41) -> default/a (fd7a:bb1e:1::1) tcp/81: DENY"
    assert "ingress  default/a on node-1: deny: no rule allowed it" in lines[2]
    code, out, _ = run(capsys, "--datastore", datastore, "policy", "explain", "--from", "team/c",
                       "--to", "203.0.113.5", "--port", "25")
    assert "egress   team/c on node-2: deny: Deny by GlobalNetworkPolicy.tabby.dev no-smtp" \
           " egress rule 0" in out
    assert "ingress  (outside): allow: not a tabby endpoint" in out


def test_explain_errors(datastore: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--datastore", datastore, "policy", "explain", "--from", "x/y",
                       "--to", "default/a", "--port", "80")
    assert code == 1 and "pod x/y has no workload endpoint" in err
    code, _, err = run(capsys, "--datastore", datastore, "policy", "explain", "--from", "team/c",
                       "--to", "default/a")
    assert code == 1 and "--port is required" in err


def test_get_shows_policy_columns(datastore: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--datastore", datastore, "get", "networkpolicy")
    assert code == 0 and "POD-SELECTOR" in out and "app == 'a'" in out
    code, out, _ = run(capsys, "--datastore", datastore, "get", "gnp")
    assert "ORDER" in out and "no-smtp" in out and "10" in out
