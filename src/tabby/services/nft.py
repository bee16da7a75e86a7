"""Services in tabby's nftables table: one hashed lookup, a random pick, DNAT.

    rules = ServiceRules(node)       one per node, kept between passes
    rules.part(snapshot) -> Ruleset  the services part of that node's table
    services_part(snapshot, node)    the same, computed afresh (a one-off)

``ServiceRules`` remembers each service's share of the part between passes
(``tabby.services.shares``); the part is the same as computing every share
afresh, so a fresh ``ServiceRules`` fed the final snapshot of any sequence of
updates answers as a long-lived one does. The rules are built from typed
terms (``tabby.nft.expr``), map elements with ``element``: nothing here writes
nft syntax by hand.

Everything per service lives in map ELEMENTS; chains are shared, so an
endpoint joining or leaving changes elements only (the delta renderer then
sends a few ``add/delete element`` lines, never a chain rewrite)::

  nat-prerouting ─ svc-pre ─ iifname "tab*" ─> svc-int      (from local pods)
                          └─ otherwise ───────> svc-ext      (from outside)
  nat-output ─────────────────────────────────> svc-int      (from the node)

  svc-int: daddr . proto . dport  vmap @svc-ips-vN  ─> goto svc-nK
           (local daddr) proto . dport vmap @svc-np-vN ─> goto svc-np-nK
  svc-ext: the same through @svc-xips-vN / @svc-xnp-vN (externalIPs, LB IPs,
           nodePorts) ─> svc-m-nK (mark for masquerade, then svc-nK) for
           externalTrafficPolicy Cluster, svc-x-nK (local endpoints only, the
           client's address kept) for Local; a ClusterIP reached from outside
           is marked for masquerade and looked up like svc-int.
  svc-nK:  dnat to daddr . proto . dport . (numgen random mod K) map @svc-eps-vN

``svc-nK`` is shared by every service with K usable endpoints (of that
family, on that path): the first map's verdict names the count, the second
map holds endpoint ``slot`` -> address and port. A service whose count changes
gets a new verdict element; chains exist per count in use, so only a count
no service had before adds a (two-rule) chain.

Session affinity (ClientIP) is kube-proxy's design, kept to the services that
ask for it: their verdict elements go to a chain of their own, ``svca-<id>``,
which sends a client seen within the timeout to the endpoint it had
(``ip saddr @svcaff-<id>-<ep> goto svca-<id>-<ep>``, one dynamic set of client
addresses per endpoint) and otherwise picks at random (an inline ``numgen``
vmap); the endpoint's chain records the client (``update @svcaff-... { ip
saddr timeout T }``) and DNATs. An endpoint that goes away takes its set along,
so no client stays bound to it. (One map of client . service -> endpoint
would keep these per-service chains away, but nft 1.0.6 cannot generate a map
update whose IPv6 key and value are that large.) Changing an affine service's
endpoints rewrites its own small chains; every other service is untouched.

Masquerade: bit 0x4000 of the packet mark (kube-proxy's) set on the external
path for Cluster policy, and hairpin (a pod reaching itself through its
service: @svc-hairpin-vN holds ``pod . pod`` for local endpoints) are
masqueraded in nat-postrouting; the bit is cleared there.

No endpoints: a packet still addressed to a service in the filter hooks was
not translated; @svc-noep-vN (external VIPs, Local-policy ClusterIPs),
@svc-noepnp-vN (nodePorts, in the input hook) and @svc-cips-vN (every
ClusterIP, any port) send it to
``svc-reject`` (TCP reset, ICMP port unreachable) when the service has no
endpoint at all, or drop it when its endpoints are elsewhere (Local policies).
DNAT runs at dstnat (-100), after filter-prerouting (-150, where preDNAT policy
sees the original destination) and before the filter hooks (policy sees the
pod).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress

from tabby.marks import MARK_MASQ, VETH_GLOB
from tabby.model.service import EndpointSlice, Service
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
    MapLookup,
    Masquerade,
    Match,
    Meta,
    MetaSet,
    Numgen,
    Quoted,
    Reject,
    SetRef,
    Typeof,
    Update,
    Vmap,
    daddr,
    element,
    saddr,
    text,
)
from tabby.nft.model import Chain, HookEntry, NftMap, NftSet, Rule, Ruleset
from tabby.services.shares import Merged, Part, ShareCache
from tabby.services.view import Backend, InputChanges, PortView, service_views
from tabby.snapshot import Snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MASQ_MARK = MARK_MASQ
FAMILIES = (4, 6)
HOOK_ORDER_NAT = 100
HOOK_ORDER_FILTER = 5
_ADDR = {4: "ipv4_addr", 6: "ipv6_addr"}
_NFPROTO = {4: "ipv4", 6: "ipv6"}
_LOOPBACK: dict[int, ipaddress.IPv4Network | ipaddress.IPv6Address] = {
    4: ipaddress.IPv4Network("127.0.0.0/8"), 6: ipaddress.IPv6Address("::1")}
L4PROTO = Meta("l4proto")
META_MARK = Meta("mark")
L4 = Match(L4PROTO, AnonSet(("tcp", "udp", "sctp")))
NFPROTO = {n: Match(Meta("nfproto"), name) for n, name in _NFPROTO.items()}
PROTO_PORT = Concat((L4PROTO, TH_DPORT))
VIP = {n: Concat((daddr(n), L4PROTO, TH_DPORT)) for n in FAMILIES}  # address . proto . port
REJECT = Goto("svc-reject")
MARK = MetaSet("mark", Bitwise(META_MARK, "or", Hex(MASQ_MARK)))
# map element values that are verdicts, as the maps hold them
_REJECT, _DROP = text(REJECT), text(Drop())

__all__ = ["FAMILIES", "MASQ_MARK", "ServiceRules", "service_share", "services_part"]


class ServiceRules:
    """The services part of one node's table, each service's share remembered between
    passes (shares depend on the node: which endpoints are local)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.shares = ShareCache(functools.partial(service_share, node=node))
        self.inputs = InputChanges()
        self.last: tuple[Merged, Ruleset] | None = None

    def part(self, snapshot: Snapshot) -> Ruleset:
        merged = self.shares.update(self.inputs.changes(snapshot))
        if self.last is None or self.last[0] is not merged:
            self.last = (merged, _ruleset(merged))
        return self.last[1]


def services_part(snapshot: Snapshot, node: str) -> Ruleset:
    """The services part of ``node``'s table, computed afresh."""
    return ServiceRules(node).part(snapshot)


def service_share(svc: Service, slices: tuple[EndpointSlice, ...], node: str) -> Part:
    """One service's share of ``node``'s part (pure: the ShareCache's compute)."""
    part = Part()
    for view in service_views(svc, slices):
        _add_view(part, view, node)
    return part


# -- elements -------------------------------------------------------------------------

def _add_view(part: Part, v: PortView, node: str) -> None:
    n = v.version
    every, local = v.backends, v.local_backends(node)
    pick = _AffinePick(part, v) if v.affinity_timeout is not None else _SharedPick(part, v)
    nothing = _REJECT if not every else _DROP  # not translated: no endpoint, or none here
    if v.cluster_ip is not None:
        key = element(v.cluster_ip, v.protocol, v.port)
        pick.choose(f"svc-ips-v{n}", key, local if v.internal_local else every, "")
        part.add(f"svc-cips-v{n}", str(v.cluster_ip))
        if v.internal_local:
            part.put(f"svc-noep-v{n}", key, nothing)
    for ip in v.external_ips:
        key = element(ip, v.protocol, v.port)
        pick.choose(f"svc-ips-v{n}", key, every, "")
        pick.external(f"svc-xips-v{n}", key, local, "")
        part.put(f"svc-noep-v{n}", key, nothing)
    if v.node_port is not None:
        key = element(v.protocol, v.node_port)
        pick.choose(f"svc-np-v{n}", key, every, "np-")
        pick.external(f"svc-xnp-v{n}", key, local, "np-")
        part.put(f"svc-noepnp-v{n}", key, nothing)
    for b in local:
        part.add(f"svc-hairpin-v{n}", element(b.address, b.address))


class _SharedPick:
    """Verdict -> the shared chain for the endpoint count; slot elements per endpoint."""

    def __init__(self, part: Part, view: PortView) -> None:
        self.part, self.view = part, view

    def choose(self, verdicts: str, key: str, backends: tuple[Backend, ...], np: str,
               local: bool = False) -> None:
        if not backends:
            return
        n, kind = self.view.version, f"{'x-' if local else ''}{np}n"
        self.part.put(verdicts, key, text(Goto(f"svc-{kind}{len(backends)}")))
        self.part.counts.add((kind, len(backends)))
        slots = f"svc-{'x' if local else ''}{np.rstrip('-')}eps-v{n}"
        for slot, b in enumerate(backends):
            self.part.put(slots, element(key, slot), element(b.address, b.port))

    def external(self, verdicts: str, key: str, local: tuple[Backend, ...], np: str) -> None:
        """The path from outside: Local policy keeps local endpoints and the client's
        address; Cluster policy marks for masquerade and picks among all."""
        if self.view.external_local:
            self.choose(verdicts, key, local, np, local=True)
        elif self.view.backends:
            k = len(self.view.backends)
            self.part.put(verdicts, key, text(Goto(f"svc-m-{np}n{k}")))
            self.part.counts.add((f"m-{np}n", k))


class _AffinePick:
    """A service with session affinity: chains and client sets of its own (see above)."""

    def __init__(self, part: Part, view: PortView) -> None:
        self.part, self.view = part, view
        self.id = _short(f"{view.ref}/{view.version}", 12)

    def choose(self, verdicts: str, key: str, backends: tuple[Backend, ...], np: str,
               local: bool = False, mark: bool = False) -> None:
        if not backends:
            return
        name = f"svca-{self.id}{'-local' if local else ''}{'-masq' if mark else ''}"
        self.part.put(verdicts, key, text(Goto(name)))
        if name in self.part.chains:
            return
        n, ref = self.view.version, self.view.ref
        rules = [Rule.of(MARK, comment="masquerade")] if mark else []
        targets = [self._endpoint(b) for b in backends]
        rules += [Rule.of(Match(saddr(n), SetRef(aff)), Goto(chain), comment=ref)
                  for chain, aff in targets]
        vmap = tuple((i, Goto(chain)) for i, (chain, _) in enumerate(targets))
        rules.append(Rule.of(InlineVmap(Numgen(len(targets)), vmap), comment=ref))
        self.part.chains[name] = Chain(name, tuple(rules))

    def external(self, verdicts: str, key: str, local: tuple[Backend, ...], np: str) -> None:
        if self.view.external_local:
            self.choose(verdicts, key, local, np, local=True)
        else:
            self.choose(verdicts, key, self.view.backends, np, mark=True)

    def _endpoint(self, b: Backend) -> tuple[str, str]:
        """The endpoint's chain (remember the client, DNAT) and its client set."""
        suffix = _short(f"{b.address}/{b.port}", 8)
        chain, aff = f"svca-{self.id}-{suffix}", f"svcaff-{self.id}-{suffix}"
        n, timeout = self.view.version, self.view.affinity_timeout or 0
        self.part.chains[chain] = Chain(chain, (
            Rule.of(Update(aff, saddr(n), timeout)),
            Rule.of(L4, Dnat(n, Endpoint(b.address, b.port)),
                    comment=f"{self.view.ref} {b.address}")))
        self.part.affinity_sets[aff] = n
        return chain, aff


def _short(name: str, size: int) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:size]


# -- structure ----------------------------------------------------------------------

def _ruleset(part: Merged) -> Ruleset:
    maps = [NftMap(name, key, value, part.elements(name)) for name, key, value in _MAP_TYPES]
    sets = [NftSet(f"svc-cips-v{n}", _ADDR[n], part.members(f"svc-cips-v{n}"))
            for n in FAMILIES]
    sets += [NftSet(f"svc-hairpin-v{n}", text(Concat((_ADDR[n], _ADDR[n]))),
                    part.members(f"svc-hairpin-v{n}")) for n in FAMILIES]
    sets += [NftSet(name, _ADDR[n], flags=("dynamic", "timeout"))
             for name, n in sorted(part.affinity_sets.items())]
    chains = [*_FIXED_CHAINS, *_count_chains(part.counts),
              *(part.chains[name] for name in sorted(part.chains))]
    return Ruleset.of(chains=chains, sets=sets, maps=maps, hooks=_HOOKS)


def _map_types() -> list[tuple[str, str, str]]:
    """(name, key type, data type) of every map, as declared."""
    out: list[tuple[str, str, str]] = []
    for n in FAMILIES:
        vip, proto_port = text(Concat((_ADDR[n], "inet_proto", "inet_service"))), \
            text(Concat(("inet_proto", "inet_service")))
        # a key holding a numgen value is declared by expression (nft has no type for it)
        slot = text(Typeof(Concat((*VIP[n].items, Numgen(2)))))
        np_slot = text(Typeof(Concat((*PROTO_PORT.items, Numgen(2)))))
        to = text(Concat((daddr(n), TH_DPORT)))
        out += [(f"svc-ips-v{n}", vip, "verdict"), (f"svc-xips-v{n}", vip, "verdict"),
                (f"svc-np-v{n}", proto_port, "verdict"), (f"svc-xnp-v{n}", proto_port, "verdict"),
                (f"svc-eps-v{n}", slot, to), (f"svc-xeps-v{n}", slot, to),
                (f"svc-npeps-v{n}", np_slot, to), (f"svc-xnpeps-v{n}", np_slot, to),
                (f"svc-noep-v{n}", vip, "verdict"), (f"svc-noepnp-v{n}", proto_port, "verdict")]
    return out


def _hooks() -> list[HookEntry]:
    hooks = [HookEntry(base, HOOK_ORDER_NAT, Rule.of(Jump(target), comment="services"))
             for base, target in (("nat-prerouting", "svc-pre"), ("nat-output", "svc-int"),
                                  ("nat-postrouting", "svc-post"))]
    new = Match(Ct("state"), "new")
    hooks += [HookEntry(base, HOOK_ORDER_FILTER,
                        Rule.of(new, Jump("svc-filter"), comment="services"))
              for base in ("filter-forward", "filter-output")]
    hooks.append(HookEntry("filter-input", HOOK_ORDER_FILTER,
                           Rule.of(new, Jump("svc-filter-in"), comment="services")))
    return hooks


def _fixed_chains() -> list[Chain]:
    def lookups(prefix: str) -> tuple[Rule, ...]:
        rules = [Rule.of(Vmap(VIP[n], f"svc-{prefix}ips-v{n}")) for n in FAMILIES]
        rules += [Rule.of(Match(Fib("daddr", "type"), "local"),
                          Match(daddr(n), _LOOPBACK[n], negate=True),
                          Vmap(PROTO_PORT, f"svc-{prefix}np-v{n}")) for n in FAMILIES]
        return tuple(rules)

    from_outside = tuple(Rule.of(Match(daddr(n), SetRef(f"svc-cips-v{n}")), MARK,
                                 Vmap(VIP[n], f"svc-ips-v{n}"), comment="clusterIP from outside")
                         for n in FAMILIES)
    marked = Match(Bitwise(META_MARK, "and", Hex(MASQ_MARK)), 0, negate=True)
    unmark = MetaSet("mark", Bitwise(META_MARK, "and", Hex(~MASQ_MARK & 0xffffffff)))
    post = [Rule.of(marked, unmark, Masquerade(fully_random=True), comment="masquerade")]
    post += [Rule.of(Match(Ct("status"), "dnat"),
                     Match(Concat((saddr(n), daddr(n))), SetRef(f"svc-hairpin-v{n}")),
                     Masquerade(), comment="hairpin") for n in FAMILIES]
    checks = [Rule.of(Vmap(VIP[n], f"svc-noep-v{n}")) for n in FAMILIES]
    checks += [Rule.of(Match(daddr(n), SetRef(f"svc-cips-v{n}")), REJECT) for n in FAMILIES]
    return [
        Chain("svc-pre", (Rule.of(Match(IIFNAME, Quoted(VETH_GLOB)),
                                  Goto("svc-int"), comment="from local pods"),
                          Rule.of(Goto("svc-ext")))),
        Chain("svc-int", lookups("")),
        Chain("svc-ext", (*lookups("x"), *from_outside)),
        Chain("svc-post", tuple(post)),
        Chain("svc-filter", tuple(checks)),
        # input: the destination is local (a nodePort, or an externalIP the node holds),
        # so the nodePort check needs no fib lookup
        Chain("svc-filter-in", (*checks[:2], *(
            Rule.of(NFPROTO[n], Vmap(PROTO_PORT, f"svc-noepnp-v{n}")) for n in FAMILIES))),
        Chain("svc-reject", (Rule.of(Match(L4PROTO, "tcp"), Reject(tcp_reset=True),
                                     comment="no endpoints"),
                             Rule.of(Reject(), comment="no endpoints"))),
    ]


def _count_chains(counts: frozenset[tuple[str, int]]) -> list[Chain]:
    """The shared per-count chains in use: svc-nK, svc-np-nK, and their m-/x- variants."""
    chains: list[Chain] = []
    for kind, k in sorted(counts):
        name = f"svc-{kind}{k}"
        if kind.startswith("m-"):
            chains.append(Chain(name, (Rule.of(MARK, comment="masquerade"),
                                       Rule.of(Goto(f"svc-{kind[2:]}{k}")))))
            continue
        nodeport = kind.endswith("np-n")
        slots = f"svc-{'x' if kind.startswith('x-') else ''}{'np' if nodeport else ''}eps"
        chains.append(Chain(name, tuple(
            Rule.of(NFPROTO[n], L4, Dnat(n, MapLookup(
                Concat((*(PROTO_PORT if nodeport else VIP[n]).items, Numgen(k))),
                f"{slots}-v{n}")))
            for n in FAMILIES)))
    # An m- chain jumps to its plain twin, which must exist even if no service uses it directly.
    plain = frozenset((kind[2:], k) for kind, k in counts if kind.startswith("m-")) - counts
    return chains + (_count_chains(plain) if plain else [])


# The same on every node and every pass: built once.
_MAP_TYPES = _map_types()
_HOOKS = _hooks()
_FIXED_CHAINS = _fixed_chains()
