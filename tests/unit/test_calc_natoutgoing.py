"""natOutgoing's nftables part: sets of pools per family, one masquerade rule each."""

from __future__ import annotations

from tabby.calc.natoutgoing import CHAIN, natoutgoing_part
from tabby.calc.nftables import desired_ruleset
from tabby.nft.model import Ruleset
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
    assert [r.body for r in part.chains[CHAIN].rules] == [
        "ip saddr @natout-v4-masq ip daddr != @natout-v4-pools masquerade fully-random",
        "ip6 saddr @natout-v6-masq ip6 daddr != @natout-v6-pools masquerade fully-random"]
    assert [r.body for r in part.base_chains()["nat-postrouting"].rules] == [f"jump {CHAIN}"]


def test_a_family_without_nat_pools_has_no_sets() -> None:
    s = Snapshot.build(others=[pool("a", "198.19.0.0/16", natOutgoing=True),
                               pool("c", "fd7a:bb1e:1::/48", blockSize=122)])
    assert set(natoutgoing_part(s, "node-1").sets) == {"natout-v4-masq", "natout-v4-pools"}


def test_registered_with_the_table() -> None:
    s = Snapshot.build(others=[pool("a", "198.19.0.0/16", natOutgoing=True)])
    assert CHAIN in desired_ruleset(s, "node-1").chains
