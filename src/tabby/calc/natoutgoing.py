"""natOutgoing: masquerade pod traffic that leaves the pools (Calico's rule, in nftables).

A pool with ``natOutgoing: true`` has its pods' traffic to any destination
outside *all* pools source-NATed to the address of the interface it leaves
by; traffic between pods (any pool, any node) keeps its addresses. Per
family, in tabby's table::

    set natout-v4-masq  { type ipv4_addr; flags interval; }   pools with natOutgoing
    set natout-v4-pools { type ipv4_addr; flags interval; }   every pool
    chain natout-post
        ip saddr @natout-v4-masq ip daddr != @natout-v4-pools masquerade fully-random
    nat-postrouting (order 500): jump natout-post

(the same with ``ip6`` and ``-v6-`` for IPv6). Disabled pools count too:
their pods still run. A family without a natOutgoing pool contributes
nothing, and with no such pool at all the part is empty. The rule is the same
on every node, as in Calico.

Traffic to other nodes' own addresses leaves the pools too, so by default
(Felix's ``natOutgoingExclusions: IPPoolsOnly``) it is masqueraded to the
node's address: a host endpoint policy on another node that admits the node
subnet then admits every pod of every node. ``natOutgoingExclusions:
IPPoolsAndHostIPs`` in a FelixConfiguration (``default``, or ``node.<name>``
for one node) keeps the pod's address towards the nodes as well: a set of every
node's addresses (``natout-vN-hosts``: BGP and VXLAN tunnel addresses) joins
the exclusions, ``... ip daddr != @natout-v4-hosts masquerade``.
"""

from __future__ import annotations

from tabby.model import FelixConfiguration, IPPool
from tabby.model.felixconfig import nat_outgoing_exclusions
from tabby.nft.expr import Jump, Masquerade, Match, SetRef, daddr, saddr
from tabby.nft.model import Chain, HookEntry, NftSet, Rule, Ruleset
from tabby.snapshot import Snapshot

CHAIN = "natout-post"
ORDER = 500  # after other features' source NAT (services' hairpin masquerade, ...)
COMMENT = "natOutgoing"
_ADDR = {4: "ipv4_addr", 6: "ipv6_addr"}

__all__ = ["CHAIN", "natoutgoing_part"]


def natoutgoing_part(snapshot: Snapshot, node: str) -> Ruleset:
    """natOutgoing's part of ``node``'s table (the same on every node)."""
    pools = snapshot.of(IPPool)
    hosts = nat_outgoing_exclusions(snapshot.of(FelixConfiguration), node) == "IPPoolsAndHostIPs"
    sets: list[NftSet] = []
    rules: list[Rule] = []
    for version, addr_type in _ADDR.items():
        family = [p for p in pools if p.version == version]
        masq = frozenset(str(p.spec.cidr) for p in family if p.spec.nat_outgoing)
        if not masq:
            continue
        masq_set, all_set = f"natout-v{version}-masq", f"natout-v{version}-pools"
        sets += [NftSet(masq_set, addr_type, masq, ("interval",), "pools with natOutgoing"),
                 NftSet(all_set, addr_type, frozenset(str(p.spec.cidr) for p in family),
                        ("interval",), "every pool")]
        matches = [Match(saddr(version), SetRef(masq_set)),
                   Match(daddr(version), SetRef(all_set), negate=True)]
        if hosts:
            hosts_set = f"natout-v{version}-hosts"
            sets.append(NftSet(hosts_set, addr_type, _host_addresses(snapshot, version),
                               comment="every node's addresses (natOutgoingExclusions)"))
            matches.append(Match(daddr(version), SetRef(hosts_set), negate=True))
        rules.append(Rule.of(*matches, Masquerade(fully_random=True), comment=COMMENT))
    if not rules:
        return Ruleset()
    jump = Rule.of(Jump(CHAIN), comment=COMMENT)
    return Ruleset.of(chains=[Chain(CHAIN, tuple(rules))], sets=sets,
                      hooks=[HookEntry("nat-postrouting", ORDER, jump)])


def _host_addresses(snapshot: Snapshot, version: int) -> frozenset[str]:
    """Every node's address of the family: BGP address and VXLAN tunnel address."""
    out = set()
    for n in snapshot.nodes:
        for address in (n.address(version), n.spec.vxlan.address(version)):
            if address is not None:
                out.add(str(address))
    return frozenset(out)
