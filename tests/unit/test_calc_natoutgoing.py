"""natOutgoing's nftables part: sets of pools per family, one masquerade rule each."""

from __future__ import annotations

import pytest

from tabby.calc.natoutgoing import CHAIN, natoutgoing_part
from tabby.calc.node import desired_ruleset
from tabby.errors import ValidationError
from tabby.model import Resource, parse_manifest
from tabby.nft.expr import Jump, Masquerade, Match, SetRef, daddr, saddr
from tabby.nft.model import Ruleset, merge
from tabby.services.nft import services_part
from tabby.snapshot import Snapshot
from tests.unit.test_calc_vxlan import node, pool


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


def felix(name: str, **spec: object) -> Resource:
    return parse_manifest({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                           "metadata": {"name": name}, "spec": spec})


def test_host_ips_are_excluded_when_felix_says_so() -> None:
    nodes = [node("node-1", "198.18.0.11/24", "fd7a:bb1e::11/64", vtep4="198.19.0.0"),
             node("node-2", "198.18.0.12/24")]
    pools = [pool("a", "198.19.0.0/16", natOutgoing=True),
             pool("c", "fd7a:bb1e:1::/48", blockSize=122, natOutgoing=True)]
    plain = natoutgoing_part(Snapshot.build(nodes=nodes, others=pools), "node-1")
    assert not [n for n in plain.sets if n.endswith("-hosts")]  # IPPoolsOnly: Calico's default
    s = Snapshot.build(nodes=nodes, others=[
        *pools, felix("default", natOutgoingExclusions="IPPoolsAndHostIPs")])
    part = natoutgoing_part(s, "node-1")
    assert part.sets["natout-v4-hosts"].elements == {"198.18.0.11", "198.18.0.12", "198.19.0.0"}
    assert part.sets["natout-v6-hosts"].elements == {"fd7a:bb1e::11"}
    assert [r.terms for r in part.chains[CHAIN].rules] == [
        (Match(saddr(n), SetRef(f"natout-v{n}-masq")),
         Match(daddr(n), SetRef(f"natout-v{n}-pools"), negate=True),
         Match(daddr(n), SetRef(f"natout-v{n}-hosts"), negate=True),
         Masquerade(fully_random=True)) for n in (4, 6)]
    # a node's own setting wins over the default
    mine = Snapshot.build(nodes=nodes, others=[
        *pools, felix("default", natOutgoingExclusions="IPPoolsAndHostIPs"),
        felix("node.node-1", natOutgoingExclusions="IPPoolsOnly")])
    assert not [n for n in natoutgoing_part(mine, "node-1").sets if n.endswith("-hosts")]
    assert "natout-v4-hosts" in natoutgoing_part(mine, "node-2").sets


def test_a_bad_exclusions_value_is_refused_with_its_path() -> None:
    with pytest.raises(ValidationError) as err:
        felix("default", natOutgoingExclusions="Everything")
    assert "spec.natOutgoingExclusions" in str(err.value)
    assert "IPPoolsAndHostIPs" in str(err.value)
