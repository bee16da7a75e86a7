"""Services in tabby's nftables table: one hashed lookup, a random pick, DNAT.

    services_part(snapshot, node) -> Ruleset       (an nftables contributor)

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

from tabby.calc.nftables import contributor
from tabby.marks import MARK_MASQ, VETH_PREFIX
from tabby.model.service import EndpointSlice, Service
from tabby.nft.model import Chain, HookEntry, NftMap, NftSet, Rule, Ruleset
from tabby.services.shares import Merged, Part, ShareCache
from tabby.services.view import Backend, PortView, service_inputs, service_views
from tabby.snapshot import Snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MASQ_MARK = MARK_MASQ
FAMILIES = (4, 6)
L4 = "meta l4proto { tcp, udp, sctp }"
HOOK_ORDER_NAT = 100
HOOK_ORDER_FILTER = 5
_IP = {4: "ip", 6: "ip6"}
_ADDR = {4: "ipv4_addr", 6: "ipv6_addr"}
_NFPROTO = {4: "ipv4", 6: "ipv6"}
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1"}
REJECT = "goto svc-reject"
MARK = f"meta mark set meta mark or {MASQ_MARK:#010x}"


_CACHES: dict[str, ShareCache] = {}  # per node: shares depend on which endpoints are local
_CACHED_NODES = 8


@contributor
def services_part(snapshot: Snapshot, node: str) -> Ruleset:
    """The services part of ``node``'s table (``tabby.services.shares`` remembers each
    service's share between passes; the result is the same as computing them all)."""
    cache = _CACHES.get(node)
    if cache is None:
        if len(_CACHES) >= _CACHED_NODES:
            _CACHES.clear()
        cache = _CACHES[node] = ShareCache(functools.partial(_share, node=node))
    return _ruleset(cache.merged(service_inputs(snapshot)))


def _share(svc: Service, slices: tuple[EndpointSlice, ...], node: str) -> Part:
    part = Part()
    for view in service_views(svc, slices):
        _add_view(part, view, node)
    return part


# -- elements -------------------------------------------------------------------------

def _add_view(part: Part, v: PortView, node: str) -> None:
    n = v.version
    every, local = v.backends, v.local_backends(node)
    pick = _AffinePick(part, v) if v.affinity_timeout is not None else _SharedPick(part, v)
    nothing = REJECT if not every else "drop"  # not translated: no endpoint, or none here
    if v.cluster_ip is not None:
        key = _key(v.cluster_ip, v)
        pick.choose(f"svc-ips-v{n}", key, local if v.internal_local else every, "")
        part.add(f"svc-cips-v{n}", str(v.cluster_ip))
        if v.internal_local:
            part.put(f"svc-noep-v{n}", key, nothing)
    for ip in v.external_ips:
        key = _key(ip, v)
        pick.choose(f"svc-ips-v{n}", key, every, "")
        pick.external(f"svc-xips-v{n}", key, local, "")
        part.put(f"svc-noep-v{n}", key, nothing)
    if v.node_port is not None:
        key = f"{v.protocol} . {v.node_port}"
        pick.choose(f"svc-np-v{n}", key, every, "np-")
        pick.external(f"svc-xnp-v{n}", key, local, "np-")
        part.put(f"svc-noepnp-v{n}", key, nothing)
    for b in local:
        part.add(f"svc-hairpin-v{n}", f"{b.address} . {b.address}")


def _key(ip: IPAddress, v: PortView) -> str:
    return f"{ip} . {v.protocol} . {v.port}"


class _SharedPick:
    """Verdict -> the shared chain for the endpoint count; slot elements per endpoint."""

    def __init__(self, part: Part, view: PortView) -> None:
        self.part, self.view = part, view

    def choose(self, verdicts: str, key: str, backends: tuple[Backend, ...], np: str,
               local: bool = False) -> None:
        if not backends:
            return
        n, kind = self.view.version, f"{'x-' if local else ''}{np}n"
        self.part.put(verdicts, key, f"goto svc-{kind}{len(backends)}")
        self.part.counts.add((kind, len(backends)))
        slots = f"svc-{'x' if local else ''}{np.rstrip('-')}eps-v{n}"
        for slot, b in enumerate(backends):
            self.part.put(slots, f"{key} . {slot}", f"{b.address} . {b.port}")

    def external(self, verdicts: str, key: str, local: tuple[Backend, ...], np: str) -> None:
        """The path from outside: Local policy keeps local endpoints and the client's
        address; Cluster policy marks for masquerade and picks among all."""
        if self.view.external_local:
            self.choose(verdicts, key, local, np, local=True)
        elif self.view.backends:
            k = len(self.view.backends)
            self.part.put(verdicts, key, f"goto svc-m-{np}n{k}")
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
        self.part.put(verdicts, key, f"goto {name}")
        if name in self.part.chains:
            return
        ip = _IP[self.view.version]
        rules = [Rule(MARK, "masquerade")] if mark else []
        targets = [self._endpoint(b) for b in backends]
        rules += [Rule(f"{ip} saddr @{aff} goto {chain}", self.view.ref) for chain, aff in targets]
        vmap = ", ".join(f"{i} : goto {chain}" for i, (chain, _) in enumerate(targets))
        rules.append(Rule(f"numgen random mod {len(targets)} vmap {{ {vmap} }}", self.view.ref))
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
        ip = _IP[self.view.version]
        target = f"[{b.address}]:{b.port}" if b.address.version == 6 else f"{b.address}:{b.port}"
        self.part.chains[chain] = Chain(chain, (
            Rule(f"update @{aff} {{ {ip} saddr timeout {self.view.affinity_timeout}s }}"),
            Rule(f"{L4} dnat {ip} to {target}", f"{self.view.ref} {b.address}")))
        self.part.affinity_sets[aff] = self.view.version
        return chain, aff


def _short(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


# -- structure ----------------------------------------------------------------------

def _ruleset(part: Merged) -> Ruleset:
    maps = [NftMap(name, key, value, part.elements(name)) for name, key, value in _map_types()]
    sets = [NftSet(f"svc-cips-v{n}", _ADDR[n], part.members(f"svc-cips-v{n}"))
            for n in FAMILIES]
    sets += [NftSet(f"svc-hairpin-v{n}", f"{_ADDR[n]} . {_ADDR[n]}",
                    part.members(f"svc-hairpin-v{n}")) for n in FAMILIES]
    sets += [NftSet(name, _ADDR[n], flags=("dynamic", "timeout"))
             for name, n in sorted(part.affinity_sets.items())]
    chains = [*_fixed_chains(), *_count_chains(part.counts),
              *(part.chains[name] for name in sorted(part.chains))]
    hooks = [HookEntry("nat-prerouting", HOOK_ORDER_NAT, Rule("jump svc-pre", "services")),
             HookEntry("nat-output", HOOK_ORDER_NAT, Rule("jump svc-int", "services")),
             HookEntry("nat-postrouting", HOOK_ORDER_NAT, Rule("jump svc-post", "services"))]
    hooks += [HookEntry(base, HOOK_ORDER_FILTER, Rule("ct state new jump svc-filter", "services"))
              for base in ("filter-forward", "filter-output")]
    hooks.append(HookEntry("filter-input", HOOK_ORDER_FILTER,
                           Rule("ct state new jump svc-filter-in", "services")))
    return Ruleset.of(chains=chains, sets=sets, maps=maps, hooks=hooks)


def _map_types() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for n in FAMILIES:
        ip, addr = _IP[n], _ADDR[n]
        vip, proto_port = f"{addr} . inet_proto . inet_service", "inet_proto . inet_service"
        slot = f"typeof {ip} daddr . meta l4proto . th dport . numgen random mod 2"
        np_slot = "typeof meta l4proto . th dport . numgen random mod 2"
        to = f"{ip} daddr . th dport"
        out += [(f"svc-ips-v{n}", vip, "verdict"), (f"svc-xips-v{n}", vip, "verdict"),
                (f"svc-np-v{n}", proto_port, "verdict"), (f"svc-xnp-v{n}", proto_port, "verdict"),
                (f"svc-eps-v{n}", slot, to), (f"svc-xeps-v{n}", slot, to),
                (f"svc-npeps-v{n}", np_slot, to), (f"svc-xnpeps-v{n}", np_slot, to),
                (f"svc-noep-v{n}", vip, "verdict"), (f"svc-noepnp-v{n}", proto_port, "verdict")]
    return out


def _fixed_chains() -> list[Chain]:
    def lookups(prefix: str) -> tuple[Rule, ...]:
        rules = [Rule(f"{_IP[n]} daddr . meta l4proto . th dport vmap @svc-{prefix}ips-v{n}")
                 for n in FAMILIES]
        rules += [Rule(f"fib daddr type local {_IP[n]} daddr != {_LOOPBACK[n]}"
                       f" meta l4proto . th dport vmap @svc-{prefix}np-v{n}") for n in FAMILIES]
        return tuple(rules)

    from_outside = tuple(Rule(f"{_IP[n]} daddr @svc-cips-v{n} {MARK} {_IP[n]} daddr"
                              f" . meta l4proto . th dport vmap @svc-ips-v{n}",
                              "clusterIP from outside") for n in FAMILIES)
    post = [Rule(f"meta mark and {MASQ_MARK:#010x} != 0 meta mark set meta mark and"
                 f" {~MASQ_MARK & 0xffffffff:#010x} masquerade fully-random", "masquerade")]
    post += [Rule(f"ct status dnat {_IP[n]} saddr . {_IP[n]} daddr @svc-hairpin-v{n}"
                  " masquerade", "hairpin") for n in FAMILIES]
    checks = [Rule(f"{_IP[n]} daddr . meta l4proto . th dport vmap @svc-noep-v{n}")
              for n in FAMILIES]
    checks += [Rule(f"{_IP[n]} daddr @svc-cips-v{n} {REJECT}") for n in FAMILIES]
    return [
        Chain("svc-pre", (Rule(f'iifname "{VETH_PREFIX}*" goto svc-int', "from local pods"),
                          Rule("goto svc-ext"))),
        Chain("svc-int", lookups("")),
        Chain("svc-ext", (*lookups("x"), *from_outside)),
        Chain("svc-post", tuple(post)),
        Chain("svc-filter", tuple(checks)),
        # input: the destination is local (a nodePort, or an externalIP the node holds),
        # so the nodePort check needs no fib lookup
        Chain("svc-filter-in", (*checks[:2], *(Rule(
            f"meta nfproto {_NFPROTO[n]} meta l4proto . th dport vmap @svc-noepnp-v{n}")
            for n in FAMILIES))),
        Chain("svc-reject", (Rule("meta l4proto tcp reject with tcp reset", "no endpoints"),
                             Rule("reject", "no endpoints"))),
    ]


def _count_chains(counts: frozenset[tuple[str, int]]) -> list[Chain]:
    """The shared per-count chains in use: svc-nK, svc-np-nK, and their m-/x- variants."""
    chains: list[Chain] = []
    for kind, k in sorted(counts):
        name = f"svc-{kind}{k}"
        if kind.startswith("m-"):
            chains.append(Chain(name, (Rule(MARK, "masquerade"), Rule(f"goto svc-{kind[2:]}{k}"))))
            continue
        nodeport = kind.endswith("np-n")
        slots = f"svc-{'x' if kind.startswith('x-') else ''}{'np' if nodeport else ''}eps"
        rules = []
        for n in FAMILIES:
            key = "" if nodeport else f"{_IP[n]} daddr . "
            rules.append(Rule(f"meta nfproto {_NFPROTO[n]} {L4} dnat {_IP[n]} to {key}meta"
                              f" l4proto . th dport . numgen random mod {k} map @{slots}-v{n}"))
        chains.append(Chain(name, tuple(rules)))
    # An m- chain jumps to its plain twin, which must exist even if no service uses it directly.
    plain = frozenset((kind[2:], k) for kind, k in counts if kind.startswith("m-")) - counts
    return chains + (_count_chains(plain) if plain else [])
