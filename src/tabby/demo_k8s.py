"""``make demo-k8s``: the demo's story in Kubernetes mode, driven with kubectl.

A 3-node dual-stack lab whose datastore is a real Kubernetes control plane
(etcd, kube-apiserver, kube-controller-manager, kube-scheduler, built from
the Kubernetes Go module), a kubelet stand-in per node, tabby's agents and
BIRD. Ordinary manifests go in with kubectl: Deployments the scheduler
places, Services whose ClusterIPs the API server allocates and whose
EndpointSlices the controller-manager keeps, NetworkPolicies, and tabby's
own kinds as custom resources. Each command is printed before it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tabby.demo import ROOT, answer, run, step
from tabby.kube import binaries

LAB = os.environ.get("TABBY_LAB", "tabby")


def kubectl(*args: str, show: bool = True, check: bool = True) -> str:
    argv = [binaries.program("kubectl"), *args]
    if show:
        print(f"$ kubectl {' '.join(args)}", flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if show:
        print((done.stdout or done.stderr).rstrip(), flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"demo: kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def kube_json(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json", show=False))


def first_pod(namespace: str, app: str) -> str:
    items = kube_json("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return str(sorted(p["metadata"]["name"] for p in items)[0])


def load_balancer_ip(namespace: str, name: str, deadline: float = 30.0) -> str:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        status = kube_json("service", name, "-n", namespace).get("status") or {}
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        if ingress:
            return str(ingress[0]["ip"])
        time.sleep(0.5)
    raise SystemExit(f"demo: service {namespace}/{name} got no LoadBalancer address")


def main() -> int:
    if os.geteuid() != 0:
        print("demo: the lab builds network namespaces; run `make demo-k8s` as root",
              file=sys.stderr)
        return 1
    os.chdir(ROOT)
    from tabby.lab.state import load
    step("A 3-node dual-stack lab on a real Kubernetes control plane (v"
         f"{binaries.KUBERNETES_VERSION.lstrip('v')}), BGP mesh, FRR on the ToR")
    if load(LAB) is not None:
        run("lab", "down")
    run("lab", "up", "--nodes", "3", "--stack", "dual", "--bgp", "mesh",
        "--datastore", "kubernetes")
    state = load(LAB)
    assert state is not None
    kubeconfig = str(Path(state.datastore.removeprefix("kubernetes://")))
    os.environ["KUBECONFIG"] = kubeconfig
    print(f"$ export KUBECONFIG={kubeconfig}")
    kubectl("get", "nodes", "-o", "wide")
    kubectl("api-resources", "--api-group=tabby.dev")
    step("Ordinary manifests: Deployments, a ClusterIP and a LoadBalancer Service")
    kubectl("apply", "-f", "examples/kubernetes/app.yaml")
    kubectl("-n", "shop", "rollout", "status", "deploy/frontend", "deploy/backend", "deploy/db",
            "--timeout=60s")
    kubectl("-n", "ops", "rollout", "status", "deploy/monitor", "--timeout=60s")
    kubectl("get", "pods", "-A", "-o", "wide", "-l", "app")
    kubectl("get", "services,endpointslices", "-n", "shop")
    step("tabby's view: workload endpoints its agents wrote (custom resources)")
    kubectl("get", "workloadendpoints.tabby.dev", "-A")
    step("Every pod against every pod's ports, IPv4, then IPv6")
    run("lab", "probe", "--family", "ipv4")
    run("lab", "probe", "--family", "ipv6")
    step("Services: the API server's ClusterIP, tabby's LoadBalancer address over BGP")
    backend = kube_json("service", "backend", "-n", "shop")["spec"]["clusterIP"]
    monitor = first_pod("ops", "monitor")
    print("ClusterIP from the monitor pod (a backend answers with its name):")
    answer(f"{LAB}_ops_{monitor}", str(backend), 80)
    lb_ip = load_balancer_ip("shop", "frontend")
    print("LoadBalancer IP from outside the cluster (the lab's ext namespace, via the ToR):")
    answer(f"{LAB}-ext", lb_ip, 80)
    step("Policy with kubectl: isolate shop, open frontend -> backend -> db")
    kubectl("apply", "-f", "examples/policy/default-deny.yaml")
    kubectl("apply", "-f", "examples/policy/allow-frontend.yaml")
    time.sleep(1.0)  # the agents' next pass; probes below show the result
    run("lab", "probe", "--family", "ipv4", check=False)
    step("tabby's own policy kinds are CRDs: a GlobalNetworkPolicy with kubectl")
    kubectl("apply", "-f", "examples/kubernetes/tabby-policy.yaml")
    kubectl("get", "globalnetworkpolicies")
    time.sleep(1.0)
    run("lab", "probe", "--family", "ipv4", "--protocol", "udp", "--port", "9100",
        check=False)
    step("Why? tabby policy explain reads the same objects from the API server")
    frontend, backend_pod = first_pod("shop", "frontend"), first_pod("shop", "backend")
    run("policy", "explain", "--from", f"shop/{frontend}", "--to", f"shop/{backend_pod}",
        "--port", "8080")
    run("policy", "explain", "--from", f"ops/{monitor}", "--to", f"shop/{backend_pod}",
        "--port", "9100", "--protocol", "udp")
    step("Explore further")
    print(f"""  export KUBECONFIG={kubeconfig}
  kubectl get pods -A -o wide; kubectl get ippools,workloadendpoints -A
  kubectl -n shop scale deploy/backend --replicas=4 && tabby --lab {LAB} lab probe
  tabby --lab {LAB} node status --node node-2
  ip netns exec {LAB}-node-1 nft list table inet tabby

Take it down with:
  .venv/bin/tabby --lab {LAB} lab down""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
