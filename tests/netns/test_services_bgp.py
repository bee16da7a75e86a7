"""LoadBalancer IPs from outside: advertised over BGP to the lab's ToR (FRR), reached from
the ``ext`` namespace behind it through ECMP; externalTrafficPolicy Local announced as
host routes by exactly the nodes with an endpoint, keeping the client's address.

One three-node dual-stack ``--bgp tor`` lab (``ts3``): web-1 on node-1, web-2 on
node-2, nothing on node-3. The ToR hashes ECMP on layer 4 here (set by this test)
so that connections from one client spread over the paths.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from tabby.lab import system
from tabby.lab.pods import LabPods
from tabby.lab.state import LabState, load, require
from tabby.model import BGPConfiguration, Service
from tests.netns.test_services import hits, peer, pod, service, settle
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "ts3"
TABBY = [sys.executable, "-m", "tabby.cli.main", "--lab", LAB]
PORTS = [{"containerPort": 8080, "name": "http"},
         {"containerPort": 5353, "protocol": "UDP", "name": "dns"}]
CLUSTER_RANGES = (ipaddress.ip_network("198.18.128.0/20"),
                  ipaddress.ip_network("fd7a:bb1e:2::/112"))
LB_RANGES = (ipaddress.ip_network("198.18.144.0/24"), ipaddress.ip_network("fd7a:bb1e:3::/120"))


def tabby(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run([*TABBY, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"tabby {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def lb_service(name: str, policy: str) -> dict[str, object]:
    return service(name, {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                          "ipFamilyPolicy": "PreferDualStack", "selector": {"app": "web"},
                          "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                                    {"name": "dns", "port": 53, "protocol": "UDP",
                                     "targetPort": "dns"}]})


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    if load(LAB) is not None:
        subprocess.run([*TABBY, "lab", "down", "--name", LAB], check=False, timeout=120)
    try:
        tabby("lab", "up", "--name", LAB, "--nodes", "3", "--stack", "dual", "--bgp", "tor")
        state = require(LAB)
        system.sysctl(state.topology.tor_netns, {"net.ipv4.fib_multipath_hash_policy": "1",
                                                 "net.ipv6.fib_multipath_hash_policy": "1"})
        with LabPods.open(LAB) as driver:
            assert driver.apply_pods([pod("web-1", "node-1", {"app": "web"}, PORTS),
                                      pod("web-2", "node-2", {"app": "web"}, PORTS)]) == [
                "created", "created"]
            driver.client.mutate(BGPConfiguration, "default", "", lambda c: dataclasses.replace(
                c, spec=dataclasses.replace(c.spec, service_cluster_ips=CLUSTER_RANGES,
                                            service_load_balancer_ips=LB_RANGES)))
        tabby("apply", "-f", "-", stdin=yaml.safe_dump_all(
            [lb_service("lb", "Cluster"), lb_service("lbl", "Local")]))
        yield require(LAB)
    finally:
        if load(LAB) is not None:
            subprocess.run([*TABBY, "lab", "down", "--name", LAB], check=False, timeout=120)


def ingress(name: str, version: int) -> str:
    with LabPods.open(LAB) as driver:
        svc = driver.client.get(Service, name, "default")
    return str(next(ip for ip in svc.ingress if ip.version == version))


def tor_nexthops(lab: LabState, address: str) -> set[str]:
    """The ToR's next hops for ``address``'s host route ({} if it has none)."""
    flag = "-6" if ":" in address else "-4"
    prefix = "128" if ":" in address else "32"
    out = subprocess.run(["ip", "-n", lab.topology.tor_netns, "-j", flag, "route", "show",
                          f"{address}/{prefix}"], capture_output=True, text=True,
                         check=True).stdout
    routes = json.loads(out or "[]")
    hops: set[str] = set()
    for route in routes:
        for hop in route.get("nexthops", [route]):
            if "gateway" in hop:
                hops.add(hop["gateway"])
    return hops


@pytest.mark.parametrize("version", [4, 6])
def test_ext_reaches_a_load_balancer_ip_through_the_tor(lab: LabState, version: int) -> None:
    ext = f"{LAB}-ext"
    settle(f"IPv{version} answers from both pods through the ToR",
           lambda: hits(ext, ingress("lb", version), 80, count=30), {"web-1", "web-2"},
           timeout=30)


def test_local_policy_is_announced_by_the_nodes_with_endpoints_only(lab: LabState) -> None:
    address = ingress("lbl", 4)
    nodes = {n.name: str(n.addresses()[0].ip) for n in lab.topology.nodes}
    wait_for("the ToR to route the Local service's /32 to node-1 and node-2",
             lambda: tor_nexthops(lab, address) == {nodes["node-1"], nodes["node-2"]}, 30)
    wait_for("an IPv6 host route with two paths",
             lambda: len(tor_nexthops(lab, ingress("lbl", 6))) == 2, 30)
    assert tor_nexthops(lab, ingress("lb", 4)) == set()  # Cluster: the range only


@pytest.mark.parametrize("version", [4, 6])
def test_local_policy_keeps_the_ext_client_address(lab: LabState, version: int) -> None:
    ext = f"{LAB}-ext"
    client = str(lab.topology.ext.addresses[0 if version == 4 else 1].ip)  # type: ignore[union-attr]
    address = ingress("lbl", version)
    seen: set[str] = set()

    def both() -> bool:
        seen.add(peer(ext, address, 53))
        return seen >= {f"web-1 {client}", f"web-2 {client}"}
    wait_for(f"both pods to see {client} over IPv{version}", both, 30)
    assert seen <= {f"web-1 {client}", f"web-2 {client}", ""}


def test_an_endpoint_leaving_withdraws_its_node_route(lab: LabState) -> None:
    address = ingress("lbl", 4)
    node1 = str(lab.topology.nodes[0].addresses()[0].ip)
    with LabPods.open(LAB) as driver:
        driver.delete_pod("default", "web-2")
    wait_for("only node-1 to announce the /32", lambda: tor_nexthops(lab, address) == {node1},
             30)
    answers = {peer(f"{LAB}-ext", address, 53) for _ in range(6)}
    assert answers == {f"web-1 {lab.topology.ext.addresses[0].ip}"}  # type: ignore[union-attr]
