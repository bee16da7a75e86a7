"""Services on a real lab: ClusterIP, NodePort, affinity, hairpin, no endpoints, Local.

One two-node dual-stack lab (``ts1``) for the module. Services go in through
``tabby apply`` (the lab allocates and writes their slices); connections come
from the lab's prober run inside a pod (or the ToR, an outside client here),
one new connection per probe, so counting the answers (each listener answers
with its pod's name) shows how the service spreads them.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tabby.lab import prober, system
from tabby.lab.pods import LabPods
from tabby.lab.state import LabState, load, require
from tabby.model import EndpointSlice, Pod, Service
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

LAB = "ts1"
TABBY = [sys.executable, "-m", "tabby.cli.main"]
WEB_PORTS = [{"containerPort": 8080, "name": "http"},
             {"containerPort": 5353, "protocol": "UDP", "name": "dns"}]

TIMEOUT = 15.0  # seconds a wait_for in this module may take


def tabby(*args: str, stdin: str | None = None, check: bool = True
          ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*TABBY, "--lab", LAB, *args], input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"tabby {' '.join(args)}: {done.stdout}\n{done.stderr}")
    return done


def apply(*docs: dict[str, Any]) -> None:
    tabby("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def pod(name: str, node: str, labels: dict[str, str], ports: list[dict[str, Any]]) -> Pod:
    return Pod.from_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "labels": labels}, "spec": {"nodeName": node, "containers": [
            {"name": "main", "ports": ports}]}})


def service(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def hits(netns: str, address: str, port: int, protocol: str = "tcp", count: int = 40,
         timeout: float = 1.0) -> list[str]:
    """The answers (or errors) of ``count`` new connections from ``netns``."""
    request = {"timeout": timeout, "probes": [
        {"id": i, "address": address, "port": port, "protocol": protocol, "expect": ""}
        for i in range(count)]}
    done = subprocess.run(system.in_netns(netns, [sys.executable, "-I", "-S", prober.__file__]),
                          input=json.dumps(request), capture_output=True, text=True,
                          timeout=60, check=True)
    return [r["answer"] or r["error"] for r in json.loads(done.stdout)["results"]]


def settle(what: str, sample: Callable[[], list[str]], want: set[str],
           timeout: float = 15.0) -> list[str]:
    """Sample until the set of answers is ``want`` (agents program asynchronously)."""
    seen: list[str] = []

    def ok() -> bool:
        seen[:] = sample()
        return set(seen) == want
    try:
        wait_for(what, ok, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answers {collections.Counter(seen)}") from None
    return seen


def svc(name: str) -> Service:
    with LabPods.open(LAB) as driver:
        return driver.client.get(Service, name, "default")


def netns_of(ref: str) -> str:
    namespace, _, name = ref.rpartition("/")
    record = require(LAB).pod(namespace or "default", name)
    assert record is not None
    return record.netns


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    if load(LAB) is not None:
        tabby("lab", "down", "--name", LAB)
    try:
        tabby("lab", "up", "--name", LAB, "--nodes", "2", "--stack", "dual")
        with LabPods.open(LAB) as driver:
            results = driver.apply_pods([
                pod("web-1", "node-1", {"app": "web"}, WEB_PORTS),
                pod("web-2", "node-2", {"app": "web"}, WEB_PORTS),
                pod("web-3", "node-2", {"app": "web"}, WEB_PORTS),
                pod("client", "node-1", {"app": "client"}, [])])
            assert results == ["created"] * 4
        apply(service("web", {"selector": {"app": "web"}, "ipFamilyPolicy": "PreferDualStack",
                              "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                                        {"name": "dns", "port": 53, "protocol": "UDP",
                                         "targetPort": 5353}]}),
              service("sticky", {"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                                 "ports": [{"port": 80, "targetPort": 8080}]}),
              service("empty", {"selector": {"app": "nobody"}, "ports": [
                  {"name": "http", "port": 80}, {"name": "dns", "port": 53,
                                                 "protocol": "UDP"}]}),
              service("outside", {"type": "NodePort", "selector": {"app": "web"},
                                  "ipFamilyPolicy": "PreferDualStack",
                                  "ports": [{"port": 80, "targetPort": 8080}]}),
              service("local", {"type": "NodePort", "externalTrafficPolicy": "Local",
                                "selector": {"app": "web"}, "ports": [
                                    {"name": "dns", "port": 53, "protocol": "UDP",
                                     "targetPort": "dns"}]}))
        yield require(LAB)
    finally:
        if load(LAB) is not None:
            tabby("lab", "down", "--name", LAB)


WEB = {"web-1", "web-2", "web-3"}


def test_get_services_shows_kubectl_columns(lab: LabState) -> None:
    table = tabby("get", "services").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    web = svc("web")
    assert [ip.version for ip in web.spec.cluster_ips] == [4, 6]
    row = next(line.split() for line in table if line.startswith("web "))
    assert row[1:5] == ["ClusterIP", str(web.spec.cluster_ips[0]), "<none>", "80/TCP,53/UDP"]
    node_port = svc("outside").spec.ports[0].node_port
    assert node_port is not None and 30000 <= node_port <= 32767
    slices = json.loads(tabby("get", "endpointslices", "-o", "json").stdout)["items"]
    web_slices = [EndpointSlice.from_manifest(s) for s in slices
                  if s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"]
    assert sorted(s.address_type for s in web_slices) == [4, 6]
    for s in web_slices:
        assert len(s.endpoints) == 3 and all(e.ready for e in s.endpoints)
        assert {(p.name, p.port) for p in s.ports} == {("http", 8080), ("dns", 5353)}


@pytest.mark.parametrize("version", [4, 6])
def test_cluster_ip_spreads_over_every_endpoint(lab: LabState, version: int) -> None:
    ip = str(svc("web").cluster_ip(version))
    settle(f"IPv{version} TCP answers from every web pod",
           lambda: hits(netns_of("client"), ip, 80), WEB)
    settle(f"IPv{version} UDP answers from every web pod",
           lambda: hits(netns_of("client"), ip, 53, "udp"), WEB)


def test_the_node_itself_reaches_a_cluster_ip(lab: LabState) -> None:
    ip = str(svc("web").cluster_ip(4))
    settle("answers from the node's own namespace",
           lambda: hits(lab.node("node-2").netns, ip, 80), WEB)


def test_session_affinity_sticks_to_one_endpoint(lab: LabState) -> None:
    ip = str(svc("sticky").cluster_ip(4))
    client, other = netns_of("client"), netns_of("web-1")
    wait_for("the sticky service to answer", lambda: hits(client, ip, 80, count=1)[0] in WEB,
             TIMEOUT)
    answers = hits(client, ip, 80, count=30)
    assert len(set(answers)) == 1 and answers[0] in WEB
    # another client is bound on its own (maybe elsewhere) and sticks too
    wait_for("a second client to be answered",
             lambda: hits(other, ip, 80, count=1)[0] in WEB, TIMEOUT)
    answers = hits(other, ip, 80, count=20)
    assert len(set(answers)) == 1 and answers[0] in WEB


def test_a_pod_reaches_itself_through_its_service(lab: LabState) -> None:
    ip = str(svc("web").cluster_ip(4))
    answers = settle("hairpin: web-1 among the answers to web-1",
                     lambda: hits(netns_of("web-1"), ip, 80, count=60), WEB)
    assert "web-1" in answers


def test_no_endpoints_is_refused_at_once(lab: LabState) -> None:
    ip = str(svc("empty").cluster_ip(4))
    started = time.monotonic()
    assert set(hits(netns_of("client"), ip, 80, count=5, timeout=3.0)) == {"ECONNREFUSED"}
    # UDP: ICMP port unreachable, which the socket reports as a refusal
    assert set(hits(netns_of("client"), ip, 53, "udp", count=5, timeout=3.0)) == {
        "Connection refused"}
    assert time.monotonic() - started < 2.5  # refused, not left to time out
    # a port the ClusterIP does not serve is refused too
    assert set(hits(netns_of("client"), ip, 81, count=2, timeout=3.0)) == {"ECONNREFUSED"}


def test_node_port_answers_on_every_node_from_outside(lab: LabState) -> None:
    node_port = svc("outside").spec.ports[0].node_port
    assert node_port is not None
    for node in lab.topology.nodes:
        for address in node.addresses():
            settle(f"{address.ip}:{node_port} from the ToR", functools.partial(
                hits, lab.topology.tor_netns, str(address.ip), node_port), WEB)


def peer(netns: str, address: str, port: int) -> str:
    """Ask a listener (UDP ``peer``) who it sees; '' on no answer."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET,"
            " socket.SOCK_DGRAM)\ns.settimeout(1.0)\n"
            "s.sendto(b'peer\\n',(sys.argv[1],int(sys.argv[2])))\n"
            "try:\n print(s.recv(200).decode().strip())\nexcept OSError:\n print('')\n")
    done = subprocess.run(system.in_netns(netns, [sys.executable, "-c", code, address,
                                                  str(port)]),
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def test_local_policy_keeps_the_client_address_and_local_endpoints(lab: LabState) -> None:
    node_port = svc("local").spec.ports[0].node_port
    assert node_port is not None
    tor = lab.topology.tor_netns
    node1, node2 = (str(n.addresses()[0].ip) for n in lab.topology.nodes)
    gateway = str(lab.topology.rack(1).gateways()[0].ip)
    wait_for("node-1 to answer from web-1 with the ToR's own address",
             lambda: peer(tor, node1, node_port) == f"web-1 {gateway}", TIMEOUT)
    seen = {peer(tor, node2, node_port) for _ in range(12)}
    assert seen == {f"web-2 {gateway}", f"web-3 {gateway}"}


def test_removing_an_endpoint_stops_traffic_to_it(lab: LabState) -> None:
    ip = str(svc("web").cluster_ip(4))
    with LabPods.open(LAB) as driver:
        driver.delete_pod("default", "web-3")
    settle("answers only from web-1 and web-2", lambda: hits(netns_of("client"), ip, 80),
           {"web-1", "web-2"})
    node_port = svc("local").spec.ports[0].node_port
    assert node_port is not None
    with LabPods.open(LAB) as driver:
        driver.delete_pod("default", "web-1")
    # Local policy: node-1 has no endpoint left, so it drops (no answer, no refusal)
    node1 = str(lab.topology.nodes[0].addresses()[0].ip)
    wait_for("node-1 to stop answering for the Local service",
             lambda: peer(lab.topology.tor_netns, node1, node_port) == "", TIMEOUT)
    assert hits(netns_of("client"), ip, 80, count=10) == ["web-2"] * 10


def test_remembered_clients_survive_a_full_replace_of_the_table() -> None:
    """The agent replaces its table on every full pass; affinity must outlive that."""
    from tabby.dataplane.nft import NftCommand, NftReconciler
    from tabby.nft.model import NftSet, Ruleset
    name = "ts-nftkeep"
    system.delete_netns([name])
    system.add_netns([name])
    try:
        rec = NftReconciler(NftCommand(prefix=("ip", "netns", "exec", name)))
        desired = Ruleset.of(sets=[NftSet("svcaff-x", "ipv4_addr", flags=("dynamic", "timeout"))])
        assert not rec.apply(desired).errors
        system.run(system.in_netns(name, ["nft", "add", "element", "inet", "tabby", "svcaff-x",
                                          "{ 198.18.7.7 timeout 600s }"]))
        assert not rec.apply(desired, full=True).errors
        listing = system.run(system.in_netns(name, ["nft", "list", "set", "inet", "tabby",
                                                    "svcaff-x"]))
        assert "198.18.7.7 timeout 10m expires 9m5" in listing
    finally:
        system.delete_netns([name])
