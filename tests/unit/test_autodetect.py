"""IP autodetection: which address of which interface each method picks (pure), and
the kernel read over FakeNetlink (links and addresses in the kernel's order).

The host below is what a Kubernetes node looks like: loopback, a docker bridge
first in index order, the uplink eth0 (two IPv4 addresses, a global and a
link-local IPv6), a second NIC ens5, tabby's own pod veth and VXLAN device, a
CNI bridge and another CNI's veth.
"""

from __future__ import annotations

import ipaddress

import pytest

from tabby.agent.autodetect import (
    AddressPlan,
    Detected,
    HostAddresses,
    HostInterface,
    Method,
    choose,
    explicit,
)
from tabby.errors import ConfigError
from tabby.testing.fakes import FakeNetlink

ip = ipaddress.ip_address
iface = ipaddress.ip_interface


def host() -> list[HostInterface]:
    return [
        HostInterface("lo", (iface("127.0.0.1/8"), iface("::1/128"))),
        HostInterface("docker0", (iface("172.17.0.1/16"),)),
        HostInterface("eth0", (iface("198.18.0.11/24"), iface("198.18.0.99/24"),
                               iface("fe80::1/64"), iface("fd7a:bb1e::11/64"))),
        HostInterface("ens5", (iface("198.18.1.11/24"), iface("fd7a:bb1e:1::11/64"))),
        HostInterface("tab0123456789ab", (iface("198.19.9.9/32"),)),
        HostInterface("vxlan.tabby", (iface("198.19.0.1/32"),)),
        HostInterface("cni0", (iface("10.88.0.1/16"),)),
        HostInterface("veth1234", (iface("10.88.0.5/16"),)),
    ]


def pick(text: str, version: int = 4, **kw: object) -> str:
    return str(choose(Method.parse(text, version), version, host(), **kw))  # type: ignore[arg-type]


# -- methods -----------------------------------------------------------------------------

def test_first_found_skips_loopback_local_bridges_and_tabbys_own() -> None:
    assert pick("first-found") == "198.18.0.11/24"  # not docker0, the first of eth0's
    assert pick("first-found", 6) == "fd7a:bb1e::11/64"  # not ::1, not link-local


def test_first_found_skips_tabbys_devices_even_when_they_come_first() -> None:
    only = [HostInterface("vxlan.tabby", (iface("198.19.0.1/32"),)),
            HostInterface("tab0123456789ab", (iface("198.19.9.9/32"),)),
            HostInterface("bond0", (iface("198.18.2.1/24"),))]
    assert str(choose(Method.parse("first-found", 4), 4, only)) == "198.18.2.1/24"


@pytest.mark.parametrize(("text", "version", "want"), [
    ("interface=ens5", 4, "198.18.1.11/24"),
    ("interface=^ens.*$,eth0", 6, "fd7a:bb1e::11/64"),  # kernel order, not the regexes' order
    ("interface=docker", 4, "172.17.0.1/16"),  # named explicitly: local bridges count
    ("interface=ns5", 4, "198.18.1.11/24"),  # a match anywhere in the name, as in Calico
    ("skip-interface=docker0,eth.*", 4, "198.18.1.11/24"),
    ("skip-interface=eth0,ens5", 4, "172.17.0.1/16"),  # replaces the default list
    ("cidr=198.18.1.0/24", 4, "198.18.1.11/24"),
    ("cidr=10.0.0.0/8,198.18.0.64/26", 4, "198.18.0.99/24"),
    ("cidr=fd7a:bb1e:1::/48", 6, "fd7a:bb1e:1::11/64"),
])
def test_interface_skip_and_cidr_methods(text: str, version: int, want: str) -> None:
    assert pick(text, version) == want


def test_can_reach_takes_the_source_address_with_its_interfaces_prefix() -> None:
    assert pick("can-reach=198.18.1.1", source=ip("198.18.1.11")) == "198.18.1.11/24"
    with pytest.raises(ConfigError, match=r"198\.18\.7\.7 is on no interface of this host"):
        pick("can-reach=198.18.1.1", source=ip("198.18.7.7"))


def test_kubernetes_internal_ip_takes_the_first_of_the_family() -> None:
    internal = [ip("fd7a:bb1e:1::11"), ip("198.18.1.11"), ip("198.18.0.11")]
    assert pick("kubernetes-internal-ip", internal_ips=internal) == "198.18.1.11/24"
    assert pick("kubernetes-internal-ip", 6, internal_ips=internal) == "fd7a:bb1e:1::11/64"
    with pytest.raises(ConfigError, match="lists no IPv4 InternalIP"):
        pick("kubernetes-internal-ip", internal_ips=[ip("fd7a:bb1e::11")])


def test_nothing_found_names_what_was_looked_at() -> None:
    with pytest.raises(ConfigError) as caught:
        pick("cidr=203.0.113.0/24")
    message = str(caught.value)
    assert "'cidr=203.0.113.0/24' found no usable IPv4 address" in message
    assert "eth0 198.18.0.11/24, 198.18.0.99/24" in message and "tab0123" not in message
    with pytest.raises(ConfigError, match="interfaces looked at: none"):
        pick("interface=wlan0")


@pytest.mark.parametrize(("text", "version", "problem"), [
    ("first", 4, "'first': expected one of first-found, interface=REGEX"),
    ("interface=", 4, "expected one of"),
    ("first-found=eth0", 4, "expected one of"),
    ("interface=eth[", 4, "'eth[' is not a regular expression"),
    ("cidr=198.18.0.0/33", 4, "'198.18.0.0/33' is not a CIDR"),
    ("cidr=fd7a::/64", 4, "fd7a::/64 is not an IPv4 range"),
    ("can-reach=198.18.0.1", 6, "198.18.0.1 is not an IPv6 address"),
    ("kubernetes-internal-ip=yes", 4, "expected one of"),
])
def test_bad_methods_are_one_clear_error(text: str, version: int, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Method.parse(text, version)
    assert problem in str(caught.value) and "\n" not in str(caught.value)


# -- --ip / --ip6 values -----------------------------------------------------------------

def test_address_plans() -> None:
    assert AddressPlan.parse(4, "none").mode == "none"
    plan = AddressPlan.parse(6, "autodetect", "interface=eth0")
    assert (plan.mode, plan.method.kind, plan.method.patterns[0].pattern) == \
        ("autodetect", "interface", "eth0")
    given = AddressPlan.parse(4, "198.18.0.11/16")
    assert (given.mode, str(given.address), given.prefixed) == ("explicit", "198.18.0.11/16", True)
    assert str(explicit(given, host())) == "198.18.0.11/16"  # as given, whatever the host says


def test_an_explicit_address_without_prefix_takes_its_interfaces() -> None:
    assert str(explicit(AddressPlan.parse(4, "198.18.1.11"), host())) == "198.18.1.11/24"
    assert str(explicit(AddressPlan.parse(6, "fd7a:bb1e:9::1"), host())) == "fd7a:bb1e:9::1/128"


@pytest.mark.parametrize(("version", "value", "method", "problem"), [
    (4, "fd7a:bb1e::11/64", "first-found", r"--ip 'fd7a:bb1e::11/64': not an IPv4 address"),
    (4, "auto", "first-found", r"--ip 'auto': expected none, autodetect or an IPv4 address"),
    (6, "autodetect", "cidr=bogus",
     r"--ip6-autodetection-method: IP autodetection method 'cidr=bogus'"),
])
def test_bad_address_settings_name_the_option(version: int, value: str, method: str,
                                              problem: str) -> None:
    option = "--ip" if version == 4 else "--ip6"
    with pytest.raises(ConfigError, match=problem):
        AddressPlan.parse(version, value, method, option=option,
                          method_option=f"{option}-autodetection-method")


# -- the kernel read ---------------------------------------------------------------------

def kernel() -> FakeNetlink:
    k = FakeNetlink()
    for name, addresses in (("docker0", ["172.17.0.1/16"]),
                            ("eth0", ["198.18.0.11/24", "fd7a:bb1e::11/64"]),
                            ("ens5", ["198.18.1.11/24"])):
        k.add_link(name, up=True)
        for a in addresses:
            k.add_address(name, iface(a))
    return k


def test_host_addresses_reads_the_kernel_and_decides_each_family() -> None:
    k = kernel()
    source = HostAddresses([AddressPlan.parse(4, "autodetect"),
                            AddressPlan.parse(6, "autodetect", "interface=eth0")],
                           netlink=k.open)
    assert source.detect() == Detected({4: iface("198.18.0.11/24"),
                                        6: iface("fd7a:bb1e::11/64")})
    k.delete_address("eth0", iface("198.18.0.11/24"))
    k.add_address("eth0", iface("198.18.0.12/24"))
    assert source.detect().addresses[4] == iface("198.18.0.12/24")  # asked afresh each time


def test_host_addresses_reports_a_family_it_cannot_decide_and_keeps_the_other() -> None:
    source = HostAddresses([AddressPlan.parse(4, "autodetect", "interface=wlan0"),
                            AddressPlan.parse(6, "autodetect")], netlink=kernel().open)
    detected = source.detect()
    assert detected.addresses == {6: iface("fd7a:bb1e::11/64")}
    assert detected.problems == ("IPv4 address: IP autodetection method 'interface=wlan0'"
                                 " found no usable IPv4 address (interfaces looked at: none)",)


def test_host_addresses_can_reach_and_internal_ip_use_their_seams() -> None:
    asked: list[tuple[int, str]] = []

    def reach(version: int, dest: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        asked.append((version, dest))
        return ip("198.18.1.11")

    source = HostAddresses([AddressPlan.parse(4, "autodetect", "can-reach=gw.example")],
                           netlink=kernel().open, reach=reach)
    assert source.detect().addresses == {4: iface("198.18.1.11/24")}
    assert asked == [(4, "gw.example")]
    k8s = HostAddresses([AddressPlan.parse(6, "autodetect", "kubernetes-internal-ip")],
                        netlink=kernel().open, internal_ips=lambda: [ip("fd7a:bb1e::11")])
    assert k8s.detect().addresses == {6: iface("fd7a:bb1e::11/64")}
    alone = HostAddresses([AddressPlan.parse(6, "autodetect", "kubernetes-internal-ip")],
                          netlink=kernel().open)
    assert alone.detect().problems == ("IPv6 address: kubernetes-internal-ip: this agent has"
                                       " no Kubernetes API",)


def test_plans_of_none_read_nothing() -> None:
    k = kernel()
    source = HostAddresses([AddressPlan.parse(4, "none"), AddressPlan.parse(6, "none")],
                           netlink=k.open)
    assert source.detect() == Detected() and source.plans == ()
    assert k.counts.snapshot()[0].get("link_dump", 0) == 0


# -- the agent's options -------------------------------------------------------------------

def test_the_agent_refuses_a_bad_setting_in_one_line(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tabby.cli.main import main
    monkeypatch.setenv("TABBY_IP6", "autodetect")
    monkeypatch.setenv("TABBY_IP6_AUTODETECTION_METHOD", "interface=(")
    assert main(["--datastore", "memory://", "agent", "--node", "n1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --ip6-autodetection-method: IP autodetection method"
                          " 'interface=(': '(' is not a regular expression")
    assert err.count("\n") == 1
    assert main(["--datastore", "memory://", "agent", "--node", "n1", "--ip", "10.0.0.1/99",
                 "--ip6", "none"]) == 1
    assert capsys.readouterr().err == ("error: --ip '10.0.0.1/99': expected none, autodetect or"
                                       " an IPv4 address (with or without a prefix length)\n")


def test_the_agent_takes_its_settings_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tabby.cli.agent import address_plans
    from tabby.cli.main import build_parser
    monkeypatch.setenv("NODENAME", "node-7")
    monkeypatch.setenv("TABBY_IP", "autodetect")
    monkeypatch.setenv("TABBY_IP_AUTODETECTION_METHOD", "cidr=198.18.0.0/15")
    args = build_parser().parse_args(["agent", "--ip6", "fd7a:bb1e::7/64"])
    assert args.node == "node-7"
    v4, v6 = address_plans(args)
    assert (v4.mode, v4.method.text, v6.mode, str(v6.address)) == \
        ("autodetect", "cidr=198.18.0.0/15", "explicit", "fd7a:bb1e::7/64")
    flagged = build_parser().parse_args(["agent", "--node", "n", "--ip", "none"])
    assert (flagged.node, address_plans(flagged)[0].mode) == ("n", "none")  # flags win
