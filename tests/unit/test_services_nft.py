"""The services part of the nft table: verdicts, slots, the chains' typed rules (which
chain goes where, which map a rule reads), and deltas that touch elements only."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from tabby.marks import VETH_GLOB
from tabby.model import EndpointSlice, Node, Resource, Service
from tabby.nft.expr import (
    IIFNAME,
    Ct,
    Dnat,
    Endpoint,
    Goto,
    InlineVmap,
    Jump,
    MapLookup,
    Match,
    Numgen,
    Quoted,
    Reject,
    SetRef,
    Update,
    Verdict,
    Vmap,
    saddr,
)
from tabby.nft.model import Chain, Rule, Ruleset
from tabby.nft.render import render_delta
from tabby.services.nft import MARK, ServiceRules, services_part
from tabby.services.view import port_views
from tabby.snapshot import Snapshot

NODE = Node.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "Node",
                           "metadata": {"name": "node-1"},
                           "spec": {"bgp": {"ipv4Address": "198.18.0.11/24"}}})


def service(name: str, ip: str, **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80, "targetPort": 8080}])
    return Service.from_manifest({"apiVersion": "v1", "kind": "Service",
                                  "metadata": {"name": name},
                                  "spec": {"clusterIP": ip, "ipFamilies": ["IPv4"], **spec}})


def endpoints(service_name: str, *ips: str, node: str = "node-2", ready: bool = True,
              port: int = 8080) -> EndpointSlice:
    return EndpointSlice.from_manifest({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-x", "labels": {
            "kubernetes.io/service-name": service_name}},
        "addressType": "IPv4", "ports": [{"name": "", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}
                      for ip in ips]})


def part(*objects: Resource, node: str = "node-1") -> Ruleset:
    return services_part(Snapshot.build(nodes=[NODE], others=objects), node)


def elements(ruleset: Ruleset, name: str) -> dict[str, str]:
    if name in ruleset.maps:
        return dict(ruleset.maps[name].elements)
    return {e: "" for e in ruleset.sets[name].elements}


def verdicts(chain: Chain | Rule) -> list[Verdict]:
    """Where the chain's rules (or the rule) send a packet, in order (an inline vmap's
    too)."""
    out: list[Verdict] = []
    for rule in chain.rules if isinstance(chain, Chain) else (chain,):
        for t in rule.terms:
            if isinstance(t, Goto | Jump):
                out.append(t)
            elif isinstance(t, InlineVmap):
                out += [v for _, v in t.entries]
    return out


def reads(chain: Chain) -> list[str]:
    """The maps the chain's rules look up (verdict maps, DNAT maps), in order."""
    out: list[str] = []
    for rule in chain.rules:
        for t in rule.terms:
            if isinstance(t, Vmap):
                out.append(t.map)
            elif isinstance(t, Dnat) and isinstance(t.to, MapLookup):
                out.append(t.to.map)
    return out


def test_one_verdict_per_service_port_and_one_slot_per_endpoint() -> None:
    r = part(service("a", "198.18.128.1"), endpoints("a", "198.19.0.1", "198.19.0.2"))
    assert elements(r, "svc-ips-v4") == {"198.18.128.1 . tcp . 80": "goto svc-n2"}
    assert elements(r, "svc-eps-v4") == {"198.18.128.1 . tcp . 80 . 0": "198.19.0.1 . 8080",
                                         "198.18.128.1 . tcp . 80 . 1": "198.19.0.2 . 8080"}
    chain = r.chains["svc-n2"]  # shared by every service with two endpoints
    assert reads(chain) == ["svc-eps-v4", "svc-eps-v6"]
    lookups = [t.to for rule in chain.rules for t in rule.terms if isinstance(t, Dnat)]
    assert all(isinstance(to, MapLookup) and to.key.items[-1] == Numgen(2) for to in lookups)
    assert elements(r, "svc-cips-v4") == {"198.18.128.1": ""}


def test_hooks_and_fixed_chains_lead_to_the_lookups() -> None:
    r = part()
    assert {(h.base, v) for h in r.hooks for v in verdicts(h.rule)} == {
        ("nat-prerouting", Jump("svc-pre")), ("nat-output", Jump("svc-int")),
        ("nat-postrouting", Jump("svc-post")), ("filter-forward", Jump("svc-filter")),
        ("filter-output", Jump("svc-filter")), ("filter-input", Jump("svc-filter-in"))}
    assert all(h.rule.terms[0] == Match(Ct("state"), "new")
               for h in r.hooks if h.base.startswith("filter-"))
    pods, others = r.chains["svc-pre"].rules
    assert pods.terms == (Match(IIFNAME, Quoted(VETH_GLOB)), Goto("svc-int"))
    assert others.terms == (Goto("svc-ext"),)
    assert reads(r.chains["svc-int"]) == ["svc-ips-v4", "svc-ips-v6", "svc-np-v4", "svc-np-v6"]
    # from outside: the external maps, then a ClusterIP (marked for masquerade)
    assert reads(r.chains["svc-ext"]) == ["svc-xips-v4", "svc-xips-v6", "svc-xnp-v4",
                                          "svc-xnp-v6", "svc-ips-v4", "svc-ips-v6"]
    assert all(MARK in rule.terms for rule in r.chains["svc-ext"].rules[4:])
    assert reads(r.chains["svc-filter"]) == ["svc-noep-v4", "svc-noep-v6"]
    assert verdicts(r.chains["svc-filter"]) == [Goto("svc-reject")] * 2
    assert reads(r.chains["svc-filter-in"]) == ["svc-noep-v4", "svc-noep-v6",
                                                "svc-noepnp-v4", "svc-noepnp-v6"]
    assert [t for rule in r.chains["svc-reject"].rules for t in rule.terms
            if isinstance(t, Reject)] == [Reject(tcp_reset=True), Reject()]


def test_every_chain_and_map_a_rule_names_exists() -> None:
    r = part(service("a", "198.18.128.1", type="NodePort", externalIPs=["198.18.150.1"],
                     ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]),
             service("b", "198.18.128.2", type="NodePort", externalTrafficPolicy="Local",
                     sessionAffinity="ClientIP",
                     ports=[{"port": 80, "targetPort": 8080, "nodePort": 30081}]),
             endpoints("a", "198.19.0.1", "198.19.0.2", node="node-1"),
             endpoints("b", "198.19.0.3", node="node-1"))
    chains = r.all_chains()
    for chain in chains.values():
        assert {v.chain for v in verdicts(chain) if isinstance(v, Goto | Jump)} <= set(chains)
        assert set(reads(chain)) <= set(r.maps)
        sets = {t.operand.name for rule in chain.rules for t in rule.terms
                if isinstance(t, Match) and isinstance(t.operand, SetRef)}
        assert sets <= set(r.sets), chain.name
    for m in r.maps.values():  # the verdicts held in map elements name chains too
        assert {v.removeprefix("goto ") for _, v in m.elements if v.startswith("goto ")} \
            <= set(chains), m.name


def test_endpoint_changes_touch_elements_only() -> None:
    objs: list[Resource] = [service("a", "198.18.128.1"), service("b", "198.18.128.2"),
                            service("c", "198.18.128.3"),
                            endpoints("b", "198.19.0.5", "198.19.0.6", "198.19.0.7"),
                            endpoints("c", "198.19.0.8", "198.19.0.9")]
    before = part(*objs, endpoints("a", "198.19.0.1", "198.19.0.2"))
    swapped = part(*objs, endpoints("a", "198.19.0.1", "198.19.0.3"))
    grown = part(*objs, endpoints("a", "198.19.0.1", "198.19.0.2", "198.19.0.4"))
    for after in (swapped, grown):
        lines = render_delta(before, after).splitlines()
        assert lines and all(" element " in line for line in lines), lines
    assert any("goto svc-n3" in line for line in render_delta(before, grown).splitlines())
    # the last endpoint leaving: the verdict goes, the address now rejects in the filter hook
    empty = render_delta(before, part(*objs, endpoints("a", "198.19.0.1", ready=False)))
    assert all(" element " in line for line in empty.splitlines())
    assert "delete element inet tabby svc-ips-v4 { 198.18.128.1 . tcp . 80 }" in empty


def test_terminating_endpoints_serve_only_when_none_is_ready() -> None:
    slice_ = EndpointSlice.from_manifest({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "a-x", "labels": {"kubernetes.io/service-name": "a"}},
        "addressType": "IPv4", "ports": [{"name": "", "port": 8080}],
        "endpoints": [{"addresses": ["198.19.0.1"],
                       "conditions": {"ready": False, "serving": True, "terminating": True}},
                      {"addresses": ["198.19.0.2"],
                       "conditions": {"ready": False, "serving": False, "terminating": True}}]})
    (view,) = port_views(Snapshot.build(others=[service("a", "198.18.128.1"), slice_]))
    assert [str(b.address) for b in view.backends] == ["198.19.0.1"]


def test_external_traffic_policy() -> None:
    objs = [endpoints("a", "198.19.0.1", node="node-1"), endpoints("b", "198.19.0.2")]
    cluster = part(service("a", "198.18.128.1", type="NodePort", externalIPs=["198.18.150.1"],
                           ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]), *objs)
    assert elements(cluster, "svc-xips-v4") == {"198.18.150.1 . tcp . 80": "goto svc-m-n1"}
    assert elements(cluster, "svc-xnp-v4") == {"tcp . 30080": "goto svc-m-np-n1"}
    assert {"svc-m-n1", "svc-n1", "svc-m-np-n1", "svc-np-n1"} <= set(cluster.chains)
    # marked for masquerade, then the pick shared with the inside path
    assert [rule.terms for rule in cluster.chains["svc-m-np-n1"].rules] == [
        (MARK,), (Goto("svc-np-n1"),)]
    assert reads(cluster.chains["svc-np-n1"]) == ["svc-npeps-v4", "svc-npeps-v6"]
    local = part(service("a", "198.18.128.1", type="NodePort", externalTrafficPolicy="Local",
                         ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]),
                 service("b", "198.18.128.2", type="NodePort", externalTrafficPolicy="Local",
                         ports=[{"port": 80, "targetPort": 8080, "nodePort": 30081}]), *objs)
    assert elements(local, "svc-xnp-v4") == {"tcp . 30080": "goto svc-x-np-n1"}  # not b: remote
    assert elements(local, "svc-xnpeps-v4") == {"tcp . 30080 . 0": "198.19.0.1 . 8080"}
    assert reads(local.chains["svc-x-np-n1"]) == ["svc-xnpeps-v4", "svc-xnpeps-v6"]
    assert MARK not in {t for rule in local.chains["svc-x-np-n1"].rules for t in rule.terms}
    assert elements(local, "svc-noepnp-v4") == {"tcp . 30080": "drop", "tcp . 30081": "drop"}
    assert elements(local, "svc-np-v4")["tcp . 30081"] == "goto svc-np-n1"  # pods: any
    assert elements(local, "svc-hairpin-v4") == {"198.19.0.1 . 198.19.0.1": ""}


def test_no_endpoints_rejects_and_internal_local_drops() -> None:
    r = part(service("a", "198.18.128.1", type="LoadBalancer",
                     ports=[{"port": 80, "nodePort": 30080}]),
             service("b", "198.18.128.2", internalTrafficPolicy="Local"),
             endpoints("b", "198.19.0.2"))
    assert "198.18.128.1 . tcp . 80" not in elements(r, "svc-ips-v4")
    assert elements(r, "svc-noepnp-v4") == {"tcp . 30080": "goto svc-reject"}
    assert elements(r, "svc-noep-v4") == {"198.18.128.2 . tcp . 80": "drop"}
    assert set(elements(r, "svc-cips-v4")) == {"198.18.128.1", "198.18.128.2"}


def test_session_affinity_gets_chains_and_client_sets_of_its_own() -> None:
    r = part(service("a", "198.18.128.1", sessionAffinity="ClientIP",
                     sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}}),
             endpoints("a", "198.19.0.1", "198.19.0.2"))
    (verdict,) = elements(r, "svc-ips-v4").values()
    top = r.chains[verdict.removeprefix("goto ")]
    # a client seen before goes to its endpoint's chain; a new one is picked at random
    seen = {rule.terms[0]: rule.terms[1] for rule in top.rules[:2]}
    assert set(seen) == {Match(saddr(4), SetRef(name)) for name in r.sets
                         if name.startswith("svcaff-")}
    (pick,) = top.rules[2].terms
    assert isinstance(pick, InlineVmap) and pick.key == Numgen(2)
    assert [v for _, v in pick.entries] == list(seen.values())  # one entry per endpoint
    dnats: list[object] = []
    for goto in seen.values():
        assert isinstance(goto, Goto)
        remember, translate = r.chains[goto.chain].rules
        (update,) = remember.terms
        assert isinstance(update, Update) and update.timeout == 30
        assert update.key == saddr(4) and Match(saddr(4), SetRef(update.set)) in seen
        dnats += [t for t in translate.terms if isinstance(t, Dnat)]
    assert sorted(dnats, key=str) == [
        Dnat(4, Endpoint(ipaddress.IPv4Address(f"198.19.0.{i}"), 8080)) for i in (1, 2)]
    assert all(r.sets[n].flags == ("dynamic", "timeout") for n in r.sets if "aff" in n)
    assert "svc-n2" not in r.chains


def test_two_services_claiming_one_address_resolve_the_same_way_everywhere() -> None:
    objs = [service("a", "198.18.128.1", externalIPs=["198.18.150.1"]),
            service("b", "198.18.128.2", externalIPs=["198.18.150.1"]),
            endpoints("a", "198.19.0.1"), endpoints("b", "198.19.0.2", "198.19.0.3")]
    first, second = part(*objs), part(*reversed(objs))
    assert first == second
    assert elements(first, "svc-ips-v4")["198.18.150.1 . tcp . 80"] == "goto svc-n1"


def test_ipv6_and_headless() -> None:
    v6 = Service.from_manifest({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
                                "spec": {"clusterIPs": ["fd7a:bb1e:2::1"], "ipFamilies": ["IPv6"],
                                         "ports": [{"port": 80}]}})
    slice_ = EndpointSlice.from_manifest({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "a-x", "labels": {"kubernetes.io/service-name": "a"}},
        "addressType": "IPv6", "ports": [{"name": "", "port": 80}],
        "endpoints": [{"addresses": ["fd7a:bb1e:1::5"]}]})
    headless = Service.from_manifest({"apiVersion": "v1", "kind": "Service",
                                      "metadata": {"name": "h"},
                                      "spec": {"clusterIP": "None", "selector": {"a": "b"}}})
    r = part(v6, slice_, headless)
    assert elements(r, "svc-ips-v6") == {"fd7a:bb1e:2::1 . tcp . 80": "goto svc-n1"}
    assert elements(r, "svc-eps-v6") == {"fd7a:bb1e:2::1 . tcp . 80 . 0": "fd7a:bb1e:1::5 . 80"}
    assert ipaddress.ip_address("fd7a:bb1e:2::1") not in {
        ipaddress.ip_address(e) for e in elements(r, "svc-cips-v4")}


def test_a_long_lived_service_rules_answers_as_a_fresh_one() -> None:
    rng = random.Random(3)
    rules = {node: ServiceRules(node) for node in ("node-1", "node-2")}
    state: dict[str, list[Resource]] = {}
    for _ in range(60):
        name = rng.choice("abcde")
        ip = f"198.18.128.{ord(name)}"
        if rng.random() < 0.2:
            state.pop(name, None)
        else:
            policy = rng.choice(["Cluster", "Local"])
            ips = [f"198.19.0.{rng.randrange(1, 9)}" for _ in range(rng.randrange(0, 4))]
            state[name] = [service(name, ip, type="NodePort", externalTrafficPolicy=policy,
                                   ports=[{"port": 80, "targetPort": 8080,
                                           "nodePort": 30000 + ord(name)}]),
                           endpoints(name, *ips, node=rng.choice(["node-1", "node-2"]))]
        snapshot = Snapshot.build(nodes=[NODE], others=[o for objs in state.values()
                                                        for o in objs])
        for node in rng.sample(sorted(rules), 2):  # each node's rules keep their own shares
            assert rules[node].part(snapshot) == services_part(snapshot, node)
