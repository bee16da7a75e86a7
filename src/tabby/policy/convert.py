"""Every policy kind as one value: ``Policy`` (Calico-shaped rules, with where they came from).

tabby's ``NetworkPolicy`` and ``GlobalNetworkPolicy`` pass through. A
Kubernetes NetworkPolicy is converted the way Calico converts it:

- tier ``default``, order 1000; it applies to pods (``projectcalico.org/orchestrator == 'k8s'``)
  of its namespace matching ``podSelector``;
- each rule becomes one Calico rule per peer (peers OR) and per protocol of its
  ports (ports of one protocol stay together, by number, range or name);
  no peers = any address, no ports = any protocol and port;
- a peer's ``podSelector`` selects pods of the policy's namespace, with a
  ``namespaceSelector`` pods of the matching namespaces (both = AND); an
  ``ipBlock`` is ``nets`` with ``except`` as ``notNets``.

``RuleOrigin`` remembers which manifest rule (and peer) a converted rule comes
from, so ``explain`` names the rule the user wrote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tabby.model import GlobalNetworkPolicy, K8sNetworkPolicy, NetworkPolicy, Resource
from tabby.model.k8spolicy import K8sPort, K8sRule, Peer
from tabby.model.policy import PolicySpec
from tabby.model.policyrules import PROTOCOL_NUMBERS, EntityRule, PortSpec, Rule
from tabby.policy.index import ORCHESTRATOR

K8S_ORDER = 1000.0
K8S_POD = f"{ORCHESTRATOR} == 'k8s'"


@dataclass(frozen=True, slots=True)
class PolicyRef:
    kind: str  # NetworkPolicy | GlobalNetworkPolicy
    api_version: str  # networking.k8s.io/v1 | tabby.dev/v1
    namespace: str
    name: str

    @property
    def key(self) -> str:
        """Unique among every policy: ``knp/ns/name``, ``np/ns/name``, ``gnp/name``."""
        if self.kind == "GlobalNetworkPolicy":
            return f"gnp/{self.name}"
        prefix = "knp" if self.api_version.startswith("networking.k8s.io") else "np"
        return f"{prefix}/{self.namespace}/{self.name}"

    @property
    def display(self) -> str:
        group = self.api_version.partition("/")[0]
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind}.{group} {where}"

    def to_dict(self) -> dict[str, str]:
        out = {"kind": self.kind, "apiVersion": self.api_version, "name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        return out


@dataclass(frozen=True, slots=True)
class RuleOrigin:
    index: int  # the rule's position in the manifest's ingress/egress list
    peer: int | None = None  # Kubernetes: which from/to entry


@dataclass(frozen=True, slots=True)
class Policy:
    ref: PolicyRef
    spec: PolicySpec
    ingress_origins: tuple[RuleOrigin, ...] = ()
    egress_origins: tuple[RuleOrigin, ...] = ()

    @property
    def namespace(self) -> str:
        return self.ref.namespace

    @property
    def tier(self) -> str:
        return self.spec.tier

    @property
    def sort_key(self) -> tuple[float, str]:
        """Calico's order within a tier: lower ``order`` first, no order last, then by
        key (tiers come first: ``tabby.policy.tiers``)."""
        order = self.spec.order if self.spec.order is not None else math.inf
        return (order, self.ref.key)


def from_resource(obj: Resource) -> Policy | None:
    if isinstance(obj, K8sNetworkPolicy):
        return from_k8s(obj)
    if isinstance(obj, NetworkPolicy | GlobalNetworkPolicy):
        ref = PolicyRef(obj.KIND.kind, obj.KIND.api_version, obj.meta.namespace, obj.meta.name)
        return Policy(ref, obj.spec,
                      tuple(RuleOrigin(i) for i in range(len(obj.spec.ingress))),
                      tuple(RuleOrigin(i) for i in range(len(obj.spec.egress))))
    return None


def from_k8s(np: K8sNetworkPolicy) -> Policy:
    s = np.spec
    ingress, in_origins = _rules(s.ingress, ingress=True)
    egress, out_origins = _rules(s.egress, ingress=False)
    pods = s.pod_selector.to_selector()
    selector = K8S_POD if pods == "all()" else f"{K8S_POD} && ({pods})"
    spec = PolicySpec(order=K8S_ORDER, selector=selector, types=s.policy_types,
                      ingress=ingress if "Ingress" in s.policy_types else (),
                      egress=egress if "Egress" in s.policy_types else ())
    ref = PolicyRef("NetworkPolicy", np.KIND.api_version, np.meta.namespace, np.meta.name)
    return Policy(ref, spec, in_origins, out_origins)


def _rules(rules: tuple[K8sRule, ...], *, ingress: bool
           ) -> tuple[tuple[Rule, ...], tuple[RuleOrigin, ...]]:
    out: list[Rule] = []
    origins: list[RuleOrigin] = []
    for index, rule in enumerate(rules):
        peers: list[tuple[int | None, EntityRule]] = (
            [(i, _peer(p)) for i, p in enumerate(rule.peers)] if rule.peers
            else [(None, EntityRule())])
        groups = _port_groups(rule.ports)
        for peer_index, entity in peers:
            for protocol, ports in groups:
                # The peer is the far end; ports are always the destination's.
                if ingress:
                    src, dst = entity, EntityRule(ports=ports)
                else:
                    src, dst = EntityRule(), _with_ports(entity, ports)
                out.append(Rule(action="Allow", protocol=protocol, source=src, destination=dst))
                origins.append(RuleOrigin(index, peer_index))
    return tuple(out), tuple(origins)


def _with_ports(entity: EntityRule, ports: tuple[PortSpec, ...]) -> EntityRule:
    return EntityRule(nets=entity.nets, not_nets=entity.not_nets, selector=entity.selector,
                      namespace_selector=entity.namespace_selector, ports=ports)


def _peer(peer: Peer) -> EntityRule:
    if peer.ip_block is not None:
        return EntityRule(nets=(peer.ip_block.cidr,), not_nets=peer.ip_block.except_)
    pods = peer.pod_selector.to_selector() if peer.pod_selector is not None else "all()"
    selector = K8S_POD if pods == "all()" else f"{K8S_POD} && ({pods})"
    ns = peer.namespace_selector.to_selector() if peer.namespace_selector is not None else ""
    return EntityRule(selector=selector, namespace_selector=ns)


def _port_groups(ports: tuple[K8sPort, ...]
                 ) -> list[tuple[int | None, tuple[PortSpec, ...]]]:
    """(protocol, ports) per protocol in first-seen order; [(None, ())] for "anything"."""
    if not ports:
        return [(None, ())]
    groups: dict[int, list[PortSpec]] = {}
    whole: set[int] = set()
    for p in ports:
        number = PROTOCOL_NUMBERS[p.protocol]
        groups.setdefault(number, [])
        if p.port is None:
            whole.add(number)
        elif isinstance(p.port, str):
            groups[number].append(PortSpec(name=p.port))
        else:
            groups[number].append(PortSpec(p.port, p.end_port or p.port))
    # A port-less entry opens the whole protocol, whatever else is listed.
    return [(proto, () if proto in whole else tuple(specs)) for proto, specs in groups.items()]
