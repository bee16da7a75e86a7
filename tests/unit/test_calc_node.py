"""NodeCalculator: incremental answers equal fresh ones, whatever the update sequence.

The calculator keeps memos between passes (policy's program and rendered
chains, the services' shares). Hypothesis replays random sequences of store
updates (objects added, replaced by another version, deleted; unchanged objects
kept as the same Python objects, as the agent's cache keeps them) through one
long-lived calculator, and checks after every step that its DesiredState equals
a fresh calculator's for the same snapshot: routes, VXLAN links, the nftables
table (policy, services, natOutgoing, VXLAN) and BIRD's config. A second property
runs the same replay over issue 18's kinds (tiers, ClusterNetworkPolicy with a nodes
peer, IPReservation, all-interfaces host endpoints) and what they read, a smaller key
space in which their interactions come up within few examples.
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tabby.calc.node import DesiredState, NodeCalculator, NodeSettings, desired_state
from tabby.calc.vxlan import tunnel_mac
from tabby.marks import VXLAN_DEVICES
from tabby.model import IPAMBlock, Namespace, Node, Resource, WorkloadEndpoint, parse_manifest
from tabby.policy.synthetic import pod_endpoint
from tabby.snapshot import Snapshot
from tests.unit.test_calc_routes import block

NODE = "node-1"
SETTINGS = NodeSettings(NODE, mtu=1500, bgp=True)
Key = tuple[str, str, str]


def _docs(text: str) -> list[Resource]:
    return [parse_manifest(d) for d in yaml.safe_load_all(text) if d]


def _node(name: str, v4: str, v6: str | None = None, vtep: str | None = None,
          labels: dict[str, str] | None = None) -> Node:
    spec: dict[str, Any] = {"bgp": {"ipv4Address": v4, **({"ipv6Address": v6} if v6 else {})}}
    if vtep:
        spec |= {"ipv4VXLANTunnelAddr": vtep, "vxlanTunnelMACAddr": tunnel_mac(name, 4)}
    return Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                               "metadata": {"name": name, "labels": labels or {}},
                               "spec": spec})


def _pool(name: str, cidr: str, vxlan: str, nat: bool) -> Resource:
    return _docs(f"""
apiVersion: tabby.dev/v1
kind: IPPool
metadata: {{name: {name}}}
spec: {{cidr: "{cidr}", vxlanMode: {vxlan}, natOutgoing: {str(nat).lower()}}}
""")[0]


def _service(name: str, ip: str, kind: str, extra: str = "") -> Resource:
    node_port = ", nodePort: 30080" if kind == "NodePort" else ""
    return _docs(f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: {kind}
  clusterIP: {ip}
  ipFamilies: [IPv4]
  ports: [{{port: 80, targetPort: 8080, protocol: TCP{node_port}}}]
  {extra}
""")[0]


def _slice(service: str, endpoints: list[tuple[str, str, bool]]) -> Resource:
    return parse_manifest({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-a", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}
                      for ip, node, ready in endpoints]})


def _namespace(labels: dict[str, str]) -> Resource:
    return parse_manifest({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": "default", "labels": labels}})


KNP = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from:
    - {{podSelector: {{matchLabels: {{role: {role}}}}}}}
    - {{namespaceSelector: {{matchLabels: {{team: a}}}}}}
    ports: [{{port: {port}}}]
"""
CNP = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: db, namespace: default}}
spec:
  selector: app == 'db'
  order: {order}
  ingress:
  - action: {action}
    source: {{selector: role == 'client', nets: [{nets}]}}
  egress:
  - action: Allow
"""
GNP = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: deny-{name}}}
spec:
  selector: all()
  order: 5
  types: [Ingress]
  ingress:
  - action: {action}
    protocol: UDP
    destination: {{ports: [53]}}
"""
BGPCONF = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {{name: default}}
spec:
  asNumber: {asn}
  serviceClusterIPs: [{{cidr: {cidr}}}]
"""
BGPPEER = """
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {{name: tor}}
spec: {{peerIP: {ip}, asNumber: 64600}}
"""
TIER = """
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {{name: security}}
spec: {{order: {order}{default}}}
"""
TIERED = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: {name}}}
spec:
  tier: {tier}
  selector: app == 'web' || role == 'host'
  order: 1
  ingress:
  - {{action: {action}, protocol: TCP, source: {{selector: role == 'client'}},
     destination: {{ports: [80]}}}}
"""
KCNP = """
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: admin}}
spec:
  tier: {tier}
  priority: {priority}
  subject: {{namespaces: {{}}}}
  ingress:
  - {{action: Pass, from: [{{namespaces: {{matchLabels: {{team: a}}}}}}]}}
  egress:
  - {{action: {action}, to: [{{nodes: {{matchLabels: {{rack: {rack}}}}}}}]}}
  - {{action: Deny, to: [{{networks: ["203.0.113.0/24"]}}]}}
"""
RESERVATION = """
apiVersion: projectcalico.org/v3
kind: IPReservation
metadata: {{name: gw}}
spec: {{reservedCIDRs: [{cidrs}]}}
"""
HEP = """
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: {name}, labels: {{role: {role}}}}}
spec: {{node: node-1, interfaceName: "{iface}"{ips}}}
"""
HOST_GNP = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: host}}
spec:
  selector: role == 'host'
  {stage}
  ingress: [{{action: Deny, protocol: TCP, destination: {{ports: [81]}}}}, {{action: Allow}}]
"""


def _hep(name: str, role: str, iface: str = "*", ips: str = "") -> Resource:
    return _docs(HEP.format(name=name, role=role, iface=iface,
                            ips=f", expectedIPs: [{ips}]" if ips else ""))[0]


def _ep(i: int, node: str, labels: dict[str, str]) -> Resource:
    return pod_endpoint(f"default/pod-{i}", labels, node, (f"198.19.{i // 64}.{i % 64 + 1}/32",),
                        (("http", "TCP", 8080),))


# Each key of the store, with the versions it can take (deleting is one more choice).
# The objects are built once: an unchanged object stays the same Python object.
VARIANTS: dict[Key, list[Resource]] = {
    ("Node", "", "node-1"): [_node("node-1", "198.18.0.11/24", "fd7a:bb1e::11/64",
                                   "198.19.0.1"),
                             _node("node-1", "198.18.0.11/24", labels={"rack": "a"})],
    ("Node", "", "node-2"): [_node("node-2", "198.18.0.12/24", vtep="198.19.1.1"),
                             _node("node-2", "198.18.1.12/24", "fd7a:bb1e::12/64")],
    ("Node", "", "node-3"): [_node("node-3", "198.18.0.13/24", labels={"rack": "b"})],
    ("IPPool", "", "p4"): [_pool("p4", "198.19.0.0/16", "Never", True),
                           _pool("p4", "198.19.0.0/16", "Always", False),
                           _pool("p4", "198.19.0.0/16", "CrossSubnet", True)],
    ("IPPool", "", "p6"): [_pool("p6", "fd7a:bb1e:1::/48", "Never", True)],
    ("IPAMBlock", "", "b1"): [block("198.19.0.0/26", "node-1", {0: "node-1", 5: "node-1"}),
                              block("198.19.0.0/26", "node-1", {0: "node-1", 9: "node-2"})],
    ("IPAMBlock", "", "b2"): [block("198.19.1.0/26", "node-2", {0: "node-2"}),
                              block("198.19.1.0/26", "node-2", {0: "node-2", 3: "node-1"})],
    ("IPAMBlock", "", "b3"): [block("198.19.2.0/26", "node-3", {1: "node-3"})],
    ("Namespace", "", "default"): [_namespace({"team": "a"}), _namespace({"team": "b"})],
    ("WorkloadEndpoint", "default", "e1"): [_ep(1, NODE, {"app": "web"}),
                                            _ep(1, NODE, {"app": "db"})],
    ("WorkloadEndpoint", "default", "e2"): [_ep(2, NODE, {"role": "client"}),
                                            _ep(2, "node-2", {"role": "client"})],
    ("WorkloadEndpoint", "default", "e3"): [_ep(70, "node-2", {"app": "web"}),
                                            _ep(70, "node-2", {"role": "client"})],
    ("WorkloadEndpoint", "default", "e4"): [_ep(3, NODE, {"app": "db", "role": "client"})],
    ("NetworkPolicy", "default", "web"): [*_docs(KNP.format(role="client", port=80)),
                                          *_docs(KNP.format(role="other", port="http"))],
    ("CalicoNetworkPolicy", "default", "db"): [
        *_docs(CNP.format(order=10, action="Allow", nets="198.19.0.0/24")),
        *_docs(CNP.format(order=1, action="Deny", nets="198.19.1.0/24, 203.0.113.0/24"))],
    ("GlobalNetworkPolicy", "", "deny"): [*_docs(GNP.format(name="dns", action="Deny")),
                                          *_docs(GNP.format(name="dns", action="Allow"))],
    ("Service", "default", "web"): [
        _service("web", "198.18.128.10", "ClusterIP"),
        _service("web", "198.18.128.10", "NodePort", "externalTrafficPolicy: Local"),
        _service("web", "198.18.128.10", "ClusterIP",
                 "sessionAffinity: ClientIP\n  externalIPs: [203.0.113.10]")],
    ("EndpointSlice", "default", "web-a"): [
        _slice("web", [("198.19.0.2", NODE, True), ("198.19.1.5", "node-2", True)]),
        _slice("web", [("198.19.1.5", "node-2", True)]),
        _slice("web", [("198.19.0.2", NODE, False), ("198.19.1.6", "node-2", True)])],
    ("BGPConfiguration", "", "default"): [
        *_docs(BGPCONF.format(asn=64512, cidr="198.18.128.0/20")),
        *_docs(BGPCONF.format(asn=64513, cidr="198.18.144.0/20"))],
    ("BGPPeer", "", "tor"): [*_docs(BGPPEER.format(ip="198.18.0.1")),
                             *_docs(BGPPEER.format(ip="198.18.0.2"))],
    # Issue 18's kinds: a tier (order, default action), policies in it and in a tier with
    # no Tier object, ClusterNetworkPolicy (tiers, priority, a nodes peer on the Nodes'
    # labels), an IPReservation, all-interfaces host endpoints (two on one node: the
    # first by name wins) beside a named one, and host policy by stage.
    ("Tier", "", "security"): [*_docs(TIER.format(order=100, default="")),
                               *_docs(TIER.format(order=600, default=", defaultAction: Pass"))],
    ("GlobalNetworkPolicy", "", "security.guard"): [
        *_docs(TIERED.format(name="security.guard", tier="security", action="Deny")),
        *_docs(TIERED.format(name="security.guard", tier="security", action="Pass"))],
    ("GlobalNetworkPolicy", "", "guard"): [
        *_docs(TIERED.format(name="guard", tier="default", action="Allow")),
        *_docs(TIERED.format(name="platform.guard", tier="platform", action="Allow"))],
    ("ClusterNetworkPolicy", "", "admin"): [
        *_docs(KCNP.format(tier="Admin", priority=10, action="Deny", rack="a")),
        *_docs(KCNP.format(tier="Baseline", priority=10, action="Accept", rack="b")),
        *_docs(KCNP.format(tier="Admin", priority=3, action="Pass", rack="b"))],
    ("IPReservation", "", "gw"): [*_docs(RESERVATION.format(cidrs="198.19.0.1/32")),
                                  *_docs(RESERVATION.format(cidrs="198.19.0.0/30, fd7a::/120"))],
    ("HostEndpoint", "", "node-1-a"): [_hep("node-1-a", "host"),
                                       _hep("node-1-a", "other", ips="198.18.0.11")],
    ("HostEndpoint", "", "node-1-b"): [_hep("node-1-b", "host", ips="198.18.0.11")],
    ("HostEndpoint", "", "node-1-eth"): [_hep("node-1-eth", "host", iface="eth0"),
                                         _hep("node-1-eth", "host", iface="eth1")],
    ("GlobalNetworkPolicy", "", "host"): [
        *_docs(HOST_GNP.format(stage="applyOnForward: true\n  egress: [{action: Allow}]")),
        *_docs(HOST_GNP.format(stage="order: 3\n  egress: [{action: Deny}]")),
        *_docs(HOST_GNP.format(stage="preDNAT: true\n  applyOnForward: true\n"
                                     "  types: [Ingress]"))],
}
KEYS = sorted(VARIANTS)


def _snapshot(state: dict[Key, Resource]) -> Snapshot:
    objs = list(state.values())
    return Snapshot.build(
        nodes=[o for o in objs if isinstance(o, Node)],
        blocks=[o for o in objs if isinstance(o, IPAMBlock)],
        endpoints=[o for o in objs if isinstance(o, WorkloadEndpoint)],
        namespaces=[o for o in objs if isinstance(o, Namespace)],
        others=[o for o in objs if o.KIND.kind not in
                ("Node", "IPAMBlock", "WorkloadEndpoint", "Namespace")])


def _full_state() -> dict[Key, Resource]:
    return {key: variants[0] for key, variants in VARIANTS.items()}


def _differences(a: DesiredState, b: DesiredState) -> list[str]:
    return [name for name in ("routes", "links", "nft", "bird", "sysctls", "ipip_pools",
                              "problems") if getattr(a, name) != getattr(b, name)]


UPDATES = st.lists(st.tuples(st.sampled_from(KEYS), st.integers(0, 3)), min_size=1,
                   max_size=30)
# Issue 18's kinds and what they read (Nodes' labels and addresses, endpoints, the
# namespace): a smaller space, so that their interactions come up within few examples.
ISSUE18_KEYS = [k for k in KEYS if k[0] in (
    "Tier", "ClusterNetworkPolicy", "IPReservation", "HostEndpoint", "Node",
    "WorkloadEndpoint", "Namespace") or k in (("GlobalNetworkPolicy", "", "security.guard"),
                                               ("GlobalNetworkPolicy", "", "guard"),
                                               ("GlobalNetworkPolicy", "", "host"))]
ISSUE18_UPDATES = st.lists(st.tuples(st.sampled_from(ISSUE18_KEYS), st.integers(0, 3)),
                           min_size=1, max_size=20)


def _replay(start_full: bool, updates: list[tuple[Key, int]]) -> None:
    state = _full_state() if start_full else {}
    calculator = NodeCalculator(SETTINGS)
    calculator.calculate(_snapshot(state))
    for step, (key, choice) in enumerate(updates):
        variants = VARIANTS[key]
        if choice >= len(variants):
            state.pop(key, None)
        else:
            state[key] = variants[choice]
        snapshot = _snapshot(state)
        incremental = calculator.calculate(snapshot)
        fresh = desired_state(snapshot, SETTINGS)
        assert not _differences(incremental, fresh), (step, key, choice,
                                                     _differences(incremental, fresh))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start_full=st.booleans(), updates=UPDATES)
def test_incremental_equals_fresh_after_every_update(start_full: bool,
                                                     updates: list[tuple[Key, int]]) -> None:
    _replay(start_full, updates)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start_full=st.booleans(), updates=ISSUE18_UPDATES)
@example(start_full=True, updates=[(("Node", "", "node-1"), 1)])  # a nodes peer's labels
def test_incremental_equals_fresh_for_tiers_cnp_and_host_endpoints(
        start_full: bool, updates: list[tuple[Key, int]]) -> None:
    _replay(start_full, updates)


def test_the_full_state_exercises_every_feature() -> None:
    """The sequences above are worth something only if the state they vary reaches every
    part of the DesiredState: check the full state does."""
    desired = desired_state(_snapshot(_full_state()), SETTINGS)
    assert desired.problems == ()
    assert any(r.dev for r in desired.routes) and any(r.type == "blackhole"
                                                      for r in desired.routes)
    assert desired.nft is not None and desired.bird is not None
    chains = desired.nft.all_chains()
    assert any(name.startswith("pol-p") for name in chains)  # policy
    assert "svc-int" in chains and desired.nft.maps["svc-ips-v4"].elements  # services
    assert "natout-post" in chains  # natOutgoing
    assert [p for p in desired.bird.peers if p.source.startswith("BGPPeer")]  # explicit
    assert any("service" in o.why for o in desired.bird.origins)
    # issue 18: tiers, a ClusterNetworkPolicy's nodes peer, all-interfaces host endpoints
    assert any(name.startswith("pol-hi-") for name in chains)
    assert desired.nft.sets["pol-hep-ifaces"].elements == frozenset({'"eth0"'})
    racked = desired_state(_snapshot({**_full_state(), ("Node", "", "node-1"):
                                      VARIANTS[("Node", "", "node-1")][1]}), SETTINGS)
    assert racked.nft != desired.nft  # node-1 labelled rack a: the CNP's nodes peer has it
    vxlan = desired_state(_snapshot({**_full_state(), ("IPPool", "", "p4"):
                                     VARIANTS[("IPPool", "", "p4")][1]}), SETTINGS)
    assert [link.name for link in vxlan.links] == [VXLAN_DEVICES[4]]
    assert vxlan.nft is not None and "vxlan-peers-v4" in vxlan.nft.sets
