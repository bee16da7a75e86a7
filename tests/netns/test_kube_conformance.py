"""NetworkPolicy conformance on a Kubernetes-mode lab, in the shape of upstream's netpol.

One lab (3 nodes, dual stack, datastore a real API server), shared with test_cnp_lab's
kubectl test (``kube_policy_lab``, tests/netns/conftest.py). Every object goes in
through kubectl: namespaces x, y, z, bare pods a, b, c in each (``spec.nodeName``
spreading every namespace over the three nodes, TCP and UDP on 80 and 81 with named
ports ``serve-80-tcp`` ...), one dual-stack ClusterIP Service per pod (``s-<pod>``,
selecting ``pod: <pod>`` in its namespace, the four ports), and the NetworkPolicies of
each scenario. After each change the full 9x9 matrix is probed twice until it matches
the expected ``Reachability``: at the pods' addresses (``tabby lab probe``, as the
SQLite suite does) and at their Services' ClusterIPs, as upstream probes (so policy must
hold for traffic the Service translated: ingress sees the client pod's address, egress
ipBlocks match the translated destination).

The scenarios are the SQLite suite's own (tests/netns/test_policy_conformance.py),
called with this lab, which writes with kubectl: one per feature, to keep the
module near two minutes.

    test_default_deny_ingress                        default deny, policyTypes [Ingress]
    test_stop_enforcing_policies_after_they_are_deleted   deny all both ways, then delete
    test_allow_all_ingress_takes_precedence          allow-all beside a ports-only rule
    test_pod_selector_within_the_server_namespace    podSelector peer
    test_namespace_selector_with_the_default_namespace_label   namespaceSelector peer
    test_pod_selector_and_namespace_selector         both in one peer, matchExpressions
    test_egress_to_a_pod_in_another_namespace        egress to a selected pod
    test_egress_rules_without_policy_types_isolate_both_ways   policyTypes implied
    test_egress_ip_block_except                      egress ipBlock with except
    test_ingress_ip_block_except_and_families        ingress ipBlock with except, IPv6
    test_end_port_ranges                             endPort, and its update
    test_named_port_ingress                          named ports (TCP and UDP)
    test_ingress_from_an_updated_namespace           a namespace relabelled with kubectl
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from tabby.lab.state import require
from tests.netns import test_policy_conformance as sqlite_suite
from tests.netns.kube_lab import KUBE_MISSING, Kubectl, probe_addresses
from tests.netns.policy_matrix import (
    NAMESPACES,
    PORTS,
    PROBE_TIMEOUT,
    PROTOCOLS,
    Expectation,
    Key,
    PolicyLab,
    Reachability,
    _ident,
    cluster_manifests,
    documents,
)
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(bool(KUBE_MISSING), reason=KUBE_MISSING),
]

VERSIONS = {"ipv4": 4, "ipv6": 6}
VIAS = ("pod", "service")


def pod_service(namespace: str, pod: str) -> dict[str, Any]:
    """Upstream's per-pod Service: every served port, both families."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"s-{pod}", "namespace": namespace},
            "spec": {"selector": {"pod": pod}, "ipFamilyPolicy": "PreferDualStack",
                     "ports": [{"name": f"serve-{port}-{proto}", "port": port,
                                "targetPort": port, "protocol": proto.upper()}
                               for port in PORTS for proto in PROTOCOLS]}}


@dataclass
class KubePolicyLab(PolicyLab):
    """``PolicyLab`` whose writes go through kubectl, probing pods and ClusterIPs."""

    kubectl: Kubectl | None = None
    cluster_ips: dict[str, dict[int, str]] = field(default_factory=dict)
    via: str = "pod"

    @property
    def k(self) -> Kubectl:
        assert self.kubectl is not None
        return self.kubectl

    def setup(self) -> None:
        docs = cluster_manifests()
        pods = [d for d in docs if d["kind"] == "Pod"]
        docs += [pod_service(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods]
        self.k.apply(*docs)
        self.originals = {_ident(d): d for d in docs}
        for ns in NAMESPACES:
            self.k.run("-n", ns, "wait", "pods", "--all", "--for=condition=Ready",
                       "--timeout=60s", timeout=90)
        wait_for("the lab to record all nine pods",
                 lambda: {p.ref for p in require(self.name).pods} >= set(self.pods), 30)
        self.ips = self.pod_ips()
        for ref in self.pods:
            ns, _, name = ref.partition("/")
            svc = self.k.get_json("-n", ns, "service", f"s-{name}")
            self.cluster_ips[ref] = {4 if "." in ip else 6: ip
                                     for ip in svc["spec"]["clusterIPs"]}
            assert set(self.cluster_ips[ref]) == {4, 6}, svc["spec"]

    def pod_ips(self) -> dict[str, dict[int, Any]]:
        import ipaddress
        out: dict[str, dict[int, Any]] = {}
        for item in self.k.get_json("pods", "-A")["items"]:
            ref = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
            addrs = [ipaddress.ip_address(i["ip"]) for i in item["status"].get("podIPs", [])]
            out[ref] = {a.version: a for a in addrs}
        return out

    def apply(self, *docs: str | Mapping[str, Any]) -> None:
        parsed = documents(docs)
        for doc in parsed:
            key = _ident(doc)
            if key in self.originals:
                self.relabelled[key] = doc
            else:
                self.applied[key] = doc
        self.log.append("kubectl apply:\n" + _yaml(parsed))
        self.k.apply(*parsed)

    def delete(self, *docs: str | Mapping[str, Any]) -> None:
        parsed = documents(docs)
        for doc in parsed:
            self.applied.pop(_ident(doc), None)
        self.log.append("kubectl delete:\n" + _yaml(parsed))
        self.k.delete(*parsed)

    def reset(self) -> None:
        if self.applied:
            docs = list(self.applied.values())
            self.applied.clear()
            self.k.delete(*docs)
        if self.relabelled:
            docs = [self.originals[key] for key in self.relabelled]
            self.relabelled.clear()
            self.k.apply(*docs)
        self.log.clear()
        self.check(Reachability(self.pods), ports=(80,), protocols=("tcp",))

    def check(self, expect: Expectation, **kwargs: Any) -> None:
        """The pods' addresses first, then their Services' ClusterIPs."""
        for via in VIAS:
            self.via = via
            try:
                super().check(expect, **kwargs)
            except AssertionError as exc:
                raise AssertionError(f"probing the {via}s' addresses: {exc}") from None
            finally:
                self.via = "pod"

    def observe(self, keys: Sequence[Key], family: str,
                sources: Sequence[str]) -> dict[Key, dict[tuple[str, str], bool]]:
        if self.via == "pod":
            return super().observe(keys, family, sources)
        version = VERSIONS[family]
        state = require(self.name)
        plan = {s: [(t, port, proto) for t in self.pods if t != s for port, proto in keys]
                for s in (sources or self.pods)}

        def run(source: str) -> list[bool]:
            record = state.pod(*source.split("/"))
            assert record is not None, source
            return probe_addresses(record.netns, [
                (self.cluster_ips[t][version], port, proto, t.partition("/")[2])
                for t, port, proto in plan[source]], PROBE_TIMEOUT)

        with ThreadPoolExecutor(max_workers=len(plan)) as pool:
            results = dict(zip(plan, pool.map(run, plan), strict=True))
        out: dict[Key, dict[tuple[str, str], bool]] = {k: {} for k in keys}
        for source, probes in plan.items():
            for (target, port, proto), ok in zip(probes, results[source], strict=True):
                out[port, proto][source, target] = ok
        return out


def _yaml(docs: list[dict[str, Any]]) -> str:
    import yaml
    return yaml.safe_dump_all(docs, sort_keys=False)


@pytest.fixture
def lab(kube_policy_lab: KubePolicyLab) -> KubePolicyLab:
    """The session's shared Kubernetes-mode policy lab (tests/netns/conftest.py), reset
    after each test."""
    return kube_policy_lab


SCENARIOS: list[Callable[[PolicyLab], None]] = [
    sqlite_suite.test_default_deny_ingress,
    sqlite_suite.test_stop_enforcing_policies_after_they_are_deleted,
    sqlite_suite.test_allow_all_ingress_takes_precedence,
    sqlite_suite.test_pod_selector_within_the_server_namespace,
    sqlite_suite.test_namespace_selector_with_the_default_namespace_label,
    sqlite_suite.test_pod_selector_and_namespace_selector,
    sqlite_suite.test_egress_to_a_pod_in_another_namespace,
    sqlite_suite.test_egress_rules_without_policy_types_isolate_both_ways,
    sqlite_suite.test_egress_ip_block_except,
    sqlite_suite.test_ingress_ip_block_except_and_families,
    sqlite_suite.test_end_port_ranges,
    sqlite_suite.test_named_port_ingress,
    sqlite_suite.test_ingress_from_an_updated_namespace,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__[5:] for s in SCENARIOS])
def test_netpol(lab: KubePolicyLab, scenario: Callable[[PolicyLab], None]) -> None:
    scenario(lab)


def test_the_policies_are_kubernetes_objects(lab: KubePolicyLab) -> None:
    """What kubectl wrote is what tabby enforces and lists: a policy applied with kubectl
    is served by the API server and shown by ``tabby get``; an invalid one is refused
    by the API server with the field named, and changes nothing."""
    lab.apply(sqlite_suite.DENY_INGRESS_X)
    listed = lab.k.get_json("-n", "x", "networkpolicies.networking.k8s.io")["items"]
    assert [p["metadata"]["name"] for p in listed] == ["deny-ingress"]
    shown = lab.tabby("get", "netpol", "-n", "x").stdout
    assert "deny-ingress" in shown, shown
    bad = sqlite_suite.netpol("bad", "y", "{podSelector: {}, policyTypes: [Sideways]}")
    done = lab.k.apply(bad, check=False)
    assert done.returncode == 1 and "spec.policyTypes" in done.stderr, done.stderr
    lab.check(Reachability(lab.pods).expect_ingress("x", False), ports=(80,),
              protocols=("tcp",))
