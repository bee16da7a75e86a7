"""ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2): the model, its CRD, its RBAC.

Validation follows upstream's CRD (network-policy-api, apis/v1alpha2): errors name the
field path; a round trip keeps every field; the CRD generated from the model carries
upstream's names and validation rules, and its schema accepts what the model writes.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tabby.errors import ValidationError
from tabby.kube import cluster, crds
from tabby.model import ClusterNetworkPolicy, parse_manifest, resolve_kind
from tabby.model.schema import validate
from tabby.store.kuberesources import default_resources

API = "policy.networking.k8s.io/v1alpha2"

FULL = """
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: full
  labels: {team: sec}
spec:
  tier: Admin
  priority: 7
  subject:
    pods:
      namespaceSelector:
        matchLabels: {conformance-house: gryffindor}
      podSelector:
        matchExpressions:
        - {key: app, operator: In, values: [web, api]}
  ingress:
  - name: from-slytherin
    action: Deny
    from:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
    - pods:
        namespaceSelector: {}
        podSelector: {matchLabels: {app: db}}
    protocols:
    - tcp: {destinationPort: {number: 80}}
    - udp: {destinationPort: {range: {start: 5000, end: 5353}}}
    - sctp: {destinationPort: {number: 9003}}
    - destinationNamedPort: web
  egress:
  - action: Accept
    to:
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
    - networks: [198.51.100.0/24, "fd7a:bb1e:9::/48"]
  - action: Pass
    to:
    - namespaces: {}
status:
  conditions:
  - {type: Ready, status: "True", reason: Applied, message: ok,
     lastTransitionTime: "2026-01-01T00:00:00Z"}
"""


def cnp(spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
            "spec": spec}


BASE: dict[str, Any] = {"tier": "Admin", "priority": 1,
                        "subject": {"namespaces": {}}}


def errors(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        parse_manifest(doc)
    return {e.path: e.message for e in info.value.errors}


def test_a_full_policy_round_trips_unchanged() -> None:
    doc = yaml.safe_load(FULL)
    obj = parse_manifest(doc)
    assert isinstance(obj, ClusterNetworkPolicy)
    assert obj.KIND.api_version == API and obj.ref == "ClusterNetworkPolicy/full"
    assert obj.to_manifest() == doc
    assert ClusterNetworkPolicy.from_manifest(obj.to_manifest()) == obj


def test_networks_are_normalised_and_deduplicated() -> None:
    doc = cnp({**BASE, "egress": [{"action": "Deny", "to": [
        {"networks": ["10.1.2.3/8", "10.0.0.0/8", "::/0"]}]}]})
    spec = parse_manifest(doc).to_manifest()["spec"]
    assert spec["egress"][0]["to"][0]["networks"] == ["10.0.0.0/8", "::/0"]


@pytest.mark.parametrize(("spec", "path", "words"), [
    ({"priority": 1, "subject": {"namespaces": {}}}, "spec.tier", "required"),
    ({**BASE, "tier": "Developer"}, "spec.tier", "Admin, Baseline"),
    ({**BASE, "priority": 1001}, "spec.priority", "0..1000"),
    ({**BASE, "priority": -1}, "spec.priority", "0..1000"),
    ({"tier": "Admin", "priority": 1}, "spec.subject", "required"),
    ({**BASE, "subject": {}}, "spec.subject", "exactly one of namespaces, pods"),
    ({**BASE, "subject": {"namespaces": {}, "pods": {"podSelector": {}}}},
     "spec.subject", "sets namespaces, pods"),
    ({**BASE, "subject": {"pods": {"namespaceSelector": {}}}},
     "spec.subject.pods.podSelector", "required"),
    ({**BASE, "subject": {"namespaces": {"matchExpressions": [
        {"key": "a", "operator": "In"}]}}},
     "spec.subject.namespaces.matchExpressions[0].values", "must not be empty"),
    ({**BASE, "ingress": [{"action": "Allow", "from": [{"namespaces": {}}]}]},
     "spec.ingress[0].action", "Accept, Deny, Pass"),
    ({**BASE, "ingress": [{"action": "Deny"}]}, "spec.ingress[0].from", "at least one"),
    ({**BASE, "ingress": [{"action": "Deny", "from": [{"networks": ["10.0.0.0/8"]}]}]},
     "spec.ingress[0].from[0].networks", "egress peer only"),
    ({**BASE, "ingress": [{"action": "Deny", "from": [{}]}]},
     "spec.ingress[0].from[0]", "exactly one of namespaces, pods"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"namespaces": {}, "nodes": {}}]}]},
     "spec.egress[0].to[0]", "sets namespaces, nodes"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0"]}]}]},
     "spec.egress[0].to[0].networks[0]", "not a CIDR"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"networks": []}]}]},
     "spec.egress[0].to[0].networks", "at least one CIDR"),
    ({**BASE, "egress": [{"action": "Accept", "to": [{"domainNames": ["example.org"]}]}]},
     "spec.egress[0].to[0].domainNames", "not supported"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
                          "protocols": [{"destinationNamedPort": "web"}]}]},
     "spec.egress[0].protocols", "no named ports"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"namespaces": {}}],
                          "protocols": [{"tcp": {}}]}]},
     "spec.egress[0].protocols[0].tcp.destinationPort", "required"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"namespaces": {}}],
                          "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]}]},
     "spec.egress[0].protocols[0].tcp.destinationPort.number", "1..65535"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"namespaces": {}}], "protocols": [
        {"udp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}]}]},
     "spec.egress[0].protocols[0].udp.destinationPort.range.end", "greater than start"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"namespaces": {}}], "protocols": [
        {"tcp": {"destinationPort": {"number": 80}}, "destinationNamedPort": "web"}]}]},
     "spec.egress[0].protocols[0]", "exactly one of tcp, udp, sctp, destinationNamedPort"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"namespaces": {}}],
                          "protocols": [{"destinationNamedPort": "Web_Port"}]}]},
     "spec.egress[0].protocols[0].destinationNamedPort", "not a port name"),
    ({**BASE, "egress": [{"action": "Deny", "to": [{"namespaces": {}}], "protocols": []}]},
     "spec.egress[0].protocols", "must not be empty"),
    ({**BASE, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}] * 26},
     "spec.ingress", "at most 25"),
    ({**BASE, "egress": [{"name": "x" * 101, "action": "Deny", "to": [{"namespaces": {}}]}]},
     "spec.egress[0].name", "at most 100"),
    ({**BASE, "egres": []}, "spec.egres", "did you mean egress"),
])
def test_bad_input_is_refused_with_its_field_path(spec: dict[str, Any], path: str,
                                                   words: str) -> None:
    found = errors(cnp(spec))
    assert path in found, found
    assert words in found[path]


def test_every_problem_is_reported_at_once() -> None:
    found = errors(cnp({"tier": "Top", "priority": 5000, "subject": {}}))
    assert {"spec.tier", "spec.priority", "spec.subject"} <= set(found)


def test_the_kind_is_cluster_scoped_and_named_as_upstream() -> None:
    info = ClusterNetworkPolicy.KIND
    assert (info.group, info.version, info.plural, info.namespaced) == (
        "policy.networking.k8s.io", "v1alpha2", "clusternetworkpolicies", False)
    assert resolve_kind("clusternetworkpolicies") is ClusterNetworkPolicy
    assert resolve_kind("clusternetworkpolicy.policy.networking.k8s.io") is ClusterNetworkPolicy
    with pytest.raises(ValidationError, match="not namespaced"):
        parse_manifest({**cnp(BASE), "metadata": {"name": "p", "namespace": "x"}})


# -- the CRD ----------------------------------------------------------------------------

def the_crd() -> dict[str, Any]:
    [doc] = [d for d in crds.crds()
             if d["metadata"]["name"] == "clusternetworkpolicies.policy.networking.k8s.io"]
    return doc


def test_the_crd_has_upstreams_names_columns_and_approval() -> None:
    doc = the_crd()
    spec = doc["spec"]
    assert spec["group"] == "policy.networking.k8s.io" and spec["scope"] == "Cluster"
    assert spec["names"] == {"kind": "ClusterNetworkPolicy",
                             "listKind": "ClusterNetworkPolicyList",
                             "plural": "clusternetworkpolicies",
                             "singular": "clusternetworkpolicy", "shortNames": ["cnp"]}
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha2", True, True)
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Tier", "Priority", "Age"]
    # A CRD of a *.k8s.io group without this annotation is refused by the API server.
    assert doc["metadata"]["annotations"]["api-approved.kubernetes.io"].startswith("https://")


def test_the_crd_schema_carries_upstreams_validation_rules() -> None:
    schema = the_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["tier", "priority", "subject"]
    assert spec["properties"]["subject"]["maxProperties"] == 1
    egress = spec["properties"]["egress"]["items"]
    peer = egress["properties"]["to"]["items"]
    assert (peer["minProperties"], peer["maxProperties"]) == (1, 1)
    assert set(peer["properties"]) == {"namespaces", "pods", "nodes", "networks"}
    cidr = peer["properties"]["networks"]["items"]
    assert cidr["x-kubernetes-validations"][0]["rule"] == "isCIDR(self)"
    assert "destinationNamedPort" in egress["x-kubernetes-validations"][0]["rule"]
    ingress_peer = spec["properties"]["ingress"]["items"]["properties"]["from"]["items"]
    assert set(ingress_peer["properties"]) == {"namespaces", "pods"}


def test_what_the_model_writes_the_crd_schema_accepts() -> None:
    schema = the_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    manifest = parse_manifest(yaml.safe_load(FULL)).to_manifest()
    assert validate(schema, manifest) == []
    assert validate(schema, cnp({**BASE, "tier": "Middle"}))  # the enum is there


def test_agents_may_list_and_watch_it_and_nothing_more() -> None:
    res = default_resources()["clusternetworkpolicies.policy.networking.k8s.io"]
    assert res.collection(None) == "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"
    rules, _ = cluster.node_rules()
    granted = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"]
               for r in rule["resources"]}
    assert granted[("policy.networking.k8s.io", "clusternetworkpolicies")] == {"list", "watch"}


def test_stored_as_written_under_its_own_api_version(tmp_path: Any) -> None:
    from tabby.store import open_store
    from tabby.store.client import Client
    store = open_store(f"sqlite:///{tmp_path}/tabby.db")
    try:
        obj = parse_manifest(yaml.safe_load(FULL))
        stored = Client(store).create(obj)
        [item] = store.list("clusternetworkpolicies.policy.networking.k8s.io")
        assert item.value["apiVersion"] == API and item.value["spec"] == obj.to_manifest()["spec"]
        assert Client(store).get(ClusterNetworkPolicy, "full") == stored
    finally:
        store.close()
