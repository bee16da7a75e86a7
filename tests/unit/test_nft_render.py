"""nft rendering: whole table, and deltas that touch only what changed."""

from __future__ import annotations

import pytest

from tabby.errors import DataplaneError
from tabby.nft.model import Chain, HookEntry, NftMap, NftSet, Rule, Ruleset, merge
from tabby.nft.render import TypeChanged, render_delta, render_full


def part(members: frozenset[str] = frozenset({"198.19.0.1"}), rules: tuple[Rule, ...] = (
        Rule("ip saddr @pods accept", "allow pods"),)) -> Ruleset:
    return Ruleset.of(
        chains=[Chain("policy-fwd", rules)],
        sets=[NftSet("pods", "ipv4_addr", members)],
        maps=[NftMap("dispatch", "ifname", "verdict", frozenset({('"tab1"', "jump policy-fwd")}))],
        hooks=[HookEntry("filter-forward", 100, Rule("jump policy-fwd"))])


def test_full_render_replaces_the_table_and_declares_before_use() -> None:
    text = render_full(part())
    lines = text.splitlines()
    assert lines[:3] == ["add table inet tabby", "delete table inet tabby", "add table inet tabby"]
    assert "add set inet tabby pods { type ipv4_addr; }" in lines
    assert ("add chain inet tabby filter-forward { type filter hook forward priority 0;"
            " policy accept; }") in lines
    assert lines.index("add chain inet tabby policy-fwd") < lines.index(
        "add rule inet tabby filter-forward jump policy-fwd")
    assert 'add rule inet tabby policy-fwd ip saddr @pods accept comment "allow pods"' in lines
    assert "add element inet tabby pods { 198.19.0.1 }" in lines
    assert 'add element inet tabby dispatch { "tab1" : jump policy-fwd }' in lines


def test_delta_of_equal_rulesets_is_empty() -> None:
    assert render_delta(part(), part()) == ""


def test_a_new_member_is_one_element_not_a_chain_rewrite() -> None:
    text = render_delta(part(), part(frozenset({"198.19.0.1", "198.19.0.2"})))
    assert text == "add element inet tabby pods { 198.19.0.2 }\n"
    gone = render_delta(part(frozenset({"198.19.0.1", "198.19.0.2"})), part())
    assert gone == "delete element inet tabby pods { 198.19.0.2 }\n"


def test_changed_rules_flush_and_refill_only_that_chain() -> None:
    new = part(rules=(Rule("ip saddr @pods tcp dport 80 accept", "allow 80"),))
    lines = render_delta(part(), new).splitlines()
    assert lines == ["flush chain inet tabby policy-fwd",
                     'add rule inet tabby policy-fwd ip saddr @pods tcp dport 80 accept'
                     ' comment "allow 80"']


def test_removed_objects_go_last_and_map_values_are_rekeyed() -> None:
    old = merge([part(), Ruleset.of(chains=[Chain("extra", (Rule("accept"),))],
                                    sets=[NftSet("gone", "ipv4_addr")])])
    new = Ruleset.of(
        chains=[Chain("policy-fwd", (Rule("ip saddr @pods accept", "allow pods"),))],
        sets=[NftSet("pods", "ipv4_addr", frozenset({"198.19.0.1"}))],
        maps=[NftMap("dispatch", "ifname", "verdict", frozenset({('"tab1"', "drop")}))],
        hooks=[HookEntry("filter-forward", 100, Rule("jump policy-fwd"))])
    lines = render_delta(old, new).splitlines()
    assert lines == [
        'delete element inet tabby dispatch { "tab1" }',
        'add element inet tabby dispatch { "tab1" : drop }',
        "flush chain inet tabby extra",
        "delete chain inet tabby extra",
        "delete set inet tabby gone",
    ]


def test_a_changed_set_type_asks_for_a_full_render() -> None:
    other = Ruleset.of(sets=[NftSet("pods", "ipv6_addr")])
    with pytest.raises(TypeChanged):
        render_delta(part(), merge([other, Ruleset.of(chains=[Chain("policy-fwd")])]))


def test_two_features_declaring_one_name_is_an_error() -> None:
    with pytest.raises(DataplaneError, match="declared twice"):
        merge([part(), part()])
    with pytest.raises(DataplaneError, match="unknown base chain"):
        Ruleset.of(hooks=[HookEntry("nowhere", 1, Rule("accept"))])


def test_hook_entries_are_sorted_by_order() -> None:
    rs = Ruleset.of(hooks=[HookEntry("nat-postrouting", 200, Rule("masquerade")),
                           HookEntry("nat-postrouting", 100, Rule("jump svc-masq"))])
    assert [r.body for r in rs.base_chains()["nat-postrouting"].rules] == [
        "jump svc-masq", "masquerade"]
