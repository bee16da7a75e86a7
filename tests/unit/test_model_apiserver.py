"""Kubernetes' own kinds exactly as kube-apiserver v1.37.2 serves them.

The fixtures under data/apiserver/ are ``kubectl get -o json`` of objects a
real control plane made and defaulted (managedFields, status, allocated
clusterIPs and nodePorts, controller-made EndpointSlices); capture.py there
regenerates them. Every one must read, keep what tabby uses typed and correct,
and (Pod, Service) render back every field of its spec and status, so that
writing a status back clobbers nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from tabby.model import (
    EndpointSlice,
    K8sNetworkPolicy,
    Namespace,
    Pod,
    Resource,
    Secret,
    Service,
    parse_manifest,
)
from tabby.model.k8s import PodStatus
from tabby.model.service import FQDN
from tabby.services.view import service_views

DATA = Path(__file__).parent / "data" / "apiserver"
NS = "tabby-demo"
KINDS: dict[str, type[Resource]] = {
    "Namespace": Namespace, "Pod": Pod, "Service": Service, "EndpointSlice": EndpointSlice,
    "NetworkPolicy": K8sNetworkPolicy, "Secret": Secret}


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return doc


def served(prefix: str) -> list[str]:
    return sorted(p.stem for p in DATA.glob(f"{prefix}*.json"))


def every_object() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in served(""):
        doc = load(name)
        if doc["kind"] == "List":
            out += [(f"{name}[{i}]", item) for i, item in enumerate(doc["items"])]
        else:
            out.append((name, doc))
    return out


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_the_fixtures_cover_every_kind() -> None:
    kinds = {doc["kind"] for _, doc in every_object()}
    assert kinds == set(KINDS)
    assert len(served("list-")) == 6 and len(every_object()) > 60


@pytest.mark.parametrize("name,doc", every_object(), ids=[n for n, _ in every_object()])
def test_every_served_object_reads(name: str, doc: dict[str, Any]) -> None:
    obj = parse_manifest(doc)
    assert type(obj) is KINDS[doc["kind"]]
    assert obj.meta.name == doc["metadata"]["name"]
    assert obj.meta.uid == doc["metadata"]["uid"]
    assert obj.meta.resource_version == doc["metadata"]["resourceVersion"]
    assert dict(obj.meta.labels).items() >= doc["metadata"].get("labels", {}).items()


# -- Pod ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", served("pod-"))
def test_pod_typed_fields_follow_the_served_object(name: str) -> None:
    doc = load(name)
    pod = Pod.from_manifest(doc)
    spec, status = doc["spec"], doc["status"]
    assert pod.node_name == spec["nodeName"] == "node-1"
    assert pod.service_account_name == spec["serviceAccountName"] == "default"
    assert pod.host_network == spec.get("hostNetwork", False)
    assert [(c.name, c.image) for c in pod.containers] == [
        (c["name"], c["image"]) for c in spec["containers"]]
    assert [(p.name, p.container_port, p.protocol, p.host_port) for p in pod.ports()] == [
        (p.get("name", ""), p["containerPort"], p["protocol"], p.get("hostPort"))
        for c in spec["containers"] for p in c.get("ports", [])]
    assert pod.status.phase == status["phase"]
    assert pod.status.pod_ips == tuple(ip(i["ip"]) for i in status.get("podIPs", []))
    assert pod.status.host_ip == status.get("hostIP", "")


def test_pod_status_as_a_kubelet_writes_it() -> None:
    pending = Pod.from_manifest(load("pod-client-pending"))
    assert pending.status == PodStatus() and pending.raw_status == {"qosClass": "Burstable"}
    running = Pod.from_manifest(load("pod-client"))
    assert running.status.phase == "Running"
    assert running.status.pod_ips == (ip("198.19.0.10"), ip("fd7a:bb1e:1::a"))
    assert running.status.host_ip == "198.51.100.10"
    assert [c.name for c in running.containers] == ["app", "sidecar"]
    assert [(p.name, p.container_port, p.protocol) for p in running.ports()][:3] == [
        ("http", 8080, "TCP"), ("dns", 5353, "UDP"), ("metrics", 9090, "TCP")]
    assert running.ports()[3].host_port == 19901
    agent = Pod.from_manifest(load("pod-host-agent"))
    assert agent.host_network and agent.status.pod_ips == (ip("198.51.100.10"),
                                                           ip("2001:db8:51::10"))
    assert Pod.from_manifest(load("pod-web-extra")).meta.labels == {"app": "web", "tier": "front"}


@pytest.mark.parametrize("name", served("pod-"))
def test_pod_renders_back_its_whole_spec_and_status(name: str) -> None:
    doc = load(name)
    pod = Pod.from_manifest(doc)
    out = pod.to_manifest()
    assert out["spec"] == doc["spec"]
    assert out["status"] == doc["status"]
    assert Pod.from_manifest(out) == pod


def test_writing_a_pod_status_back_keeps_what_tabby_does_not_model() -> None:
    doc = load("pod-client")
    pod = Pod.from_manifest(doc)
    # the lab replaces the typed status (new addresses, same node): the rest stays
    moved = dataclasses.replace(pod, status=PodStatus("Running", (ip("198.19.9.9"),),
                                                      "198.51.100.10"))
    status = moved.to_manifest()["status"]
    assert status["podIP"] == "198.19.9.9" and status["podIPs"] == [{"ip": "198.19.9.9"}]
    assert status["hostIPs"] == doc["status"]["hostIPs"]  # both families, as served
    for key in ("conditions", "containerStatuses", "qosClass", "startTime"):
        assert status[key] == doc["status"][key]
    # another host: hostIPs follows hostIP (the API server wants hostIPs[0] == hostIP)
    other = dataclasses.replace(pod, status=dataclasses.replace(pod.status,
                                                                host_ip="198.51.100.99"))
    assert other.to_manifest()["status"]["hostIPs"] == [{"ip": "198.51.100.99"}]
    # a pending pod's first status keeps the server's qosClass
    pending = Pod.from_manifest(load("pod-client-pending"))
    first = dataclasses.replace(pending, status=PodStatus("Running", (ip("198.19.0.10"),),
                                                          "198.51.100.10"))
    assert first.to_manifest()["status"] == {
        "qosClass": "Burstable", "phase": "Running", "hostIP": "198.51.100.10",
        "hostIPs": [{"ip": "198.51.100.10"}], "podIP": "198.19.0.10",
        "podIPs": [{"ip": "198.19.0.10"}]}


def test_a_status_tabby_wrote_reads_back_equal() -> None:
    pod = Pod.from_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                             "spec": {"containers": [{"name": "c"}]}})
    wired = dataclasses.replace(pod, status=PodStatus("Running", (ip("198.19.0.5"),),
                                                      "198.18.0.1"))
    assert Pod.from_manifest(wired.to_manifest()) == wired


# -- Service --------------------------------------------------------------------------

@pytest.mark.parametrize("name", served("service-"))
def test_service_typed_fields_follow_the_served_object(name: str) -> None:
    doc = load(name)
    svc = Service.from_manifest(doc)
    spec, s = doc["spec"], svc.spec
    assert s.type == spec["type"]
    if spec.get("clusterIPs") == ["None"]:
        assert s.headless and s.cluster_ips == ()
    else:
        assert s.cluster_ips == tuple(ip(t) for t in spec.get("clusterIPs", []))
        assert (str(s.cluster_ips[0]) if s.cluster_ips else None) == spec.get("clusterIP")
    assert s.ip_families == tuple({"IPv4": 4, "IPv6": 6}[f] for f in spec.get("ipFamilies", []))
    assert s.ip_family_policy == spec.get("ipFamilyPolicy", "")
    assert [(p.name, p.protocol, p.port, p.target, p.node_port, p.app_protocol)
            for p in s.ports] == [
        (p.get("name", ""), p["protocol"], p["port"], p["targetPort"], p.get("nodePort"),
         p.get("appProtocol", "")) for p in spec.get("ports", [])]
    assert dict(s.selector) == spec.get("selector", {})
    assert s.session_affinity == spec["sessionAffinity"]
    timeout = spec.get("sessionAffinityConfig", {}).get("clientIP", {}).get("timeoutSeconds")
    assert s.affinity_timeout == (timeout or 10800)
    assert s.external_traffic_policy == spec.get("externalTrafficPolicy", "Cluster")
    assert s.internal_traffic_policy == spec.get("internalTrafficPolicy", "Cluster")
    assert s.external_ips == tuple(ip(t) for t in spec.get("externalIPs", []))
    assert s.load_balancer_ip == (ip(spec["loadBalancerIP"]) if "loadBalancerIP" in spec
                                  else None)
    assert s.health_check_node_port == spec.get("healthCheckNodePort")
    assert s.external_name == spec.get("externalName", "")
    assert svc.ingress == tuple(ip(e["ip"]) for e in doc["status"]["loadBalancer"].get(
        "ingress", []) if "ip" in e)


def test_services_of_every_type() -> None:
    web = Service.from_manifest(load("service-web"))
    assert web.families() == (4,) and web.spec.affinity_timeout == 600
    assert [p.target for p in web.spec.ports] == ["http", "dns"]
    prefer = Service.from_manifest(load("service-web-prefer-dual"))
    assert prefer.families() == (4, 6) and prefer.spec.ip_family_policy == "PreferDualStack"
    assert prefer.cluster_ip(6) in ipaddress.ip_network("fd7a:bb1e:2::/112")
    require = Service.from_manifest(load("service-web-require-dual"))
    assert require.families() == (6, 4) and require.spec.internal_traffic_policy == "Local"
    node_port = Service.from_manifest(load("service-web-nodeport"))
    assert node_port.spec.ports[0].node_port == 30080
    assert node_port.spec.external_ips == (ip("203.0.113.10"),)
    lb = Service.from_manifest(load("service-web-lb"))
    assert lb.spec.external_traffic_policy == "Local" and lb.spec.health_check_node_port
    assert lb.ingress == (ip("203.0.113.20"), ip("2001:db8:113::20"))
    assert lb.spec.load_balancer_ip == ip("203.0.113.20")
    assert lb.external_ip_text() == "203.0.113.20,2001:db8:113::20"
    assert Service.from_manifest(load("service-web-headless")).cluster_ip_text() == "None"
    external = Service.from_manifest(load("service-web-external"))
    assert external.external_ip_text() == "web.example.com" and external.spec.ports == ()
    classy = Service.from_manifest(load("service-web-lb-class"))
    assert classy.spec.ports[0].node_port is None and classy.spec.ports[0].protocol == "SCTP"
    assert classy.raw_spec["loadBalancerClass"] == "tabby.dev/lb"


@pytest.mark.parametrize("name", served("service-"))
def test_service_renders_back_its_whole_spec_and_status(name: str) -> None:
    doc = load(name)
    svc = Service.from_manifest(doc)
    out = svc.to_manifest()
    assert out["spec"] == doc["spec"]
    assert out["status"] == doc["status"]
    assert Service.from_manifest(out) == svc


def test_writing_load_balancer_ingress_back_keeps_what_tabby_does_not_model() -> None:
    doc = load("service-web-lb")
    svc = Service.from_manifest(doc)
    served_status = copy.deepcopy(doc["status"])
    served_status["conditions"] = [{"type": "Provisioned", "status": "True", "reason": "Done",
                                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    svc = Service.from_manifest({**doc, "status": served_status})
    # the controller keeps the IPv4 address and replaces the IPv6 one
    moved = dataclasses.replace(svc, ingress=(ip("203.0.113.20"), ip("2001:db8:113::21")))
    status = moved.to_manifest()["status"]
    assert status["loadBalancer"]["ingress"] == [
        {"ip": "203.0.113.20", "ipMode": "VIP"}, {"ip": "2001:db8:113::21"},
        {"hostname": "lb.example.com"}]
    assert status["conditions"] == served_status["conditions"]
    cleared = dataclasses.replace(svc, ingress=()).to_manifest()["status"]
    assert cleared["loadBalancer"] == {"ingress": [{"hostname": "lb.example.com"}]}


# -- EndpointSlice ----------------------------------------------------------------------

@pytest.mark.parametrize("name", served("endpointslice-"))
def test_endpoint_slice_typed_fields_follow_the_served_object(name: str) -> None:
    doc = load(name)
    es = EndpointSlice.from_manifest(doc)
    assert es.address_type == {"IPv4": 4, "IPv6": 6, "FQDN": FQDN}[doc["addressType"]]
    assert len(es.endpoints) == len(doc["endpoints"] or [])
    for e, d in zip(es.endpoints, doc["endpoints"] or [], strict=True):
        addresses = [str(a) for a in e.addresses] if es.address_type != FQDN else list(e.fqdns)
        assert addresses == d["addresses"]
        cond = d["conditions"]
        assert (e.ready_condition, e.serving_condition, e.terminating) == (
            cond.get("ready"), cond.get("serving"), cond.get("terminating", False))
        assert e.node_name == d.get("nodeName", "")
        ref = d.get("targetRef")
        assert e.target == (f"{ref['kind']}/{ref['namespace']}/{ref['name']}" if ref else "")
    numbered = [p for p in doc["ports"] or [] if "port" in p]
    assert [(p.name, p.port, p.protocol) for p in es.ports] == [
        (p["name"], p["port"], p["protocol"]) for p in numbered]
    assert EndpointSlice.from_manifest(es.to_manifest()) == es


def test_controller_made_slices_become_backends() -> None:
    web = EndpointSlice.from_manifest(load("endpointslice-web-IPv4"))
    assert web.service_name == "web" and web.address_type == 4
    states = {e.target.rsplit("/", 1)[1]: (e.ready, e.serving, e.terminating)
              for e in web.endpoints}
    assert states["web-extra"] == (False, True, True)  # deleted, the kubelet not done yet
    assert sorted(states.values()).count((True, True, False)) == 2
    assert {e.node_name for e in web.endpoints} == {"node-1"}
    svc = Service.from_manifest(load("service-web"))
    views = {v.port_name: v for v in service_views(svc, (web,))}
    ready = {ip("198.19.0.12"), ip("198.19.0.13")}
    assert {b.address for b in views["http"].backends} == ready
    assert {b.port for b in views["http"].backends} == {8080}
    assert {b.port for b in views["dns"].backends} == {5353}
    assert views["http"].affinity_timeout == 600
    lb = Service.from_manifest(load("service-web-lb"))
    slices = tuple(EndpointSlice.from_manifest(load(f"endpointslice-web-lb-{f}"))
                   for f in ("IPv4", "IPv6"))
    by_family = {v.version: v for v in service_views(lb, slices)}
    assert {b.address for b in by_family[6].backends} == {ip("fd7a:bb1e:1::c"),
                                                          ip("fd7a:bb1e:1::d")}
    assert by_family[4].external_local and by_family[4].external_ips == (ip("203.0.113.20"),)


def test_slices_a_proxy_cannot_use_are_read_but_give_no_backends() -> None:
    fqdn = EndpointSlice.from_manifest(load("endpointslice-manual-fqdn-FQDN"))
    assert fqdn.address_type == FQDN and fqdn.endpoints[0].fqdns == ("backend.example.com",)
    assert fqdn.ports == () and [p.name for p in fqdn.unnumbered_ports] == ["any"]
    assert fqdn.endpoints_text() == "backend.example.com" and fqdn.to_manifest()["ports"] == [
        {"name": "any", "protocol": "TCP"}]
    manual = EndpointSlice.from_manifest(load("endpointslice-manual-1-IPv4"))
    assert manual.ports[0].app_protocol == "http"
    svc = Service.from_manifest(load("service-manual"))
    [view] = service_views(svc, (fqdn, manual))
    assert [b.address for b in view.backends] == [ip("198.19.7.1")]
    headless = EndpointSlice.from_manifest(load("endpointslice-portless-headless-IPv4"))
    assert headless.ports == () and headless.endpoints[0].target == f"Pod/{NS}/client"


# -- NetworkPolicy, Namespace, Secret -----------------------------------------------------

@pytest.mark.parametrize("name", served("networkpolicy-"))
def test_network_policy_renders_back_its_spec(name: str) -> None:
    doc = load(name)
    assert K8sNetworkPolicy.from_manifest(doc).to_manifest()["spec"] == doc["spec"]


def test_network_policy_reads_every_field() -> None:
    pol = K8sNetworkPolicy.from_manifest(load("networkpolicy-allow-web")).spec
    assert pol.policy_types == ("Ingress", "Egress")
    assert pol.pod_selector.to_selector() == "app == 'web' && tier in {'back', 'front'}"
    both, client, v4, v6 = pol.ingress[0].peers
    assert both.namespace_selector is not None and both.pod_selector is not None
    assert both.namespace_selector.to_selector() == "team == 'red'"
    assert both.pod_selector.to_selector() == "role not in {'db'} && has(app) && !has(legacy)"
    assert client.pod_selector is not None and client.namespace_selector is None
    assert v4.ip_block is not None and v6.ip_block is not None
    assert v4.ip_block.except_ == (ipaddress.ip_network("198.51.100.128/25"),)
    assert v6.ip_block.cidr == ipaddress.ip_network("2001:db8::/32")
    assert [(p.protocol, p.port, p.end_port) for p in pol.ingress[0].ports] == [
        ("TCP", "http", None), ("UDP", 5353, None), ("TCP", 30000, 30100),
        ("SCTP", 9999, None)]
    everyone = pol.ingress[1].peers[0]
    assert everyone.namespace_selector is not None and everyone.pod_selector is None
    assert everyone.namespace_selector.to_selector() == "all()"
    assert [(p.protocol, p.port, p.end_port) for p in pol.egress[0].ports] == [
        ("TCP", 443, None), ("TCP", 8000, 8080)]
    assert pol.egress[1].peers == ()
    # the API server fills policyTypes in: Ingress, plus Egress where egress rules exist
    implicit = K8sNetworkPolicy.from_manifest(load("networkpolicy-ingress-implicit")).spec
    assert implicit.policy_types == ("Ingress",) and implicit.ingress[0].peers == ()
    egress = K8sNetworkPolicy.from_manifest(load("networkpolicy-egress-implicit")).spec
    assert egress.policy_types == ("Ingress", "Egress") and egress.ingress == ()


def test_namespaces_and_secrets() -> None:
    demo = Namespace.from_manifest(load("namespace-tabby-demo"))
    assert demo.phase == "Active" and dict(demo.meta.labels) == {
        "team": "blue", "env": "test", "kubernetes.io/metadata.name": NS}
    secret = Secret.from_manifest(load("secret-bgp-password"))
    assert secret.type == "Opaque" and secret.text("password") == "s3cr3t"
    assert secret.text("username") == "tabby" and secret.text("note") == "plain text"
    assert Secret.from_manifest(load("secret-frozen")).text("key") == "value"
