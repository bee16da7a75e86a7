"""The nftables reconciler against a real kernel, in a namespace of its own."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tabby.dataplane.nft import NftCommand, NftReconciler
from tabby.nft.model import Chain, HookEntry, NftSet, Rule, Ruleset

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"tn-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def listing(netns: str) -> dict[str, object]:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "inet",
                          "tabby"], capture_output=True, text=True, check=True).stdout
    data: dict[str, object] = json.loads(out)
    return data


def elements(netns: str, name: str) -> set[str]:
    for entry in listing(netns)["nftables"]:  # type: ignore[attr-defined]
        if "set" in entry and entry["set"]["name"] == name:
            return {str(e) for e in entry["set"].get("elem", [])}
    raise AssertionError(f"no set {name}")


def ruleset(members: set[str], extra_rule: bool = False) -> Ruleset:
    rules = [Rule("ip saddr @pods accept", "allow pods")]
    if extra_rule:
        rules.append(Rule("tcp dport 22 accept", "ssh"))
    return Ruleset.of(chains=[Chain("policy-fwd", tuple(rules))],
                      sets=[NftSet("pods", "ipv4_addr", frozenset(members))],
                      hooks=[HookEntry("filter-forward", 100, Rule("jump policy-fwd"))])


def test_full_then_delta_then_recovery(netns: str) -> None:
    runner = NftCommand(prefix=("ip", "netns", "exec", netns))
    rec = NftReconciler(runner)
    first = rec.apply(ruleset({"198.19.0.1"}))
    assert first.mode == "full" and not first.errors
    assert elements(netns, "pods") == {"198.19.0.1"}
    second = rec.apply(ruleset({"198.19.0.1", "198.19.0.2"}))
    assert second.mode == "delta" and second.script_lines == 1
    assert elements(netns, "pods") == {"198.19.0.1", "198.19.0.2"}
    assert rec.apply(ruleset({"198.19.0.1", "198.19.0.2"})).mode == "none"
    third = rec.apply(ruleset({"198.19.0.2"}, extra_rule=True))
    assert third.mode == "delta" and not third.errors
    text = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "chain", "inet", "tabby",
                           "policy-fwd"], capture_output=True, text=True, check=True).stdout
    assert 'tcp dport 22 accept comment "ssh"' in text
    # Someone deletes our table behind our back: the delta fails, the next pass is full.
    subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "tabby"],
                   check=True)
    broken = rec.apply(ruleset({"198.19.0.3"}))
    assert broken.errors and rec.applied is None
    healed = rec.apply(ruleset({"198.19.0.3"}))
    assert healed.mode == "full" and not healed.errors
    assert elements(netns, "pods") == {"198.19.0.3"}
