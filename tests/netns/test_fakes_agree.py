"""The fakes against the real kernel and nft: one sequence of operations, both end alike.

The sequence uses the adapter's calls only (links, addresses, routes and
RouteReconciler passes, plus a few sysctls, VXLAN, FDB and neighbour calls),
once on a fresh namespace and once on a FakeNetlink.
After every step the outcome (a value, or the errno of the NetlinkError) and
the main table of both families (interfaces by name) must be equal: this is
what keeps the root-free tests in tests/unit/test_dataplane_*.py honest.
FakeNft gets the same treatment: NftReconciler passes and refused scripts on
the real nft in a namespace and on the fake, compared by ``list table`` JSON.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tabby.calc.routes import Route
from tabby.dataplane.netlink import CallCounts, KernelRoute, Netlink, NetlinkError, opener
from tabby.dataplane.nft import NftCommand, NftReconciler, NftRunner
from tabby.dataplane.routes import RouteReconciler, RouteSync
from tabby.errors import DataplaneError
from tabby.marks import ROUTE_PROTOCOL
from tabby.nft.model import Chain, HookEntry, NftMap, NftSet, Rule, Ruleset
from tabby.testing.fakes import FakeNetlink, FakeNft

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

net = ipaddress.ip_network
addr = ipaddress.ip_address
itf = ipaddress.ip_interface
Kernel = Any  # a Netlink or a FakeNetlink: the same calls
Step = tuple[str, Callable[[Kernel, str], object]]
TAB = "tab000000000001"
MAC = "02:aa:00:00:00:01"


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"tfk-agree-{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def replace(dst: str, **kw: Any) -> Callable[[Kernel, str], object]:
    kw.setdefault("protocol", ROUTE_PROTOCOL)
    if isinstance(kw.get("gateway"), str):
        kw["gateway"] = addr(kw["gateway"])
    return lambda k, path: k.replace_route(net(dst), **kw)


def delete_ours(dst: str, scope: int | None = None) -> Callable[[Kernel, str], object]:
    def run(k: Kernel, path: str) -> object:
        found = [r for v in (4, 6) for r in k.routes(v, ROUTE_PROTOCOL) if r.dst == net(dst)]
        if not found:
            return "none of ours"
        route: KernelRoute = found[0]
        if scope is not None:
            route = KernelRoute(route.dst, route.type, route.gateway, route.oif, route.protocol,
                                scope, route.priority, route.onlink)
        return k.delete_route(route)
    return run


DESIRED = frozenset({
    Route(net("198.19.0.0/26"), "blackhole"),
    Route(net("198.19.0.64/26"), "unicast", addr("198.18.0.12")),
    Route(net("198.19.0.1/32"), "unicast", None, TAB),
    Route(net("198.19.0.128/26"), "unicast", addr("198.18.99.1")),  # does not resolve
    Route(net("fd7a:bb1e:1::/122"), "blackhole"),
    Route(net("fd7a:bb1e:1::1/128"), "unicast", None, TAB),
    Route(net("fd7a:bb1e:7::/64"), "unicast", addr("fd7a:bb1e::12")),
})


def reconcile(desired: frozenset[Route], rec: dict[str, RouteReconciler]
              ) -> Callable[[Kernel, str], object]:
    def run(k: Kernel, path: str) -> object:
        if "it" not in rec:
            netlink = k.open if isinstance(k, FakeNetlink) else opener(CallCounts())
            rec["it"] = RouteReconciler(CallCounts(), netns=path, netlink=netlink)
        return summary(rec["it"].apply(desired, full=True))
    return run


def summary(sync: RouteSync) -> tuple[object, ...]:
    return (sorted(map(str, sync.replaced)), sorted(str(r.dst) for r in sync.deleted),
            sync.unchanged, sorted(map(str, sync.conflicts)), sorted(map(str, sync.unresolved)),
            sorted(map(plain, sync.errors)), sync.swept)


def plain(message: str) -> str:
    """A NetlinkError's text without the kernel's own explanation (its extended ack,
    "(Nexthop has invalid gateway)"), which the fake, knowing errnos only, does not give."""
    return re.sub(r" \([^()]*\)$", "", message)


def steps() -> list[Step]:
    rec: dict[str, RouteReconciler] = {}
    return [
        # the fake models no duplicate address detection
        *[(f"no DAD {x}", lambda k, p, x=x: k.sysctl_set(f"net/ipv6/conf/{x}/accept_dad", "0"))
          for x in ("all", "default")],
        ("veth up0", lambda k, p: k.add_veth("up0", "up1", p) and None),
        ("veth tab", lambda k, p: k.add_veth(TAB, "pp1", p) and None),
        ("veth dn0", lambda k, p: k.add_veth("dn0", "dn1", p) and None),
        ("name taken", lambda k, p: k.add_veth("up0", "up9", p)),
        ("name too long", lambda k, p: k.add_veth("a-name-too-long-x", "up9", p)),
        ("sysctls", lambda k, p: [k.sysctl_get(f"net/{x}") for x in (
            "ipv4/conf/up0/proxy_arp", "ipv4/neigh/up0/proxy_delay", "ipv6/conf/up0/accept_dad",
            "ipv4/conf/all/forwarding", "ipv6/conf/lo/accept_dad")]),
        ("ip_forward", lambda k, p: k.sysctl_set("net/ipv4/ip_forward", "1")),
        ("forwarding follows", lambda k, p: k.sysctl_get("net/ipv4/conf/up0/forwarding")),
        ("sysctl of no link", lambda k, p: k.sysctl_get("net/ipv4/conf/nope/proxy_arp")),
        ("sysctl not a number", lambda k, p: k.sysctl_set("net/ipv4/ip_forward", "yes")),
        ("vxlan", lambda k, p: k.add_vxlan("vxlan.tabby", vni=4096, local=addr("198.18.0.11"),
                                           port=4789, mac=MAC, mtu=1450)),
        ("vxlan, VNI taken", lambda k, p: k.add_vxlan("vx2", vni=4096, local=addr("198.18.0.9"),
                                                      port=4789, mac=MAC, mtu=1450)),
        ("vxlan v6, same VNI", lambda k, p: k.add_vxlan(
            "vx6", vni=4096, local=addr("fd7a:bb1e::11"), port=4789, mac=MAC, mtu=1450)),
        ("vxlan info", lambda k, p: (k.vxlan_info("vxlan.tabby"), k.vxlan_info("up0"))),
        ("vxlan up", lambda k, p: k.set_link("vxlan.tabby", up=True)),
        ("vxlan address", lambda k, p: k.add_address("vxlan.tabby", itf("198.19.0.0/32"))),
        ("fdb", lambda k, p: k.replace_fdb("vxlan.tabby", MAC, addr("198.18.0.12"))),
        ("fdb moved", lambda k, p: k.replace_fdb("vxlan.tabby", MAC, addr("198.18.0.13"))),
        ("neighbour", lambda k, p: k.replace_neighbour("vxlan.tabby", addr("198.19.0.64"), MAC)),
        ("read back", lambda k, p: (k.fdb("vxlan.tabby"), k.neighbours("vxlan.tabby", 4))),
        ("neighbour not there", lambda k, p: k.delete_neighbour("vxlan.tabby", addr("10.0.0.1"))),
        ("fdb, other dst", lambda k, p: k.delete_fdb("vxlan.tabby", MAC, addr("10.0.0.1"))),
        ("fdb deleted", lambda k, p: k.delete_fdb("vxlan.tabby", MAC, addr("198.18.0.13"))),
        ("fdb not there", lambda k, p: k.delete_fdb("vxlan.tabby", MAC, addr("198.18.0.13"))),
        ("fdb read back", lambda k, p: k.fdb("vxlan.tabby")),
        ("vxlan deleted", lambda k, p: k.delete_link("vxlan.tabby")),
        ("MTU too big", lambda k, p: k.set_link("up0", mtu=70000)),
        ("address while down", lambda k, p: k.add_address("up0", itf("198.18.0.11/24"))),
        ("route via a down link", replace("198.19.0.2/32", dev="dn0", scope_link=True)),
        *[(f"{dev} up", lambda k, p, d=dev: k.set_link(d, up=True))
          for dev in ("lo", "up0", TAB, "pp1")],
        ("up1 up (carrier)", lambda k, p: k.set_link("up1", up=True)),
        ("v6 address", lambda k, p: k.add_address("up0", itf("fd7a:bb1e::11/64"), nodad=True)),
        ("v4 /32 address", lambda k, p: k.add_address("up0", itf("198.18.5.5/32"))),
        ("v6 /128 address", lambda k, p: k.add_address(TAB, itf("fd7a:bb1e:5::5/128"))),
        ("address again", lambda k, p: k.add_address("up0", itf("198.18.0.11/24"))),
        ("gateway", replace("198.19.0.64/26", gateway="198.18.0.12")),
        ("gateway off-link v4", replace("198.19.0.128/26", gateway="198.18.99.1")),
        ("gateway", replace("fd7a:bb1e:1::40/122", gateway="fd7a:bb1e::12")),
        ("gateway off-link v6", replace("fd7a:bb1e:1::80/122", gateway="fd7a:bb1e:99::1")),
        ("gateway on the wrong link", replace("198.19.3.0/24", gateway="198.18.0.12", dev=TAB)),
        ("gateway on a down link", replace("198.19.3.0/24", gateway="198.18.0.12", dev="dn0")),
        ("device route", replace("198.19.0.1/32", dev=TAB, scope_link=True)),
        ("device route", replace("fd7a:bb1e:1::1/128", dev=TAB)),
        ("device route, down", replace("fd7a:bb1e:1::2/128", dev="dn0")),
        ("gateway via a device route", replace("198.19.4.0/24", gateway="198.19.0.1")),
        ("gateway via a gateway route", replace("198.19.5.0/24", gateway="198.19.0.65")),
        ("gateway in a blackhole", replace("fd7a:bb1e:6::/64", gateway="fd7a:bb1e:1::3")),
        ("blackhole", replace("198.19.0.0/26", type="blackhole")),
        ("blackhole", replace("fd7a:bb1e:1::/122", type="blackhole")),
        ("gateway in a blackhole", replace("fd7a:bb1e:6::/64", gateway="fd7a:bb1e:1::3")),
        ("foreign", replace("198.19.9.0/24", gateway="198.18.0.1", protocol=4)),
        ("foreign", replace("198.19.0.192/26", type="blackhole", protocol=12)),
        ("foreign", replace("fd7a:bb1e:7::/64", type="blackhole", protocol=12)),
        ("ours over foreign v4", replace("198.19.0.192/26", dev=TAB, scope_link=True)),
        ("moved gateway", replace("198.19.0.64/26", gateway="198.18.0.13")),
        ("onlink", replace("198.19.1.0/26", gateway="198.19.0.64", dev="up0", onlink=True)),
        ("onlink", replace("fd7a:bb1e:2::/64", gateway="fd7a:bb1e:1::40", dev="up0",
                           onlink=True)),
        ("onlink without a device", replace("198.19.2.0/26", gateway="10.9.9.9", onlink=True)),
        ("link-local gateway", replace("fd7a:bb1e:3::/64", gateway="fe80::1", dev="up0")),
        ("link-local gateway, no device", replace("fd7a:bb1e:4::/64", gateway="fe80::1")),
        ("unreachable", replace("fd7a:bb1e:8::/64", type="unreachable")),
        ("reconcile", reconcile(DESIRED, rec)),
        ("reconcile again", reconcile(DESIRED, rec)),
        ("delete wrong scope", delete_ours("198.19.0.0/26", scope=253)),
        ("delete", delete_ours("198.19.0.0/26")),
        ("delete", delete_ours("fd7a:bb1e:1::/122")),
        ("delete gone", lambda k, p: k.delete_route(KernelRoute(
            net("fd7a:bb1e:1::/122"), "blackhole", None, None, ROUTE_PROTOCOL, 0, 1024, False))),
        ("ours over foreign v6", replace("fd7a:bb1e:7::/64", dev=TAB)),
        ("sweep", reconcile(frozenset(r for r in DESIRED if r.dst.version == 6), rec)),
        ("v6 address removed", lambda k, p: k.delete_address("up0", itf("fd7a:bb1e::11/64"))),
        ("address not there", lambda k, p: k.delete_address("up0", itf("198.18.0.99/24"))),
        ("/32 address removed", lambda k, p: k.delete_address("up0", itf("198.18.5.5/32"))),
        ("last v4 address removed", lambda k, p: k.delete_address("up0", itf("198.18.0.11/24"))),
        ("link down", lambda k, p: k.set_link(TAB, up=False)),
        ("link up again", lambda k, p: k.set_link(TAB, up=True)),
        ("peer deleted", lambda k, p: k.delete_link("pp1")),
        ("deleted again", lambda k, p: k.delete_link("pp1")),
    ]


def outcome(k: Kernel, path: str, step: Callable[[Kernel, str], object]) -> object:
    try:
        return step(k, path)
    except NetlinkError as exc:
        return f"NetlinkError {errno.errorcode.get(exc.code, exc.code)}: {plain(str(exc))}"


def table(k: Kernel) -> list[tuple[object, ...]]:
    names = {link.index: link.name for link in k.links()}
    return sorted((str(r.dst), r.type, str(r.gateway), names.get(r.oif, r.oif), r.protocol,
                   r.scope, r.priority, r.onlink) for v in (4, 6) for r in k.routes(v))


def settled(k: Netlink) -> None:
    """Wait until every up link with carrier has its link-local route (the kernel adds
    them a moment after the carrier comes; the fake at once)."""
    deadline = time.monotonic() + 5
    while True:
        links = {link.index: link for link in k.links()}
        ready = {i for i, link in links.items() if link.up and link.name != "lo"
                 and (link.peer_index is None or links[link.peer_index].up)}
        have = {r.oif for r in k.routes(6) if r.dst == net("fe80::/64")}
        if ready <= have or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def test_fake_and_kernel_agree_on_every_step(netns: str) -> None:
    fake = FakeNetlink(netns)
    real_steps, fake_steps = steps(), steps()
    with Netlink.open(CallCounts(), netns) as real:
        for (label, run_real), (_, run_fake) in zip(real_steps, fake_steps, strict=True):
            real_result = outcome(real, netns, run_real)
            settled(real)
            fake_result = outcome(fake, netns, run_fake)
            assert fake_result == real_result, label
            assert table(fake) == table(real), label
        assert [x.name for x in fake.links()] == [x.name for x in real.links()]


def ruleset(members: set[str], rule: str = "tcp dport 22 accept") -> Ruleset:
    chain = Chain("policy-fwd", (Rule("ip saddr @pods accept", "allow pods"), Rule(rule)))
    return Ruleset.of(
        chains=[chain],
        sets=[NftSet("pods", "ipv4_addr", frozenset(members)),
              NftSet("aff", "ipv4_addr", flags=("dynamic", "timeout")),
              NftSet("pairs", "ipv4_addr . inet_service", frozenset({"198.19.0.1 . 80"}))],
        maps=[NftMap("to", "ipv4_addr", "verdict",
                     frozenset({("198.19.0.9", "jump policy-fwd")}))],
        hooks=[HookEntry("filter-forward", 100, Rule("jump policy-fwd"))])


def nft_steps(runner: NftRunner) -> list[tuple[str, Callable[[], object]]]:
    rec = NftReconciler(runner)

    def run(script: str) -> Callable[[], object]:
        return lambda: runner.run(script + "\n")

    def apply(rs: Ruleset, full: bool = False) -> Callable[[], object]:
        return lambda: (lambda r: (r.mode, r.script_lines, bool(r.errors)))(
            rec.apply(rs, full=full))

    return [
        ("first pass", apply(ruleset({"198.19.0.1"}))),
        ("delta", apply(ruleset({"198.19.0.1", "198.19.0.2"}))),
        ("nothing", apply(ruleset({"198.19.0.1", "198.19.0.2"}))),
        ("chain changed", apply(ruleset({"198.19.0.2"}, rule="tcp dport 23 accept"))),
        ("packet path", run("add element inet tabby aff { 198.19.0.7 timeout 1h }")),
        ("full pass keeps it", apply(ruleset({"198.19.0.2"}), full=True)),
        ("element twice", run("add element inet tabby pods { 198.19.0.2 }")),
        ("no such element", run("delete element inet tabby pods { 198.19.0.9 }")),
        ("jump nowhere", run("add rule inet tabby policy-fwd jump nowhere")),
        ("no such set", run("add rule inet tabby policy-fwd ip saddr @nowhere accept")),
        ("set redeclared", run("add set inet tabby pods { type ipv6_addr; }")),
        ("chain in use", run("delete chain inet tabby policy-fwd")),
        ("set in use", run("delete set inet tabby pods")),
        ("atomic", run("add element inet tabby pods { 198.19.0.5 }\n"
                       "delete element inet tabby pods { 198.19.0.6 }")),
        ("table gone", run("delete table inet tabby")),
        ("delta without a table", apply(ruleset({"198.19.0.3"}))),
        ("healed", apply(ruleset({"198.19.0.3"}))),
    ]


def nft_outcome(step: Callable[[], object]) -> object:
    try:
        return step()
    except DataplaneError:
        return "refused"


def nft_listing(runner: NftRunner) -> object:
    try:
        entries = json.loads(runner.read("table inet tabby"))["nftables"]
    except DataplaneError:
        return "no table"
    out = []
    for entry in entries:
        kind = next(iter(entry))
        if kind in ("set", "map"):
            shown = {k: v for k, v in entry[kind].items() if k != "handle"}
            for elem in shown.get("elem", []):  # the time left moves on; the timeout does not
                if isinstance(elem, dict) and "elem" in elem:
                    assert 0 < elem["elem"].pop("expires") <= elem["elem"]["timeout"]
            out.append((kind, json.dumps(shown, sort_keys=True)))
        elif kind == "chain":
            out.append((kind, entry[kind]["name"]))
    return sorted(out)


def test_fake_nft_and_nft_agree_on_every_step(netns: str) -> None:
    real = NftCommand(prefix=("ip", "netns", "exec", os.path.basename(netns)))
    fake = FakeNft()
    for (label, on_real), (_, on_fake) in zip(nft_steps(real), nft_steps(fake), strict=True):
        assert nft_outcome(on_fake) == nft_outcome(on_real), label
        assert nft_listing(fake) == nft_listing(real), label
