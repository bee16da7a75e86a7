"""ClusterNetworkPolicy as tabby policies: tier ``kube-admin`` or ``kube-baseline``.

Each ``ClusterNetworkPolicy`` (``tabby.model.clusternetworkpolicy``) becomes one
``Policy`` shaped like a GlobalNetworkPolicy, the way Calico converts it
(libcalico-go's ``K8sClusterNetworkPolicyToCalico``):

- tier ``Admin`` -> tier ``kube-admin`` (before the default tier, where the
  Kubernetes NetworkPolicies are), ``Baseline`` -> ``kube-baseline`` (after
  it); both tiers pass what they do not decide (``defaultAction: Pass``), so an
  endpoint a CNP selects but no rule matches goes on to the next tier and, past
  the last, to its profile (allowed), as upstream wants;
- ``order`` = ``priority`` (lower first within the tier); equal priorities are ordered by name
  (upstream leaves ties to the implementation);
- subject: pods only (``projectcalico.org/orchestrator == 'k8s'``; host
  networked pods are not tabby endpoints anyway), of the namespaces
  ``namespaces`` selects, or ``pods.podSelector`` in ``pods.namespaceSelector``;
- actions: Accept -> Allow, Deny -> Deny, Pass -> Pass;
- each rule becomes one tabby rule per peer and per protocol of ``protocols``
  (ports of one protocol together; a named port goes with each of TCP, UDP and
  SCTP, since upstream's ``destinationNamedPort`` names no protocol; no
  ``protocols``: one rule for every protocol, ICMP included). Ingress peers are
  the source, egress peers the destination; ports are always the
  destination's;
- peers: ``namespaces`` -> pods of those namespaces; ``pods`` -> as the
  subject; ``networks`` -> ``nets``; ``nodes`` -> the addresses of the tabby
  ``Node`` objects whose labels match (BGP addresses and ``spec.addresses``)
  as ``nets``. A ``nodes`` peer matching no node with an address matches
  nothing: its rules are left out (an empty ``nets`` would match everything).

Types follow the rules present (Ingress when there are ingress rules, Egress
when egress ones), as Calico does: a CNP without rules of a direction does not
select its subject for that direction, so it cannot make its tier's default
apply there. ``RuleOrigin`` keeps the CNP rule and peer indexes for
``explain``.

``ClusterPolicies`` holds the compiled CNPs from pass to pass (the program
builder owns one): a CNP whose object and node peers' addresses did not change
keeps its ``CompiledPolicy`` object, so the builder's order memo and the nft
renderer's per-policy memos hold.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tabby import selector as sel
from tabby.model.clusternetworkpolicy import ClusterNetworkPolicy, CNPPeer, CNPPort, CNPRule
from tabby.model.k8spolicy import LabelSelector
from tabby.model.node import Node
from tabby.model.policy import PolicySpec
from tabby.model.policyrules import PROTOCOL_NUMBERS, EntityRule, PortSpec, Rule
from tabby.model.tier import KUBE_ADMIN_TIER, KUBE_BASELINE_TIER
from tabby.policy.compile import CompiledPolicy, compile_policy
from tabby.policy.convert import Policy, PolicyRef, RuleOrigin
from tabby.policy.index import ORCHESTRATOR
from tabby.snapshot import Snapshot

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ADMIN_TIER = KUBE_ADMIN_TIER
BASELINE_TIER = KUBE_BASELINE_TIER
TIER_OF = {"Admin": ADMIN_TIER, "Baseline": BASELINE_TIER}
ACTION_OF = {"Accept": "Allow", "Deny": "Deny", "Pass": "Pass"}
K8S_POD = f"{ORCHESTRATOR} == 'k8s'"
_NAMED_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")

__all__ = ["ADMIN_TIER", "BASELINE_TIER", "ClusterPolicies", "ClusterPolicyRef",
           "NodeAddresses", "node_addresses", "to_policy"]


@dataclass(frozen=True, slots=True)
class ClusterPolicyRef(PolicyRef):
    """A CNP's reference: key ``cnp/<name>`` (apart from every GlobalNetworkPolicy's)."""

    @property
    def key(self) -> str:
        return f"cnp/{self.name}"


@dataclass(frozen=True, slots=True)
class NodeAddresses:
    """What a ``nodes`` peer can match of one node: its labels and its addresses."""

    name: str
    labels: tuple[tuple[str, str], ...]
    addresses: tuple[IPAddress, ...]


def node_addresses(nodes: Iterable[Node]) -> tuple[NodeAddresses, ...]:
    """Every node's labels and addresses (BGP addresses, then ``spec.addresses``)."""
    out = []
    for node in nodes:
        found: list[IPAddress] = []
        for version in (4, 6):
            address = node.address(version)
            if address is not None:
                found.append(address)
        for text, _kind in node.spec.addresses:
            try:
                found.append(ipaddress.ip_interface(text).ip)
            except ValueError:
                continue  # a hostname or garbage: nothing to match
        out.append(NodeAddresses(node.meta.name, tuple(sorted(node.meta.labels.items())),
                                 tuple(dict.fromkeys(found))))
    return tuple(out)


def nodes_nets(selector: LabelSelector, nodes: Sequence[NodeAddresses]
               ) -> tuple[IPNetwork, ...]:
    """The host routes (/32, /128) of every address of the nodes ``selector`` matches."""
    parsed = sel.parse(selector.to_selector())
    nets: list[IPNetwork] = []
    for node in nodes:
        if parsed.matches(dict(node.labels)):
            nets += [ipaddress.ip_network(a) for a in node.addresses]
    return tuple(sorted(set(nets), key=lambda n: (n.version, n)))


def to_policy(cnp: ClusterNetworkPolicy, nodes: Sequence[NodeAddresses] = ()) -> Policy:
    """The CNP as one tabby policy of its tier (pure)."""
    s = cnp.spec
    ingress, in_origins = _rules(s.ingress, nodes, ingress=True)
    egress, out_origins = _rules(s.egress, nodes, ingress=False)
    if s.namespaces is not None:
        selector, namespaces = K8S_POD, s.namespaces.to_selector()
    else:
        assert s.pods is not None
        selector = _pods(s.pods.pod_selector)
        namespaces = s.pods.namespace_selector.to_selector()
    types = tuple(t for t, rules in (("Ingress", s.ingress), ("Egress", s.egress)) if rules)
    spec = PolicySpec(order=float(s.priority), selector=selector, types=types,
                      ingress=ingress, egress=egress, namespace_selector=namespaces,
                      tier=TIER_OF[s.tier])
    ref = ClusterPolicyRef(cnp.KIND.kind, cnp.KIND.api_version, "", cnp.meta.name)
    return Policy(ref, spec, in_origins, out_origins)


def _pods(pod_selector: LabelSelector) -> str:
    pods = pod_selector.to_selector()
    return K8S_POD if pods == "all()" else f"{K8S_POD} && ({pods})"


def _rules(rules: tuple[CNPRule, ...], nodes: Sequence[NodeAddresses], *, ingress: bool
           ) -> tuple[tuple[Rule, ...], tuple[RuleOrigin, ...]]:
    out: list[Rule] = []
    origins: list[RuleOrigin] = []
    for index, rule in enumerate(rules):
        action = ACTION_OF[rule.action]
        groups = _port_groups(rule.protocols)
        for peer_index, peer in enumerate(rule.peers):
            entity = _peer(peer, nodes)
            if entity is None:
                continue  # matches nothing
            for protocol, ports in groups:
                if ingress:
                    src, dst = entity, EntityRule(ports=ports)
                else:
                    src, dst = EntityRule(), _with_ports(entity, ports)
                out.append(Rule(action=action, protocol=protocol, source=src, destination=dst))
                origins.append(RuleOrigin(index, peer_index))
    return tuple(out), tuple(origins)


def _with_ports(entity: EntityRule, ports: tuple[PortSpec, ...]) -> EntityRule:
    return EntityRule(nets=entity.nets, selector=entity.selector,
                      namespace_selector=entity.namespace_selector, ports=ports)


def _peer(peer: CNPPeer, nodes: Sequence[NodeAddresses]) -> EntityRule | None:
    if peer.namespaces is not None:
        return EntityRule(selector=K8S_POD, namespace_selector=peer.namespaces.to_selector())
    if peer.pods is not None:
        return EntityRule(selector=_pods(peer.pods.pod_selector),
                          namespace_selector=peer.pods.namespace_selector.to_selector())
    if peer.nodes is not None:
        nets = nodes_nets(peer.nodes, nodes)
        return EntityRule(nets=nets) if nets else None
    return EntityRule(nets=peer.networks) if peer.networks else None


def _port_groups(protocols: tuple[CNPPort, ...]
                 ) -> list[tuple[int | None, tuple[PortSpec, ...]]]:
    """(protocol, ports) per protocol, TCP, UDP, SCTP; [(None, ())] for "anything"."""
    if not protocols:
        return [(None, ())]
    groups: dict[str, list[PortSpec]] = {}
    named = [PortSpec(name=p.name) for p in protocols if p.name]
    for p in protocols:
        if not p.name:
            groups.setdefault(p.protocol, []).append(PortSpec(p.low, p.high))
    if named:
        for protocol in _NAMED_PORT_PROTOCOLS:
            groups.setdefault(protocol, []).extend(named)
    return [(PROTOCOL_NUMBERS[proto], tuple(groups[proto]))
            for proto in _NAMED_PORT_PROTOCOLS if proto in groups]


class ClusterPolicies:
    """Every CNP of a snapshot, compiled, reusing last pass's work (instance state)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, tuple[tuple[IPNetwork, ...], ...]],
                         tuple[ClusterNetworkPolicy, CompiledPolicy]] = {}

    def compiled(self, snapshot: Snapshot) -> list[CompiledPolicy]:
        cnps = snapshot.of(ClusterNetworkPolicy)
        if not cnps:
            self._memo = {}
            return []
        nodes: tuple[NodeAddresses, ...] | None = None
        memo: dict[tuple[int, tuple[tuple[IPNetwork, ...], ...]],
                   tuple[ClusterNetworkPolicy, CompiledPolicy]] = {}
        out = []
        for cnp in cnps:
            selectors = _node_selectors(cnp)
            if selectors and nodes is None:
                nodes = node_addresses(snapshot.nodes)
            resolved = tuple(nodes_nets(s, nodes or ()) for s in selectors)
            key = (id(cnp), resolved)
            got = self._memo.get(key)
            if got is None or got[0] is not cnp:
                got = (cnp, compile_policy(to_policy(cnp, nodes or ())))
            memo[key] = got
            out.append(got[1])
        self._memo = memo
        return out


def _node_selectors(cnp: ClusterNetworkPolicy) -> list[LabelSelector]:
    return [p.nodes for r in cnp.spec.egress for p in r.peers if p.nodes is not None]
