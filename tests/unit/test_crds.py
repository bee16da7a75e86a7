"""tabby's CRDs against the model: no drift between the schema, the shipped file and the code.

- manifests/crds.yaml is what ``python -m tabby.kube.crds`` prints (``make crds``);
- every tabby.dev example (examples/, tests/golden/) and a fully-populated object of every
  kind validates against its CRD schema after ``to_manifest(from_manifest(doc))``;
- every field path a fully-populated object emits is in the schema, and every schema path is
  one the model emits or accepts: a field added on one side only fails here.

``FULL`` (every optional field set) and ``ACCEPTED`` (fields the model reads but does not keep)
are shared with tests/netns/test_kube_crds.py, which sends them to a real API server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tabby.errors import ConfigError, ValidationError
from tabby.kube import crds
from tabby.model import all_kinds, felixfields, kind_for_manifest
from tabby.model.base import TABBY_GROUP, Resource
from tabby.model.schema import (
    Schema,
    example,
    field_paths,
    preserved_paths,
    schema_paths,
    validate,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifests" / "crds.yaml"
API = "tabby.dev/v1"


def doc(kind: str, name: str, spec: dict[str, Any], namespace: str = "",
        **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"tabby.dev/test": "crds"}}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec, **extra}


def bgp_filter_rule(version: int) -> dict[str, Any]:
    return {"action": "Accept", "matchOperator": "In",
            "cidr": "198.19.0.0/16" if version == 4 else "fd7a:bb1e:1::/48",
            "prefixLength": {"min": 26, "max": 32 if version == 4 else 122},
            "source": "RemotePeers", "interface": "eth*", "peerType": "iBGP",
            "communities": {"values": ["65000:100"]}, "asPathPrefix": [65000],
            "priority": 512, "operations": [
                {"addCommunity": {"value": "65000:1:2"}},
                {"prependASPath": {"prefix": [64512]}},
                {"setPriority": {"value": 100}}]}


ENTITY = {
    "nets": ["198.51.100.0/24"], "notNets": ["198.51.100.128/25"],
    "selector": "app == 'web'", "notSelector": "role == 'canary'",
    "namespaceSelector": "team == 'shop'", "ports": [80, "8000:8080", "http"],
    "notPorts": [81], "serviceAccounts": {"names": ["api"], "selector": "tier == 'a'"},
}
RULES_IN = [
    {"action": "Allow", "ipVersion": 4, "protocol": "TCP", "notProtocol": "UDP",
     "source": ENTITY, "destination": {**ENTITY, "notPorts": ["9000:9100"]}},
    {"action": "Log", "protocol": "ICMP", "icmp": {"type": 8, "code": 0},
     "notICMP": {"type": 3, "code": 1}},
    {"action": "Pass", "protocol": 17, "notProtocol": 200,
     "destination": {"ports": ["53"]}},
]
RULES_OUT = [
    {"action": "Deny", "ipVersion": 6, "protocol": "sctp",
     "destination": {"nets": ["fd7a:bb1e::/64"], "ports": [3868]}},
    {"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128}},
]
RULES = RULES_IN + RULES_OUT
POLICY = {"order": 10.5, "selector": "app == 'web'", "serviceAccountSelector": "all()",
          "types": ["Ingress", "Egress"], "ingress": RULES, "egress": RULES}

# Per kind: objects with every field the model emits set (some fields exclude each other,
# hence several objects per kind).
FULL: dict[str, list[dict[str, Any]]] = {
    "IPPool": [
        doc("IPPool", "pool-v4", {
            "cidr": "198.19.0.0/16", "blockSize": 28, "vxlanMode": "CrossSubnet",
            "ipipMode": "Never", "natOutgoing": True, "disabled": True,
            "disableBGPExport": True, "nodeSelector": "rack == 'a'",
            "allowedUses": ["Workload", "Tunnel"]}),
        doc("IPPool", "pool-lb", {"cidr": "fd7a:bb1e:5::/112", "blockSize": 120,
                                  "allowedUses": ["LoadBalancer"]}),
    ],
    "BGPConfiguration": [
        doc("BGPConfiguration", "default", {
            "asNumber": 4200000001, "nodeToNodeMeshEnabled": False, "listenPort": 1790,
            "logSeverityScreen": "Debug",
            "serviceClusterIPs": [{"cidr": "198.18.128.0/20"}],
            "serviceExternalIPs": [{"cidr": "203.0.113.0/24"}],
            "serviceLoadBalancerIPs": [{"cidr": "fd7a:bb1e:6::/112"}],
            "communities": [{"name": "gold", "value": "65001:100"},
                            {"name": "big", "value": "65001:1:2"}],
            "prefixAdvertisements": [{"cidr": "198.19.0.0/16",
                                      "communities": ["gold", "65001:7"]}],
            "nodeMeshPassword": {"secretKeyRef": {"name": "bgp", "key": "mesh"}},
            "nodeMeshMaxRestartTime": "90s",
            "nodeToNodeMeshBFD": {"enabled": True, "minRxInterval": "50ms",
                                  "minTxInterval": "200ms", "multiplier": 5}}),
        doc("BGPConfiguration", "node.node-1", {
            "listenPort": 179, "logSeverityScreen": "Warning",
            "communities": [{"name": "n1", "value": "65001:1"}],
            "prefixAdvertisements": [{"cidr": "fd7a:bb1e::/64", "communities": ["n1"]}]}),
    ],
    "BGPFilter": [doc("BGPFilter", "only-pods", {
        f"{d}V{v}": [bgp_filter_rule(v), {"action": "Reject"}]
        for d in ("import", "export") for v in (4, 6)})],
    "BGPPeer": [
        doc("BGPPeer", "tor", {
            "node": "node-1", "peerIP": "[fd7a:bb1e::1]:1790", "asNumber": 65000,
            "password": {"value": "s3cret"}, "keepOriginalNextHop": True,
            "sourceAddress": "None", "maxRestartTime": "2m", "numAllowedLocalASNumbers": 2,
            "filters": ["only-pods"], "bfd": {"enabled": False, "minRxInterval": "100ms",
                                              "minTxInterval": "100ms", "multiplier": 3}}),
        doc("BGPPeer", "reflectors", {
            "nodeSelector": "!has(rr)", "peerSelector": "has(rr)",
            "password": {"secretKeyRef": {"name": "bgp", "key": "rr"}}}),
    ],
    "FelixConfiguration": [
        doc("FelixConfiguration", "default", {
            "failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22,
                                          "net": "198.18.0.0/24"}, {"port": 68}],
            "failsafeOutboundHostPorts": [{"protocol": "UDP", "port": 53,
                                           "net": "fd7a:bb1e::/64"}],
            "natOutgoingExclusions": "IPPoolsAndHostIPs",
            "logSeverityScreen": "Info", "bpfEnabled": False, "healthPort": 9099,
            "routeTableRange": {"min": 1, "max": 250}, "interfaceExclude": "kube-ipvs0"}),
        # every other Calico Felix field tabby accepts (and ignores), each set
        doc("FelixConfiguration", "node.node-2", {
            name: example(schema) for name, schema in felixfields.accepted_schemas().items()}),
    ],
    "WorkloadEndpoint": [
        doc("WorkloadEndpoint", "node--1-k8s-web-eth0", {
            "orchestrator": "k8s", "node": "node-1", "workload": "web", "pod": "web",
            "endpoint": "eth0", "containerID": "abc123", "interfaceName": "tab1234567890",
            "mac": "66:0b:8d:2f:1e:01", "ipNetworks": ["198.19.0.5/32", "fd7a:bb1e::5/128"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80},
                      {"name": "", "protocol": "UDP", "port": 53}],
            "serviceAccountName": "web", "namespaceLabels": {"team": "shop"}},
            namespace="shop"),
    ],
    "HostEndpoint": [
        doc("HostEndpoint", "node-1-eth0", {
            "node": "node-1", "interfaceName": "eth0",
            "expectedIPs": ["198.18.0.11", "fd7a:bb1e::11"],
            "profiles": ["projectcalico-default-allow"],
            "ports": [{"name": "ssh", "port": 22, "protocol": "TCP"},
                      {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    ],
    "IPAMBlock": [
        doc("IPAMBlock", "198-19-0-0-30", {
            "cidr": "198.19.0.0/30", "affinity": "host:node-1",
            "allocations": [0, None, 1, None], "unallocated": [3, 1],
            "attributes": [{"handle_id": "k8s-pod-network.abc.eth0",
                            "secondary": {"node": "node-1", "pod": "web"}},
                           {"handle_id": "vxlan-tunnel-addr-node-1", "secondary": {}}],
            "strictAffinity": True, "deleted": False}),
        doc("IPAMBlock", "198-19-0-4-30", {
            "cidr": "198.19.0.4/30", "affinity": None, "allocations": [None] * 4,
            "unallocated": [0, 1, 2, 3], "attributes": []}),
    ],
    "BlockAffinity": [
        doc("BlockAffinity", "node-1-198-19-0-0-30",
            {"node": "node-1", "cidr": "198.19.0.0/30", "state": "pendingDeletion"}),
    ],
    "IPAMHandle": [
        doc("IPAMHandle", "k8s-pod-network.abc.eth0", {
            "handleID": "k8s-pod-network.abc.eth0",
            "block": {"198.19.0.0/30": 2, "fd7a:bb1e::/122": 1}}),
    ],
    "IPAMConfiguration": [
        doc("IPAMConfiguration", "default", {"strictAffinity": True,
                                             "autoAllocateBlocks": False,
                                             "maxBlocksPerHost": 4}),
    ],
    "NetworkSet": [
        doc("NetworkSet", "partners", {"nets": ["203.0.113.0/24", "fd7a:bb1e:9::/48"]},
            namespace="shop"),
    ],
    "GlobalNetworkSet": [
        doc("GlobalNetworkSet", "blocked", {"nets": ["192.0.2.1/32"]}),
    ],
    "IPReservation": [
        doc("IPReservation", "gateways", {"reservedCIDRs": ["198.19.0.1/32",
                                                            "fd7a:bb1e::/126"]}),
    ],
    "Node": [
        doc("Node", "node-1", {
            "bgp": {"ipv4Address": "198.18.0.11/24", "ipv6Address": "fd7a:bb1e::11/64",
                    "asNumber": 65001, "routeReflectorClusterID": "224.0.0.1"},
            "addresses": [{"address": "198.18.0.11", "type": "InternalIP"},
                          {"address": "203.0.113.11", "type": "ExternalIP"}],
            "ipv4VXLANTunnelAddr": "198.19.0.1", "vxlanTunnelMACAddr": "66:0b:8d:2f:1e:01",
            "ipv6VXLANTunnelAddr": "fd7a:bb1e::1", "vxlanTunnelMACAddrV6": "66:0b:8d:2f:1e:02"}),
    ],
    "NetworkPolicy": [
        doc("NetworkPolicy", "web", POLICY, namespace="shop"),
    ],
    "Tier": [doc("Tier", "security", {"order": 100, "defaultAction": "Pass"})],
    "GlobalNetworkPolicy": [
        doc("GlobalNetworkPolicy", "open", {"selector": "all()", "types": []}),
        doc("GlobalNetworkPolicy", "untracked", {
            **POLICY, "order": 100, "namespaceSelector": "team == 'shop'",
            "doNotTrack": True, "applyOnForward": True}),
        doc("GlobalNetworkPolicy", "pre-dnat", {
            "selector": "has(host)", "types": ["Ingress"], "ingress": RULES_IN[:1],
            "preDNAT": True, "applyOnForward": True}),
    ],
    # staged policies (tabby.model.stagedpolicy)
    "StagedNetworkPolicy": [
        doc("StagedNetworkPolicy", "web", {"stagedAction": "Set", **POLICY}, namespace="shop"),
        doc("StagedNetworkPolicy", "gone", {"stagedAction": "Delete"}, namespace="shop"),
    ],
    "StagedGlobalNetworkPolicy": [
        doc("StagedGlobalNetworkPolicy", "untracked", {
            "stagedAction": "Set", **POLICY, "order": 100,
            "namespaceSelector": "team == 'shop'", "doNotTrack": True,
            "applyOnForward": True}),
        doc("StagedGlobalNetworkPolicy", "pre-dnat", {
            "stagedAction": "Set", "selector": "has(host)", "types": ["Ingress"],
            "ingress": RULES_IN[:1], "preDNAT": True, "applyOnForward": True}),
    ],
    "StagedKubernetesNetworkPolicy": [
        doc("StagedKubernetesNetworkPolicy", "web", {
            "stagedAction": "Set",
            "podSelector": {"matchLabels": {"app": "web"}, "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"},
                                                   "matchExpressions": [
                                    {"key": "k", "operator": "In", "values": ["v"]}]},
                                   "namespaceSelector": {"matchLabels": {"team": "x"},
                                                         "matchExpressions": [
                                    {"key": "k", "operator": "In", "values": ["v"]}]}},
                                  {"ipBlock": {"cidr": "198.51.100.0/24",
                                               "except": ["198.51.100.0/28"]}}],
                         "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}, "matchExpressions": [
                {"key": "x", "operator": "NotIn", "values": ["y"]}]},
                                "namespaceSelector": {"matchLabels": {"team": "x"},
                                                      "matchExpressions": [
                                    {"key": "env", "operator": "In", "values": ["p"]}]}},
                               {"ipBlock": {"cidr": "fd7a:bb1e::/64",
                                            "except": ["fd7a:bb1e::/80"]}}],
                        "ports": [{"protocol": "UDP", "port": 53, "endPort": 60}]}]},
            namespace="shop"),
    ],
}

CALICO_RULE = {"action": "Allow", "metadata": {"annotations": {"why": "test"}}}
CALICO_POLICY = {"tier": "default", "performanceHints": ["AssumeNeededOnEveryNode"],
                 "ingress": [CALICO_RULE], "egress": [CALICO_RULE]}

# Fields the model reads (Calico writes them) but does not keep: the API must accept them.
ACCEPTED: dict[str, list[dict[str, Any]]] = {
    "IPPool": [doc("IPPool", "calico-pool", {"cidr": "198.20.0.0/16",
                                             "assignmentMode": "Automatic"},
                   status={"conditions": []})],
    "BGPConfiguration": [
        doc("BGPConfiguration", "default", {"nodeMeshPassword": {
            "secretKeyRef": {"name": "bgp", "key": "mesh", "optional": True}}}),
        doc("BGPConfiguration", "default", {"nodeMeshPassword": {"value": "inline"}}),
    ],
    "BGPPeer": [doc("BGPPeer", "tor", {"peerIP": "198.18.0.1", "asNumber": 65000, "password": {
        "secretKeyRef": {"name": "bgp", "key": "tor", "optional": False}}})],
    "FelixConfiguration": [doc("FelixConfiguration", "node.node-1", {},
                               status={"anything": 1})],
    "WorkloadEndpoint": [doc("WorkloadEndpoint", "node--1-k8s-db-eth0", {
        "node": "node-1", "profiles": ["kns.shop"],
        "ipNATs": [{"internalIP": "198.19.0.6", "externalIP": "203.0.113.6"}]},
        namespace="shop")],
    "BlockAffinity": [doc("BlockAffinity", "node-2-198-19-0-4-30", {
        "node": "node-2", "cidr": "198.19.0.4/30", "deleted": "false"})],
    "IPAMHandle": [doc("IPAMHandle", "h2", {"handleID": "h2", "deleted": False})],
    "NetworkSet": [doc("NetworkSet", "domains", {"allowedEgressDomains": ["example.org"]},
                       namespace="shop")],
    "GlobalNetworkSet": [doc("GlobalNetworkSet", "domains",
                             {"allowedEgressDomains": ["*.example.org"]})],
    "Node": [doc("Node", "node-2", {"orchRefs": [{"nodeName": "node-2",
                                                  "orchestrator": "k8s"}]},
                 status={"podCIDRs": []})],
    "NetworkPolicy": [doc("NetworkPolicy", "calico", CALICO_POLICY, namespace="shop")],
    "GlobalNetworkPolicy": [doc("GlobalNetworkPolicy", "calico", CALICO_POLICY)],
    "StagedNetworkPolicy": [doc("StagedNetworkPolicy", "calico", CALICO_POLICY,
                                namespace="shop")],
    "StagedGlobalNetworkPolicy": [doc("StagedGlobalNetworkPolicy", "calico", CALICO_POLICY)],
    "Tier": [doc("Tier", "default", {"order": 1000000, "defaultAction": "Deny"},
                 status={"conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                                         "message": "", "lastTransitionTime":
                                         "2026-01-01T00:00:00Z"}]})],
}


def tabby_kinds() -> dict[str, type[Resource]]:
    return {cls.KIND.kind: cls for cls in all_kinds() if cls.KIND.group == TABBY_GROUP}


def example_docs() -> list[tuple[str, dict[str, Any]]]:
    """Every tabby.dev object in examples/ and tests/golden/, with where it came from."""
    out = []
    for base in (ROOT / "examples", ROOT / "tests" / "golden"):
        for path in sorted(base.rglob("*.yaml")):
            for i, item in enumerate(yaml.safe_load_all(path.read_text())):
                if not isinstance(item, dict) or "kind" not in item:
                    continue
                try:
                    cls = kind_for_manifest(item)
                except ValidationError:
                    continue
                if cls.KIND.group == TABBY_GROUP:
                    out.append((f"{path.relative_to(ROOT)}#{i}", item))
    return out


def round_trip(item: dict[str, Any]) -> dict[str, Any]:
    return kind_for_manifest(item).from_manifest(item).to_manifest()


def schema_of(kind: str) -> Schema:
    return crds.openapi_schema(tabby_kinds()[kind])


def problems(kind: str, manifest: dict[str, Any]) -> list[str]:
    return [str(e) for e in validate(schema_of(kind), manifest)]


# -- the shipped file -------------------------------------------------------------------------

def test_manifest_file_is_generated_from_the_model() -> None:
    assert MANIFEST.exists(), "manifests/crds.yaml is missing: run `make crds`"
    assert MANIFEST.read_text() == crds.render(), (
        "manifests/crds.yaml differs from the model's CRDs: run `make crds` and commit it")


def test_one_crd_per_tabby_kind_sorted_by_name() -> None:
    docs = crds.crds()
    names = [d["metadata"]["name"] for d in docs]
    assert names == sorted(names)
    assert set(names) == {cls.KIND.resource for cls in tabby_kinds().values()} | set(
        crds.UPSTREAM)  # ClusterNetworkPolicy: tests/unit/test_cnp_model.py
    assert list(yaml.safe_load_all(MANIFEST.read_text())) == docs


@pytest.mark.parametrize("kind", sorted(tabby_kinds()))
def test_crd_names_scope_and_version(kind: str) -> None:
    cls = tabby_kinds()[kind]
    spec = crds.crd(cls)["spec"]
    assert spec["group"] == "tabby.dev"
    assert spec["scope"] == ("Namespaced" if cls.KIND.namespaced else "Cluster")
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        kind, cls.KIND.plural, kind.lower())
    short = names.get("shortNames", [])
    assert not set(short) & crds.KUBERNETES_SHORT_NAMES
    assert set(short) == set(cls.KIND.short_names) - crds.KUBERNETES_SHORT_NAMES
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    has_status = "status" in version["schema"]["openAPIV3Schema"]["properties"]
    assert ("subresources" in version) == has_status


def test_colliding_short_names_are_dropped() -> None:
    by_name = {d["spec"]["names"]["kind"]: d["spec"]["names"] for d in crds.crds()}
    assert "shortNames" not in by_name["Node"]  # "no" is Kubernetes' nodes
    assert by_name["NetworkPolicy"]["shortNames"] == ["tnp"]  # "cnp" is ClusterNetworkPolicy's
    assert by_name["IPPool"]["shortNames"] == ["ippool", "pool", "pools"]


def test_schemas_are_structural() -> None:
    """Every node has a type (or is int-or-string / free-form); no properties with
    additionalProperties; required names are properties."""
    def walk(schema: Schema, path: str) -> list[str]:
        bad = []
        if "type" not in schema and not (schema.get("x-kubernetes-int-or-string")
                                         or schema.get("x-kubernetes-preserve-unknown-fields")):
            bad.append(f"{path}: no type")
        if "properties" in schema and "additionalProperties" in schema:
            bad.append(f"{path}: properties and additionalProperties")
        bad += [f"{path}.{r}: required but not a property"
                for r in schema.get("required", ()) if r not in schema.get("properties", {})]
        for name, sub in schema.get("properties", {}).items():
            bad += walk(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                bad += walk(schema[key], f"{path}[{key}]")
        return bad

    for kind in tabby_kinds():
        assert walk(schema_of(kind), kind) == []


def test_a_kind_without_schema_is_refused() -> None:
    from tabby.model import Pod
    with pytest.raises(ConfigError, match="Pod"):
        crds.crd(Pod)


# -- objects against the schemas --------------------------------------------------------------

def test_every_kind_has_full_examples() -> None:
    assert set(FULL) == set(tabby_kinds()), "add a fully-populated object for the new kind"


def test_repository_examples_validate_after_round_trip() -> None:
    found = example_docs()
    assert len(found) >= 10, "expected tabby.dev objects in tests/golden"
    for where, item in found:
        manifest = round_trip(item)
        assert problems(manifest["kind"], manifest) == [], where


@pytest.mark.parametrize("kind", sorted(FULL))
def test_full_objects_validate_after_round_trip(kind: str) -> None:
    for item in FULL[kind]:
        assert problems(kind, item) == [], "the input itself"
        manifest = round_trip(item)
        assert problems(kind, manifest) == [], manifest["metadata"]["name"]


@pytest.mark.parametrize("kind", sorted(ACCEPTED))
def test_calico_fields_the_model_accepts_are_in_the_schema(kind: str) -> None:
    for item in ACCEPTED[kind]:
        kind_for_manifest(item).from_manifest(item)  # the model takes it...
        assert problems(kind, item) == []  # ...and so does the API server


def emitted_paths(kind: str) -> set[str]:
    schema = schema_of(kind)
    maps = {p[: -len(".{}")] for p in schema_paths(schema) if p.endswith(".{}")}
    out: set[str] = set()
    for item in FULL[kind]:
        out |= field_paths(round_trip(item), maps=maps)
    return {p for p in out if p.partition(".")[0] not in ("apiVersion", "kind", "metadata")}


@pytest.mark.parametrize("kind", sorted(FULL))
def test_every_emitted_field_is_in_the_schema(kind: str) -> None:
    """What catches drift: a field added to body() but not to SCHEMA."""
    schema = schema_of(kind)
    known = schema_paths(schema)
    free = preserved_paths(schema)
    missing = sorted(p for p in emitted_paths(kind) if p not in known
                     and not any(p.startswith(f"{f}.") for f in free))
    assert missing == [], f"{kind}.SCHEMA lacks {missing}: the API server would prune them"


@pytest.mark.parametrize("kind", sorted(FULL))
def test_every_schema_field_is_emitted_or_accepted(kind: str) -> None:
    """The other way: a field in SCHEMA that the model neither writes nor reads."""
    schema = schema_of(kind)
    maps = {p[: -len(".{}")] for p in schema_paths(schema) if p.endswith(".{}")}
    seen = emitted_paths(kind)
    for item in ACCEPTED.get(kind, []):
        seen |= field_paths(item, maps=maps)
    unused = sorted(p for p in schema_paths(schema) if p not in seen
                    and p.partition(".")[0] not in ("apiVersion", "kind", "metadata"))
    assert unused == [], f"{kind}: schema fields no example sets: {unused}"


# -- the checker refuses what the API server refuses ------------------------------------------

@pytest.mark.parametrize(("kind", "spec", "path"), [
    ("IPPool", {"cidr": "198.19.0.0/16", "blockSize": "x"}, "spec.blockSize"),
    ("IPPool", {"cidr": "198.19.0.0/16", "blocksize": 26}, "spec.blocksize"),
    ("IPPool", {"blockSize": 26}, "spec.cidr"),
    ("IPPool", {"cidr": "198.19.0.0/16", "vxlanMode": "Sometimes"}, "spec.vxlanMode"),
    ("GlobalNetworkPolicy", {"ingress": [{"action": "Maybe"}]}, "spec.ingress[0].action"),
    ("GlobalNetworkPolicy", {"egress": [{"action": "Allow", "protocol": "QUIC"}]},
     "spec.egress[0].protocol"),
    ("NetworkPolicy", {"ingress": [{"action": "Allow", "source": {"ports": [True]}}]},
     "spec.ingress[0].source.ports[0]"),
    ("NetworkPolicy", {"doNotTrack": True}, "spec.doNotTrack"),
    ("BGPPeer", {"peerIP": "198.18.0.1", "asNumber": 4294967296}, "spec.asNumber"),
    ("IPAMBlock", {"cidr": "198.19.0.0/30", "allocations": ["x"]}, "spec.allocations[0]"),
    ("IPAMHandle", {"handleID": "h", "block": {"198.19.0.0/30": "two"}},
     "spec.block.198.19.0.0/30"),
    ("FelixConfiguration", {"failsafeInboundHostPorts": [{"port": "ssh"}]},
     "spec.failsafeInboundHostPorts[0].port"),
    ("FelixConfiguration", {"natOutgoingExclusions": "Everything"},
     "spec.natOutgoingExclusions"),
])
def test_invalid_objects_are_refused(kind: str, spec: dict[str, Any], path: str) -> None:
    found = problems(kind, doc(kind, "bad", spec, namespace="shop" if kind == "NetworkPolicy"
                                else ""))
    assert any(p.startswith(f"{path}:") for p in found), found


def test_protocol_names_and_numbers_pass_the_pattern() -> None:
    for protocol in ("TCP", "udp", "ICMPv6", "icmpv6", "UDPLite", 6, "17", 255):
        rule = {"action": "Allow", "protocol": protocol}
        assert problems("GlobalNetworkPolicy", doc("GlobalNetworkPolicy", "p", {
            "ingress": [rule]})) == [], protocol
