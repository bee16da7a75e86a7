"""``make demo``: a 3-node dual-stack lab, pods across nodes, the probe matrix.

Runs the same ``tabby`` commands a person would type, printing each one
first, so the demo doubles as a tutorial. It leaves the lab up for
exploring and ends with how to take it down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def main() -> int:
    if os.geteuid() != 0:
        print("demo: the lab builds network namespaces; run `make demo` as root", file=sys.stderr)
        return 1
    os.chdir(ROOT)
    step("A fresh 3-node dual-stack lab (namespaces on this machine, one agent per node)")
    run("lab", "down", check=False)
    run("lab", "up", "--nodes", "3", "--stack", "dual")
    run("lab", "status")
    step("Pools and nodes the lab wrote to its datastore")
    run("get", "ippools")
    run("get", "nodes")
    step("Pods, wired through tabby-cni exactly as a kubelet's runtime would")
    run("apply", "-f", "examples/pods.yaml")
    run("get", "pods", "-A")
    step("Every pod against every pod's ports, IPv4")
    run("lab", "probe", "--family", "ipv4")
    step("... and IPv6")
    run("lab", "probe", "--family", "ipv6")
    step("Addresses come from per-node blocks (Calico's IPAM)")
    run("ipam", "show")
    run("get", "workloadendpoints", "-A")
    step("Explore further")
    print(f"""  export TABBY_LAB={LAB}
  .venv/bin/tabby get pods -A -o json           # status.podIP / podIPs like Kubernetes
  .venv/bin/tabby lab exec shop/frontend -- ip addr
  .venv/bin/tabby lab exec shop/frontend -- ip route
  .venv/bin/tabby lab probe --from shop/frontend -o json
  .venv/bin/tabby ipam check

Take it down with:
  .venv/bin/tabby lab down""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
