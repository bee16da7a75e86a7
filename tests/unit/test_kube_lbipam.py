"""LoadBalancer addresses on a Kubernetes cluster: the pure half of tabby controllers."""

from __future__ import annotations

import ipaddress
from typing import Any

from tabby.kube.lbipam import desired_ingress
from tabby.model import IPPool, Service


def pool(name: str, cidr: str, uses: list[str]) -> IPPool:
    return IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                 "metadata": {"name": name},
                                 "spec": {"cidr": cidr, "allowedUses": uses, "blockSize": 32}})


def service(name: str, kind: str = "LoadBalancer", created: str = "2026-12-06T10:00:00Z",
            ingress: tuple[str, ...] = (), **spec: Any) -> Service:
    return Service.from_manifest({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
        "spec": {"type": kind, "clusterIP": "198.18.128.10", "clusterIPs": ["198.18.128.10"],
                 "ipFamilies": ["IPv4"], "ports": [{"port": 80, "nodePort": 30080}]
                 if kind != "ClusterIP" else [{"port": 80}], **spec},
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}})


LB = pool("lb", "198.18.144.0/30", ["LoadBalancer"])
PODS = pool("pods", "198.19.0.0/16", ["Workload"])


def test_load_balancers_get_addresses_from_load_balancer_pools_only() -> None:
    got = desired_ingress([service("a")], [PODS, LB])
    (ip,) = got[("shop", "a")]
    assert ip in ipaddress.ip_network("198.18.144.0/30")


def test_an_address_held_is_kept_and_not_given_twice() -> None:
    held = service("a", ingress=("198.18.144.2",))
    newer = service("b", created="2026-12-06T11:00:00Z")
    got = desired_ingress([newer, held], [LB])
    assert got[("shop", "a")] == (ipaddress.ip_address("198.18.144.2"),)
    assert got[("shop", "b")] and got[("shop", "b")] != got[("shop", "a")]


def test_the_oldest_services_win_a_full_pool() -> None:
    services = [service(n, created=f"2026-12-06T1{i}:00:00Z") for i, n in enumerate("abcdef")]
    got = desired_ingress(services[::-1], [LB])
    served = [n for n in "abcdef" if got[("shop", n)]]
    assert served == list("abcdef")[:len(served)] and 0 < len(served) < 6
    assert len({got[("shop", n)] for n in served}) == len(served)


def test_a_service_no_longer_a_load_balancer_loses_its_address() -> None:
    was = service("was", kind="NodePort", ingress=("198.18.144.1",))
    assert desired_ingress([was], [LB]) == {("shop", "was"): ()}


def test_the_answer_does_not_depend_on_the_input_order() -> None:
    services = [service(n, created=f"2026-12-06T1{i}:00:00Z") for i, n in enumerate("abc")]
    assert desired_ingress(services, [LB]) == desired_ingress(services[::-1], [LB])
