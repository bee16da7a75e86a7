"""``explain`` to a node's address: the node's all-interfaces host endpoint answers for it
(when no endpoint lists the address in expectedIPs), as the dataplane's dispatch does."""

from __future__ import annotations

import ipaddress

from tabby.model import Node
from tabby.policy.explain import explain, find_pod, host_addresses
from tabby.policy.program import build_program
from tabby.policy.synthetic import from_yaml, pod_endpoint, snapshot_of
from tabby.snapshot import Snapshot

WORLD = """
apiVersion: tabby.dev/v1
kind: Node
metadata: {name: node-1}
spec:
  bgp: {ipv4Address: 198.18.0.11/24, ipv6Address: "fd7a:bb1e::11/64"}
  addresses: [{address: 198.18.5.11}]
  ipv4VXLANTunnelAddr: 198.19.0.129
---
apiVersion: tabby.dev/v1
kind: Node
metadata: {name: node-2}
spec: {bgp: {ipv4Address: 198.18.0.12/24}}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-1-zz, labels: {role: late}}
spec: {node: node-1, interfaceName: "*"}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-1-all, labels: {role: host}}
spec: {node: node-1, interfaceName: "*"}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: host-web}
spec:
  selector: role == 'host'
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [8080]}}]
  egress: [{action: Allow}]
"""


def world() -> Snapshot:
    objs = from_yaml(WORLD)
    pods = [pod_endpoint("default/a", {"app": "a"}, "node-2", ("198.19.1.1/32",)),
            pod_endpoint("default/b", {"app": "b"}, "node-1", ("198.19.0.1/32",))]
    snap = snapshot_of([*objs, *pods])
    return Snapshot.build(nodes=[o for o in objs if isinstance(o, Node)],
                          endpoints=snap.endpoints, others=snap.others)


def ask(snapshot: Snapshot, pod: str, address: str, port: int) -> dict[str, object]:
    program = build_program(snapshot, None)
    result = explain(program, find_pod(program, "default", pod), ipaddress.ip_address(address),
                     6, port, hosts=host_addresses(snapshot.nodes))
    return result.to_dict()["ingress"]  # type: ignore[no-any-return]


def test_host_addresses_are_every_address_a_node_has() -> None:
    hosts = host_addresses(world().nodes)
    assert {str(a): n for a, n in hosts.items()} == {
        "198.18.0.11": "node-1", "fd7a:bb1e::11": "node-1", "198.18.5.11": "node-1",
        "198.19.0.129": "node-1", "198.18.0.12": "node-2"}


def test_a_node_address_is_its_all_interfaces_endpoint() -> None:
    snapshot = world()
    for address in ("198.18.0.11", "198.18.5.11", "198.19.0.129"):
        allowed = ask(snapshot, "a", address, 8080)
        assert (allowed["endpoint"], allowed["verdict"], allowed["reason"]) == \
            ("hostendpoint/node-1-all", "allow", "rule"), address  # the first by name
        denied = ask(snapshot, "a", address, 9090)
        assert (denied["endpoint"], denied["verdict"], denied["reason"]) == \
            ("hostendpoint/node-1-all", "deny", "default-deny"), address


def test_a_node_without_one_and_an_unknown_address_are_not_endpoints() -> None:
    snapshot = world()
    for address in ("198.18.0.12", "198.18.0.99"):
        got = ask(snapshot, "b", address, 9090)
        assert (got["endpoint"], got["reason"]) == (None, "not-an-endpoint"), address
