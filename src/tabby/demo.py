"""``make demo``: a 3-node dual-stack lab routed with BGP, pods across nodes,
services, and policy taking effect.

Runs the same ``tabby`` commands a person would type, printing each one
first, so the demo doubles as a tutorial. It leaves the lab up for
exploring and ends with how to take it down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TABBY = str(Path(sys.executable).with_name("tabby"))
LAB = os.environ.get("TABBY_LAB", "tabby")


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m" if sys.stdout.isatty() else f"\n== {title}", flush=True)


def run(*args: str, check: bool = True) -> int:
    shown = " ".join(["tabby", *args])
    print(f"$ {shown}", flush=True)
    code = subprocess.call([TABBY, *args], env={**os.environ, "TABBY_LAB": LAB})
    if check and code != 0:
        print(f"demo: `{shown}` failed with exit code {code}", file=sys.stderr)
        raise SystemExit(code)
    return code


def shell(*argv: str) -> str:
    """Run a plain command (shown first), return its output."""
    print(f"$ {' '.join(argv)}", flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    print(done.stdout.rstrip() or done.stderr.rstrip(), flush=True)
    return done.stdout


def get(*args: str) -> dict[str, Any]:
    out = subprocess.run([TABBY, "get", *args, "-o", "json"], capture_output=True, text=True,
                         check=True, env={**os.environ, "TABBY_LAB": LAB}).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def load_balancer_ip(deadline: float = 20.0) -> str:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        status = get("service", "frontend", "-n", "shop").get("status") or {}
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        if ingress:
            return str(ingress[0]["ip"])
        time.sleep(0.5)
    raise SystemExit("demo: the LoadBalancer service got no address")


def answer(netns: str, ip: str, port: int, deadline: float = 10.0) -> None:
    """Connect from ``netns`` and show what the listener answered (its pod's name).

    The agents program a new service within a pass (tens of milliseconds after
    its EndpointSlice is written), so the first attempt may still be refused.
    """
    argv = ["ip", "netns", "exec", netns, "busybox", "nc", "-w", "2", ip, str(port)]
    print(f"$ {' '.join(argv)}", flush=True)
    end = time.monotonic() + deadline
    while True:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.stdout.strip() or time.monotonic() > end:
            break
        time.sleep(0.2)
    print(done.stdout.rstrip() or done.stderr.rstrip(), flush=True)


def main() -> int:
    if os.geteuid() != 0:
        print("demo: the lab builds network namespaces; run `make demo` as root", file=sys.stderr)
        return 1
    os.chdir(ROOT)
    step("A fresh 3-node dual-stack lab: one agent and one BIRD per node, FRR on the ToR")
    from tabby.lab.state import load
    if load(LAB) is not None:  # a lab left from an earlier run
        run("lab", "down")
    run("lab", "up", "--nodes", "3", "--stack", "dual", "--bgp", "mesh")
    run("lab", "status")
    step("BGP sessions, as BIRD on node-1 sees them")
    run("node", "status", "--node", "node-1")
    step("Pods, wired through tabby-cni exactly as a kubelet's runtime would")
    run("apply", "-f", "examples/pods.yaml")
    run("get", "pods", "-A")
    step("Routes to other nodes' blocks, learned over BGP (proto bird) on node-2")
    shell("ip", "-n", f"{LAB}-node-2", "route", "show", "proto", "bird")
    shell("ip", "-n", f"{LAB}-node-2", "-6", "route", "show", "proto", "bird")
    step("Every pod against every pod's ports, IPv4, then IPv6")
    run("lab", "probe", "--family", "ipv4")
    run("lab", "probe", "--family", "ipv6")
    step("Services: a ClusterIP and a LoadBalancer, load-balanced in nftables")
    run("apply", "-f", "examples/services.yaml")
    run("get", "services", "-n", "shop")
    cluster_ip = str(get("service", "backend", "-n", "shop")["spec"]["clusterIP"])
    print("ClusterIP from the monitor pod (the backend answers with its name):")
    answer(f"{LAB}_ops_monitor", cluster_ip, 80)
    lb_ip = load_balancer_ip()
    print("LoadBalancer IP from outside the cluster (the lab's ext namespace, via the ToR):")
    answer(f"{LAB}-ext", lb_ip, 80)
    step("Policy: isolate namespace shop, then open frontend -> backend -> db")
    run("apply", "-f", "examples/policy/default-deny.yaml")
    run("lab", "probe", "--family", "ipv4", check=False)
    run("apply", "-f", "examples/policy/allow-frontend.yaml")
    run("lab", "probe", "--family", "ipv4", check=False)
    step("Why? tabby policy explain uses the same semantics as the dataplane")
    run("policy", "explain", "--from", "shop/frontend", "--to", "shop/backend", "--port", "8080")
    run("policy", "explain", "--from", "ops/monitor", "--to", "shop/db", "--port", "5432")
    step("Explore further")
    print(f"""  export TABBY_LAB={LAB}
  .venv/bin/tabby get pods -A -o json           # status.podIP / podIPs like Kubernetes
  .venv/bin/tabby lab exec shop/frontend -- ip route
  .venv/bin/tabby lab probe --from shop/frontend -o json
  .venv/bin/tabby node status --node node-2
  .venv/bin/tabby ipam show
  ip netns exec {LAB}-node-1 nft list table inet tabby

Take it down with:
  .venv/bin/tabby lab down""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
