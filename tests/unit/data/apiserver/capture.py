"""Capture Kubernetes' own kinds exactly as a real kube-apiserver serves them.

    .venv/bin/python tests/unit/data/apiserver/capture.py [OUTPUT_DIR]

(default OUTPUT_DIR: this script's directory). It starts a control plane on
loopback (``tabby.kube.controlplane.ControlPlane``: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler of the pinned release, dual-stack
service ranges), then with kubectl:

1. creates two labelled Namespaces and a Node ``node-1`` (Ready, allocatable
   pods/cpu/memory; its Lease is renewed while the script runs, so the node
   lifecycle controller never taints it);
2. creates a Deployment ``web`` (2 replicas; named TCP/UDP container ports,
   resources, probes, env), bare Pods with ``spec.nodeName`` set (one on the
   host network), Services of every type (ClusterIP single and dual-stack,
   NodePort, LoadBalancer with ``externalTrafficPolicy: Local``, headless,
   ExternalName, selector-less with a hand-made EndpointSlice), NetworkPolicies
   and Secrets (see ``MANIFESTS``);
3. plays the kubelet: sets every pod's status through the status subresource
   (``kubectl patch --subresource=status``: phase Running, podIP(s), hostIP(s),
   conditions, containerStatuses), then deletes one ready pod so that its
   endpoint turns ``terminating`` (without a kubelet it stays terminating);
4. plays a load-balancer controller: sets ``status.loadBalancer.ingress`` of
   the LoadBalancer service;
5. waits for the controllers (ReplicaSet, scheduler, EndpointSlice) and writes
   ``kubectl get -o json`` of every object, and of every list, to
   ``<kind>-<name>.json`` / ``list-<resource>.json``.

Everything the server returns is kept (uid, resourceVersion, managedFields,
timestamps); the unit tests (tests/unit/test_model_apiserver.py) read these
files as they are. Generated names (the Deployment's pods, the controller's
EndpointSlices) are stored under stable file names: ``pod-web-0``,
``endpointslice-<service>-<addressType>``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tabby.kube import binaries
from tabby.kube.controlplane import ControlPlane

NS = "tabby-demo"
OTHER_NS = "tabby-other"
NODE = "node-1"
NODE_IPS = ("198.51.100.10", "2001:db8:51::10")
SERVICE_RANGES = ["198.18.128.0/20", "fd7a:bb1e:2::/112"]
TIMEOUT = 90.0

Doc = dict[str, Any]


def meta(name: str, namespace: str = NS, **labels: str) -> Doc:
    out: Doc = {"name": name, "namespace": namespace}
    if labels:
        out["labels"] = dict(labels)
    return out


def namespaces() -> list[Doc]:
    return [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": NS, "labels": {"team": "blue", "env": "test"}}},
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": OTHER_NS, "labels": {"team": "red"}}}]


def node() -> Doc:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE,
                                                  "kubernetes.io/os": "linux"}},
            "spec": {}}


def node_status() -> Doc:
    now = _now()
    capacity = {"pods": "110", "cpu": "4", "memory": "8Gi"}
    return {"status": {
        "capacity": capacity, "allocatable": capacity,
        "addresses": [{"type": "InternalIP", "address": ip} for ip in NODE_IPS]
        + [{"type": "Hostname", "address": NODE}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                     "kubeletVersion": binaries.KUBERNETES_VERSION, "bootID": "", "machineID": "",
                     "systemUUID": "", "kernelVersion": "", "osImage": "",
                     "containerRuntimeVersion": "", "kubeProxyVersion": ""}}}


def lease() -> Doc:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": NODE, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": stamp}}


def pod_spec(node_name: str = "", host_port: int = 0) -> Doc:
    spec: Doc = {
        "serviceAccountName": "default",
        "containers": [
            {"name": "app", "image": "registry.k8s.io/pause:3.10",
             "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                       {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
                       {"name": "metrics", "containerPort": 9090}],
             "env": [{"name": "MODE", "value": "demo"},
                     {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
             "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                           "limits": {"cpu": "500m", "memory": "128Mi"}},
             "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                                "periodSeconds": 5},
             "livenessProbe": {"tcpSocket": {"port": "http"}, "initialDelaySeconds": 3}},
            {"name": "sidecar", "image": "registry.k8s.io/pause:3.10",
             "ports": [{"name": "admin", "containerPort": 9901}]}],
    }
    if node_name:
        spec["nodeName"] = node_name
    if host_port:
        spec["containers"][1]["ports"][0]["hostPort"] = host_port
    return spec


def workloads() -> list[Doc]:
    web = {"app": "web", "tier": "front"}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("web", app="web"),
         "spec": {"replicas": 2, "selector": {"matchLabels": web},
                  "template": {"metadata": {"labels": web}, "spec": pod_spec()}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta("client", app="client"),
         "spec": pod_spec(NODE, host_port=19901)},
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta("web-extra", **web),
         "spec": pod_spec(NODE)},
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta("host-agent", app="agent"),
         "spec": {"nodeName": NODE, "hostNetwork": True, "serviceAccountName": "default",
                  "containers": [{"name": "agent", "image": "registry.k8s.io/pause:3.10",
                                  "ports": [{"name": "health", "containerPort": 9099}]}]}},
    ]


def service(name: str, spec: Doc) -> Doc:
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name, app="web"),
            "spec": spec}


def services() -> list[Doc]:
    sel = {"app": "web"}
    tcp_udp = [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
               {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]
    affinity = {"sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}
    return [
        service("web", {"selector": sel, "ports": tcp_udp, **affinity}),
        service("web-prefer-dual", {"selector": sel, "ipFamilyPolicy": "PreferDualStack",
                                    "ports": tcp_udp}),
        service("web-require-dual", {"selector": sel, "ipFamilyPolicy": "RequireDualStack",
                                     "ipFamilies": ["IPv6", "IPv4"],
                                     "internalTrafficPolicy": "Local", "ports": tcp_udp}),
        service("web-nodeport", {"type": "NodePort", "selector": sel, "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
            {"name": "metrics", "port": 9090, "targetPort": 9090}],
            "externalIPs": ["203.0.113.10"], **affinity}),
        service("web-lb", {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                           "ipFamilyPolicy": "PreferDualStack", "selector": sel,
                           "loadBalancerIP": "203.0.113.20", "ports": tcp_udp[:1]}),
        service("web-headless", {"clusterIP": "None", "selector": sel, "ports": tcp_udp}),
        service("web-external", {"type": "ExternalName", "externalName": "web.example.com"}),
        service("manual", {"ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                      "appProtocol": "http"}]}),
        service("web-external-ips", {"selector": sel, "externalIPs": ["203.0.113.30"],
                                     "trafficDistribution": "PreferClose",
                                     "ports": [{"port": 80, "targetPort": "http"}]}),
        service("web-lb-class", {"type": "LoadBalancer", "selector": sel,
                                 "loadBalancerClass": "tabby.dev/lb",
                                 "allocateLoadBalancerNodePorts": False,
                                 "loadBalancerSourceRanges": ["198.51.100.0/24"],
                                 "ports": [{"port": 443, "targetPort": 8443,
                                            "protocol": "SCTP"}]}),
        service("portless-headless", {"clusterIP": "None", "selector": {"app": "client"},
                                      "publishNotReadyAddresses": True}),
    ]


def manual_slice() -> Doc:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta("manual-1", **{"kubernetes.io/service-name": "manual",
                                            "endpointslice.kubernetes.io/managed-by": "tabby"}),
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["198.19.7.1"], "conditions": {"ready": True},
                 "nodeName": NODE, "hostname": "manual-a", "zone": "zone-a",
                 "hints": {"forZones": [{"name": "zone-a"}]}},
                {"addresses": ["198.19.7.2"],
                 "conditions": {"ready": False, "serving": True, "terminating": True},
                 "targetRef": {"kind": "Pod", "namespace": NS, "name": "gone"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}]}


def fqdn_slice() -> Doc:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta("manual-fqdn", **{"kubernetes.io/service-name": "manual"}),
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["backend.example.com"]}],
            "ports": [{"name": "any"}]}


def policy(name: str, spec: Doc) -> Doc:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(name), "spec": spec}


def policies() -> list[Doc]:
    return [
        policy("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        policy("allow-web", {
            "podSelector": {"matchLabels": {"app": "web"},
                            "matchExpressions": [{"key": "tier", "operator": "In",
                                                  "values": ["front", "back"]}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}},
                           "podSelector": {"matchExpressions": [
                               {"key": "role", "operator": "NotIn", "values": ["db"]},
                               {"key": "app", "operator": "Exists"},
                               {"key": "legacy", "operator": "DoesNotExist"}]}},
                          {"podSelector": {"matchLabels": {"app": "client"}}},
                          {"ipBlock": {"cidr": "198.51.100.0/24",
                                       "except": ["198.51.100.128/25"]}},
                          {"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}}],
                 "ports": [{"port": "http"}, {"protocol": "UDP", "port": 5353},
                           {"protocol": "TCP", "port": 30000, "endPort": 30100},
                           {"protocol": "SCTP", "port": 9999}]},
                {"from": [{"namespaceSelector": {}}]}],
            "egress": [
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                 "ports": [{"protocol": "TCP", "port": 443}, {"port": 8000, "endPort": 8080}]},
                {"ports": [{"protocol": "UDP", "port": 53}]}]}),
        policy("ingress-implicit", {"podSelector": {"matchLabels": {"app": "client"}},
                                    "ingress": [{}]}),
        policy("egress-implicit", {"podSelector": {},
                                   "egress": [{"to": [{"namespaceSelector": {
                                       "matchLabels": {"kubernetes.io/metadata.name": OTHER_NS}
                                   }}]}]}),
    ]


def secrets() -> list[Doc]:
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("bgp-password"),
         "type": "Opaque", "data": {"password": "czNjcjN0"},
         "stringData": {"username": "tabby", "note": "plain text"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("frozen"),
         "type": "Opaque", "immutable": True, "stringData": {"key": "value"}},
    ]


def kubelet_status(pod: Doc, index: int) -> Doc:
    """What a kubelet would write for ``pod`` once its containers run."""
    now = _now()
    conditions = [{"type": t, "status": "True", "lastProbeTime": None,
                   "lastTransitionTime": now}
                  for t in ("PodReadyToStartContainers", "Initialized", "Ready",
                            "ContainersReady", "PodScheduled")]
    host_network = pod["spec"].get("hostNetwork", False)
    pod_ips = list(NODE_IPS) if host_network else [f"198.19.0.{10 + index}",
                                                   f"fd7a:bb1e:1::{10 + index:x}"]
    return {"status": {
        "phase": "Running", "podIP": pod_ips[0], "podIPs": [{"ip": ip} for ip in pod_ips],
        "hostIP": NODE_IPS[0], "hostIPs": [{"ip": ip} for ip in NODE_IPS],
        "startTime": now, "conditions": conditions,
        "containerStatuses": [
            {"name": c["name"], "ready": True, "started": True, "restartCount": 0,
             "image": c["image"], "imageID": f"{c['image']}@sha256:{'0' * 64}",
             "containerID": "containerd://" + hashlib.sha256(
                 f"{pod['metadata']['name']}/{c['name']}".encode()).hexdigest(),
             "state": {"running": {"startedAt": now}}}
            for c in pod["spec"]["containers"]]}}


# -- driving kubectl ------------------------------------------------------------------

class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.argv = [binaries.program("kubectl"), f"--kubeconfig={kubeconfig}"]

    def run(self, *args: str, stdin: str = "") -> str:
        proc = subprocess.run([*self.argv, *args], input=stdin, capture_output=True, text=True,
                              check=False, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def create(self, *docs: Doc) -> None:
        self.run("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                         "items": list(docs)}))

    def apply(self, doc: Doc) -> None:
        self.run("apply", "-f", "-", stdin=json.dumps(doc))

    def get(self, *args: str) -> Doc:
        out: Doc = json.loads(self.run("get", *args, "-o", "json"))
        return out

    def patch_status(self, resource: str, name: str, patch: Doc, namespace: str = "") -> None:
        ns = [f"--namespace={namespace}"] if namespace else []
        self.run("patch", resource, name, *ns, "--subresource=status", "--type=merge",
                 "-p", json.dumps(patch))


def wait_for(what: str, check: Callable[[], Any], beat: Callable[[], None]) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        beat()
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def capture(cp: ControlPlane, out: Path) -> None:
    k = Kubectl(cp.admin_kubeconfig)

    def beat() -> None:
        k.apply(lease())

    def save(name: str, doc: Doc) -> None:
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {name}.json")

    wait_for("the default service account", lambda: _has_default_sa(k), beat)
    k.create(*namespaces())
    k.create(node())
    k.patch_status("node", NODE, node_status())
    beat()
    wait_for("the namespaces' service accounts", lambda: _has_default_sa(k, NS), beat)
    k.create(*workloads(), *services(), manual_slice(), fqdn_slice(), *policies(), *secrets())
    save("pod-client-pending", k.get("pod", "client", "-n", NS))
    pods = wait_for("the deployment's pods to be scheduled", lambda: _scheduled(k), beat)
    for index, pod in enumerate(pods):
        k.patch_status("pod", pod["metadata"]["name"], kubelet_status(pod, index), NS)
    k.patch_status("service", "web-lb", {"status": {"loadBalancer": {"ingress": [
        {"ip": "203.0.113.20"}, {"ip": "2001:db8:113::20"}, {"hostname": "lb.example.com"}]}}},
        NS)
    wait_for("ready endpoints of web", lambda: _ready_endpoints(k, "web") >= 3, beat)
    k.run("delete", "pod", "web-extra", "-n", NS, "--wait=false")
    wait_for("a terminating endpoint", lambda: _terminating(k, "web"), beat)

    for ns in k.get("namespaces")["items"]:
        if ns["metadata"]["name"] in (NS, OTHER_NS, "default"):
            save(f"namespace-{ns['metadata']['name']}", ns)
    save("list-namespaces", k.get("namespaces"))
    web = 0
    for pod in k.get("pods", "-n", NS)["items"]:
        name = pod["metadata"]["name"]
        if pod["metadata"].get("generateName"):
            name, web = f"web-{web}", web + 1
        save(f"pod-{name}", pod)
    save("list-pods", k.get("pods", "-n", NS))
    for kind, resource in (("service", "services"), ("networkpolicy", "networkpolicies"),
                           ("secret", "secrets")):
        items = k.get(resource, "-n", NS)
        for item in items["items"]:
            save(f"{kind}-{item['metadata']['name']}", item)
        save(f"list-{resource}", items)
    save("service-kubernetes", k.get("service", "kubernetes", "-n", "default"))
    slices = k.get("endpointslices", "-n", NS)
    for item in slices["items"]:
        svc = item["metadata"]["labels"]["kubernetes.io/service-name"]
        name = item["metadata"]["name"] if svc == "manual" else svc
        save(f"endpointslice-{name}-{item['addressType']}", item)
    save("list-endpointslices", slices)


def _has_default_sa(k: Kubectl, namespace: str = "default") -> bool:
    items = k.get("serviceaccounts", "-n", namespace)["items"]
    return any(i["metadata"]["name"] == "default" for i in items)


def _scheduled(k: Kubectl) -> list[Doc]:
    pods: list[Doc] = k.get("pods", "-n", NS)["items"]
    if len(pods) < 5 or not all(p["spec"].get("nodeName") for p in pods):
        return []
    # client, host-agent, the deployment's two, web-extra: the pod addresses do not
    # depend on the generated names
    return sorted(pods, key=lambda p: (p["metadata"]["name"] == "web-extra",
                                       p["metadata"]["name"]))


def _endpoints(k: Kubectl, service: str) -> list[Doc]:
    slices = k.get("endpointslices", "-n", NS,
                   f"--selector=kubernetes.io/service-name={service}")["items"]
    return [e for s in slices for e in s.get("endpoints") or []]


def _ready_endpoints(k: Kubectl, service: str) -> int:
    return sum(1 for e in _endpoints(k, service) if e["conditions"].get("ready"))


def _terminating(k: Kubectl, service: str) -> bool:
    return any(e["conditions"].get("terminating") for e in _endpoints(k, service))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tabby-capture-") as tmp, \
            ControlPlane(Path(tmp), service_ranges=SERVICE_RANGES) as cp:
        capture(cp, out)


if __name__ == "__main__":
    main()
