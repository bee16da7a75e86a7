"""The nftables reconciler's rules, without root: NftReconciler on FakeNft and FakeClock.

The whole table on the first pass and after any failure, only the difference
otherwise, nothing when nothing changed; a full pass gives back what the
packet path put in dynamic sets, with the time each element has left. The
same against a real nft in tests/netns/test_nft_reconciler.py.
"""

from __future__ import annotations

import json

import pytest

from tabby.dataplane.nft import NftReconciler
from tabby.errors import DataplaneError
from tabby.nft.model import Chain, HookEntry, NftSet, Rule, Ruleset
from tabby.testing.fakes import FakeClock, FakeNft


def ruleset(members: set[str], extra_rule: bool = False, pods_type: str = "ipv4_addr",
            affinity: bool = False) -> Ruleset:
    rules = [Rule("ip saddr @pods accept", "allow pods")]
    if extra_rule:
        rules.append(Rule("tcp dport 22 accept", "ssh"))
    sets = [NftSet("pods", pods_type, frozenset(members))]
    if affinity:
        sets.append(NftSet("aff", "ipv4_addr", flags=("dynamic", "timeout")))
    return Ruleset.of(chains=[Chain("policy-fwd", tuple(rules))], sets=sets,
                      hooks=[HookEntry("filter-forward", 100, Rule("jump policy-fwd"))])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def nft(clock: FakeClock) -> FakeNft:
    return FakeNft(clock)


def test_full_then_delta_then_nothing(nft: FakeNft, clock: FakeClock) -> None:
    rec = NftReconciler(nft, clock=clock)
    first = rec.apply(ruleset({"198.19.0.1"}))
    assert first.mode == "full" and not first.errors
    assert nft.elements("pods") == {"198.19.0.1"}
    second = rec.apply(ruleset({"198.19.0.1", "198.19.0.2"}))
    assert second.mode == "delta" and second.script_lines == 1
    assert nft.scripts[-1] == "add element inet tabby pods { 198.19.0.2 }\n"
    assert nft.elements("pods") == {"198.19.0.1", "198.19.0.2"}
    runs = len(nft.scripts)
    assert rec.apply(ruleset({"198.19.0.1", "198.19.0.2"})).mode == "none"
    assert len(nft.scripts) == runs  # nothing to say: nft is not run
    third = rec.apply(ruleset({"198.19.0.2"}, extra_rule=True))
    assert third.mode == "delta" and not third.errors
    assert nft.tables[("inet", "tabby")].chains["policy-fwd"][-1] == (
        'tcp dport 22 accept comment "ssh"')
    assert nft.elements("pods") == {"198.19.0.2"}


def test_a_failed_delta_leaves_the_table_and_the_next_pass_replaces_it(nft: FakeNft) -> None:
    rec = NftReconciler(nft)
    rec.apply(ruleset({"198.19.0.1"}))
    nft.run("delete table inet tabby\n")  # someone deletes our table behind our back
    broken = rec.apply(ruleset({"198.19.0.3"}))
    assert broken.mode == "delta" and "No such file or directory" in broken.errors[0]
    assert rec.applied is None
    healed = rec.apply(ruleset({"198.19.0.3"}))
    assert healed.mode == "full" and not healed.errors
    assert nft.elements("pods") == {"198.19.0.3"}


def test_a_refused_transaction_changes_nothing(nft: FakeNft) -> None:
    rec = NftReconciler(nft)
    rec.apply(ruleset({"198.19.0.1"}))
    nft.refuse_next()
    assert rec.apply(ruleset({"198.19.0.2"})).errors == (
        "nft refused the transaction: Operation not permitted",)
    assert nft.elements("pods") == {"198.19.0.1"}
    assert rec.apply(ruleset({"198.19.0.2"})).mode == "full"


def test_a_set_whose_type_changed_is_replaced_with_the_whole_table(nft: FakeNft) -> None:
    rec = NftReconciler(nft)
    rec.apply(ruleset({"198.19.0.1"}))
    changed = rec.apply(ruleset({"198.19.0.1 . 80"}, pods_type="ipv4_addr . inet_service"))
    assert changed.mode == "full" and not changed.errors
    assert json.loads(nft.read("table inet tabby"))["nftables"][2]["set"]["type"] == [
        "ipv4_addr", "inet_service"]


def test_a_full_pass_keeps_dynamic_elements_with_the_time_they_have_left(
        nft: FakeNft, clock: FakeClock) -> None:
    rec = NftReconciler(nft, clock=clock)
    rec.apply(ruleset(set(), affinity=True))
    nft.add_dynamic("aff", "198.19.0.7", timeout=60)  # a client the packet path remembered
    nft.add_dynamic("aff", "198.19.0.8", timeout=5)
    clock.advance(20)  # the second has expired by now
    result = rec.apply(ruleset(set(), affinity=True), full=True)
    assert result.mode == "full" and not result.errors
    assert nft.scripts[-1].endswith(
        "add element inet tabby aff { 198.19.0.7 timeout 60s expires 40s }\n")
    assert nft.elements("aff") == {"198.19.0.7"}
    clock.advance(39)
    assert nft.elements("aff") == {"198.19.0.7"}
    clock.advance(1)
    assert nft.elements("aff") == set()


def test_the_time_a_pass_took_is_read_from_the_clock(nft: FakeNft) -> None:
    rec = NftReconciler(nft, clock=FakeClock(step=0.25))  # every reading moves it on
    assert rec.apply(ruleset({"198.19.0.1"})).seconds == 0.25


def test_the_fake_refuses_what_nft_refuses(nft: FakeNft) -> None:
    nft.run("add table inet tabby\nadd chain inet tabby c1\n"
            "add set inet tabby s { type ipv4_addr; }\nadd rule inet tabby c1 ip saddr @s\n")
    for script, reason in [
        ("delete element inet tabby s { 198.19.0.9 }", "No such file or directory"),
        ("add rule inet tabby c1 jump nowhere", "No such file or directory"),
        ("add rule inet tabby c1 ip saddr @missing", "No such file or directory"),
        ("add set inet tabby s { type ipv6_addr; }", "File exists"),
        ("delete chain inet tabby c1", "Device or resource busy"),
        ("delete set inet tabby s", "Device or resource busy"),
        ("flush chain inet tabby nowhere", "No such file or directory"),
        ("add element inet tabby s { 198.19.0.1 }\nfrobnicate", "syntax error"),
    ]:
        with pytest.raises(DataplaneError, match=reason):
            nft.run(script + "\n")
    assert nft.elements("s") == set()  # the refused transaction left nothing behind
    nft.run("add element inet tabby s { 198.19.0.1 }\nadd element inet tabby s { 198.19.0.1 }\n")
    assert nft.elements("s") == {"198.19.0.1"}
