"""The typed nft vocabulary: each term's text, and rules made from terms."""

from __future__ import annotations

import ipaddress

import pytest

from tabby.nft.expr import (
    IIFNAME,
    TH_DPORT,
    AnonSet,
    Bitwise,
    Concat,
    Ct,
    Dnat,
    Drop,
    Endpoint,
    Fib,
    Goto,
    Hex,
    InlineVmap,
    Jump,
    Literal,
    MapLookup,
    Masquerade,
    Match,
    Meta,
    MetaSet,
    Numgen,
    Quoted,
    Reject,
    Renderable,
    Return,
    SetRef,
    Typeof,
    Update,
    Vmap,
    daddr,
    element,
    saddr,
    text,
)
from tabby.nft.model import Rule
from tabby.nft.render import rule_text

V4 = ipaddress.IPv4Address("198.19.0.1")
V6 = ipaddress.IPv6Address("fd7a:bb1e:1::5")
KEY = Concat((daddr(4), Meta("l4proto"), TH_DPORT))


@pytest.mark.parametrize(("term", "expected"), [
    (daddr(6), "ip6 daddr"),
    (saddr(4), "ip saddr"),
    (IIFNAME, "iifname"),
    (Meta("l4proto"), "meta l4proto"),
    (Fib("daddr", "type"), "fib daddr type"),
    (Ct("status"), "ct status"),
    (Numgen(3), "numgen random mod 3"),
    (KEY, "ip daddr . meta l4proto . th dport"),
    (Hex(0x4000), "0x00004000"),
    (Bitwise(Meta("mark"), "and", Hex(0xFFFFBFFF)), "meta mark and 0xffffbfff"),
    (Typeof(Concat((Meta("l4proto"), TH_DPORT, Numgen(2)))),
     "typeof meta l4proto . th dport . numgen random mod 2"),
    (SetRef("svc-cips-v4"), "@svc-cips-v4"),
    (AnonSet(("tcp", "udp", "sctp")), "{ tcp, udp, sctp }"),
    (Quoted("tab*"), '"tab*"'),
    (ipaddress.ip_network("127.0.0.0/8"), "127.0.0.0/8"),
    (ipaddress.ip_address("::1"), "::1"),
    (Match(IIFNAME, Quoted("tab*")), 'iifname "tab*"'),
    (Match(Ct("state"), "new"), "ct state new"),
    (Match(Fib("daddr", "type"), "local"), "fib daddr type local"),
    (Match(daddr(4), SetRef("pools"), negate=True), "ip daddr != @pools"),
    (Match(Bitwise(Meta("mark"), "and", Hex(0x4000)), 0, negate=True),
     "meta mark and 0x00004000 != 0"),
    (Match(Concat((saddr(6), daddr(6))), SetRef("hp")), "ip6 saddr . ip6 daddr @hp"),
    (Goto("svc-n2"), "goto svc-n2"),
    (Jump("svc-pre"), "jump svc-pre"),
    (Return(), "return"),
    (Drop(), "drop"),
    (Reject(), "reject"),
    (Reject(tcp_reset=True), "reject with tcp reset"),
    (Masquerade(), "masquerade"),
    (Masquerade(fully_random=True), "masquerade fully-random"),
    (MetaSet("mark", Bitwise(Meta("mark"), "or", Hex(0x4000))),
     "meta mark set meta mark or 0x00004000"),
    (Dnat(4, Endpoint(V4, 8080)), "dnat ip to 198.19.0.1:8080"),
    (Dnat(6, Endpoint(V6, 80)), "dnat ip6 to [fd7a:bb1e:1::5]:80"),
    (Dnat(4, MapLookup(Concat((*KEY.items, Numgen(2))), "svc-eps-v4")),
     "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @svc-eps-v4"),
    (Vmap(KEY, "svc-ips-v4"), "ip daddr . meta l4proto . th dport vmap @svc-ips-v4"),
    (InlineVmap(Numgen(2), ((0, Goto("a")), (1, Goto("b")))),
     "numgen random mod 2 vmap { 0 : goto a, 1 : goto b }"),
    (Update("aff", saddr(6), 30), "update @aff { ip6 saddr timeout 30s }"),
])
def test_each_term_has_one_text(term: Renderable, expected: str) -> None:
    assert text(term) == expected


def test_a_rule_from_terms_keeps_them_and_compares_by_its_text() -> None:
    terms = (Match(daddr(4), SetRef("svc-cips-v4")), Goto("svc-reject"))
    rule = Rule.of(*terms, comment="no endpoints")
    assert rule.body == "ip daddr @svc-cips-v4 goto svc-reject"
    assert rule.terms == terms
    assert rule == Rule("ip daddr @svc-cips-v4 goto svc-reject", "no endpoints")
    assert rule_text(rule) == 'ip daddr @svc-cips-v4 goto svc-reject comment "no endpoints"'
    assert Rule("return").terms == ()


@pytest.mark.parametrize("values", [
    (V4, "tcp", 80), (V6, 8080), ("198.18.128.1 . tcp . 80", 0), (V4, V4), ("verdict",)])
def test_an_element_is_the_text_of_its_literals_concatenated(values: tuple[Literal, ...]
                                                              ) -> None:
    assert element(*values) == text(Concat(values))
    assert element(V4, "tcp", 80) == "198.19.0.1 . tcp . 80"
