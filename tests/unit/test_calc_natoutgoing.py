"""natOutgoing's nftables part: sets of pools per family, one masquerade rule each."""

from __future__ import annotations

from tabby.calc.natoutgoing import CHAIN, natoutgoing_part
from tabby.calc.node import desired_ruleset
from tabby.nft.expr import Jump, Masquerade, Match, SetRef, daddr, saddr
from tabby.nft.model import Ruleset, merge
from tabby.services.nft import services_part
from tabby.snapshot import Snapshot
from tests.unit.test_calc_vxlan import pool


def test_no_nat_outgoing_pool_contributes_nothing() -> None:
    s = Snapshot.build(others=[pool("p4", "198.19.0.0/16")])
    assert natoutgoing_part(s, "node-1") == Ruleset()


def test_masquerade_from_nat_pools_to_outside_every_pool() -> None:
    s = Snapshot.build(others=[
        pool("a", "198.19.0.0/17", natOutgoing=True),
        pool("b", "198.19.128.0/17"),
        pool("c", "fd7a:bb1e:1::/48", blockSize=122, natOutgoing=True, disabled=True)])
    part = natoutgoing_part(s, "node-1")
    assert part.sets["natout-v4-masq"].elements == {"198.19.0.0/17"}
    assert part.sets["natout-v4-pools"].elements == {"198.19.0.0/17", "198.19.128.0/17"}
    assert part.sets["natout-v6-masq"].elements == {"fd7a:bb1e:1::/48"}
    assert all(s.flags == ("interval",) for s in part.sets.values())
    # from a natOutgoing pool, to anywhere outside every pool: masquerade
    assert [r.terms for r in part.chains[CHAIN].rules] == [
        (Match(saddr(n), SetRef(f"natout-v{n}-masq")),
         Match(daddr(n), SetRef(f"natout-v{n}-pools"), negate=True),
         Masquerade(fully_random=True)) for n in (4, 6)]
    assert [r.terms for r in part.base_chains()["nat-postrouting"].rules] == [(Jump(CHAIN),)]


def test_a_family_without_nat_pools_has_no_sets() -> None:
    s = Snapshot.build(others=[pool("a", "198.19.0.0/16", natOutgoing=True),
                               pool("c", "fd7a:bb1e:1::/48", blockSize=122)])
    assert set(natoutgoing_part(s, "node-1").sets) == {"natout-v4-masq", "natout-v4-pools"}


def test_in_the_table_after_the_services_source_nat() -> None:
    s = Snapshot.build(others=[pool("a", "198.19.0.0/16", natOutgoing=True)])
    assert CHAIN in desired_ruleset(s, "node-1").chains
    # services' masquerade (marked and hairpin packets) decides first
    post = merge([natoutgoing_part(s, "node-1"), services_part(s, "node-1")])
    assert [r.terms for r in post.base_chains()["nat-postrouting"].rules] == [
        (Jump("svc-post"),), (Jump(CHAIN),)]
