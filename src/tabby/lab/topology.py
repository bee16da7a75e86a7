"""A lab's topology as data: what to build, computed by a pure ``plan``.

    tor netns  <lab>-tor          bridge per rack (``fabric1`` ...) holding the ToR's
                                   address (.1 / ::1); forwarding on
      │ veth  node-<i> (tor side) ── eth0 (node side)
    node netns <lab>-node-<i>     198.18.<rack-1>.(10+i)/24, fd7a:bb1e:0:<rack-1>::(10+i)/64
                                   (node-1: 198.18.0.11, fd7a:bb1e::11),
                                   default routes via the ToR (proxy ARP needs them)

``Topology`` is a frozen value: print it, diff it, compare it in tests
(``to_dict`` gives the JSON form recorded in the lab's state). Options that are
part of the CLI grammar but not buildable (more racks without BGP or VXLAN to
route between them) are refused here with a ``LabError`` naming what is
missing, so nothing is half-built. ``--bgp`` labs add an outside client
(``<lab>-ext``, 198.18.100.10/24, fd7a:bb1e:0:64::10/64) behind the ToR, which
runs FRR (``tabby.lab.frr``); ``tabby.lab.bgp`` derives the BGP resources.
Network namespace names carry the lab name so two labs coexist; interface names
live inside the lab's own namespaces and stay within 15 characters.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import dataclass
from typing import Any

from tabby.errors import ConfigError, LabError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

STACKS = {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}
ENCAPS = ("none", "vxlan", "vxlan-crosssubnet")
VXLAN_MODES = {"none": "Never", "vxlan": "Always", "vxlan-crosssubnet": "CrossSubnet"}
BGP_MODES = ("none", "mesh", "rr", "tor")
DATASTORES = ("sqlite", "etcd", "kubernetes")
SUPPORTED = {"encap": ENCAPS, "bgp": BGP_MODES}

FABRIC_V4 = ipaddress.IPv4Network("198.18.0.0/16")  # racks: 198.18.<rack-1>.0/24
FABRIC_V6 = ipaddress.IPv6Network("fd7a:bb1e::/48")  # racks: fd7a:bb1e:0:<rack-1>::/64
POOL_V4 = ipaddress.IPv4Network("198.19.0.0/16")
POOL_V6 = ipaddress.IPv6Network("fd7a:bb1e:1::/48")
BLOCK_SIZE = {4: 26, 6: 122}
POOL_NAMES = {4: "default-ipv4-ippool", 6: "default-ipv6-ippool"}
MAX_NODES = 240  # node i is host 10+i of its rack's /24
MAX_RACKS = 100  # racks take the first /24s (and /64s); the outside client the 101st
EXT_SUBNET = 101  # the outside client's subnet: 198.18.100.0/24, fd7a:bb1e:0:64::/64
MAX_NAME = 32
MTU = 1500
NODE_IF = "eth0"
IFNAMSIZ = 15

_LAB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Rack:
    index: int  # 1-based
    bridge: str  # in the ToR's namespace
    subnet_v4: ipaddress.IPv4Network | None
    subnet_v6: ipaddress.IPv6Network | None

    @property
    def gateway_v4(self) -> ipaddress.IPv4Interface | None:
        return _host4(self.subnet_v4, 1) if self.subnet_v4 else None

    @property
    def gateway_v6(self) -> ipaddress.IPv6Interface | None:
        return _host6(self.subnet_v6, 1) if self.subnet_v6 else None

    def gateways(self) -> tuple[IPInterface, ...]:
        return tuple(g for g in (self.gateway_v4, self.gateway_v6) if g is not None)


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str  # node-<i>, the Node object's name
    index: int
    rack: int
    netns: str
    fabric_if: str  # inside the node's namespace
    tor_if: str  # the peer end, in the ToR's namespace
    ipv4: ipaddress.IPv4Interface | None
    ipv6: ipaddress.IPv6Interface | None

    def addresses(self) -> tuple[IPInterface, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)


@dataclass(frozen=True, slots=True)
class PoolPlan:
    name: str
    cidr: IPNetwork
    block_size: int
    vxlan_mode: str = "Never"  # --encap vxlan: Always; vxlan-crosssubnet: CrossSubnet
    nat_outgoing: bool = True  # Calico's default: pods reach what lies outside the pools


@dataclass(frozen=True, slots=True)
class ExtPlan:
    """An outside client behind the ToR (``--bgp`` labs): its own subnet, default via the ToR,
    reaching pods through the routes the ToR learns over BGP."""

    netns: str
    tor_if: str  # in the ToR's namespace, holding the ToR's address of the subnet
    ext_if: str
    gateways: tuple[IPInterface, ...]  # the ToR's side
    addresses: tuple[IPInterface, ...]  # the client's


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    stack: str
    encap: str
    bgp: str
    datastore: str
    mtu: int
    tor_netns: str
    racks: tuple[Rack, ...]
    nodes: tuple[NodePlan, ...]
    pools: tuple[PoolPlan, ...]
    ext: ExtPlan | None = None

    @property
    def families(self) -> tuple[int, ...]:
        return STACKS[self.stack]

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise LabError(f"lab {self.name}: no node {name!r} (nodes: {known})")

    def rack(self, index: int) -> Rack:
        return self.racks[index - 1]

    def netns(self) -> tuple[str, ...]:
        """Every namespace of the fabric, ToR first."""
        ext = (self.ext.netns,) if self.ext else ()
        return (self.tor_netns, *(n.netns for n in self.nodes), *ext)

    def interface_names(self) -> tuple[str, ...]:
        ext = (self.ext.tor_if, self.ext.ext_if) if self.ext else ()
        return (NODE_IF, *(r.bridge for r in self.racks), *(n.tor_if for n in self.nodes), *ext)

    def options(self) -> dict[str, Any]:
        """The arguments of ``plan`` that give this topology back."""
        return {"name": self.name, "nodes": len(self.nodes), "stack": self.stack,
                "encap": self.encap, "bgp": self.bgp, "racks": len(self.racks),
                "datastore": self.datastore}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "stack": self.stack, "encap": self.encap, "bgp": self.bgp,
            "datastore": self.datastore, "mtu": self.mtu, "torNetns": self.tor_netns,
            "racks": [{"index": r.index, "bridge": r.bridge,
                       "gateways": [str(g) for g in r.gateways()]} for r in self.racks],
            "nodes": [{"name": n.name, "rack": n.rack, "netns": n.netns,
                       "interface": n.fabric_if, "torInterface": n.tor_if,
                       "addresses": [str(a) for a in n.addresses()]} for n in self.nodes],
            "pools": [{"name": p.name, "cidr": str(p.cidr), "blockSize": p.block_size,
                       "vxlanMode": p.vxlan_mode, "natOutgoing": p.nat_outgoing}
                      for p in self.pools],
            **({"ext": {"netns": self.ext.netns,
                        "addresses": [str(a) for a in self.ext.addresses]}} if self.ext else {}),
        }


def plan(name: str = "tabby", nodes: int = 2, stack: str = "ipv4", encap: str = "none",
         bgp: str = "none", racks: int = 1, datastore: str = "sqlite") -> Topology:
    """The topology of lab ``name``; ConfigError for bad values, LabError for
    values the CLI knows but the lab cannot build yet."""
    check_name(name)
    _choice("stack", stack, tuple(STACKS))
    _choice("encap", encap, ENCAPS)
    _choice("bgp", bgp, BGP_MODES)
    _choice("datastore", datastore, DATASTORES)
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError(f"--nodes {nodes}: a lab has 1..{MAX_NODES} nodes")
    if not 1 <= racks <= min(nodes, MAX_RACKS):
        raise ConfigError(f"--racks {racks}: a lab of {nodes} nodes has"
                          f" 1..{min(nodes, MAX_RACKS)} racks")
    for option, value in (("encap", encap), ("bgp", bgp)):
        if value not in SUPPORTED[option]:
            raise LabError(f"--{option} {value} is not yet supported by the lab"
                           f" (supported: {', '.join(SUPPORTED[option])})")
    if racks > 1 and bgp == "none" and encap == "none":
        raise LabError(f"--racks {racks}: routes between racks need BGP (--bgp mesh|rr|tor) or"
                       " VXLAN (--encap vxlan|vxlan-crosssubnet); with neither use --racks 1")
    families = STACKS[stack]
    rack_plans = tuple(rack_plan(r, families) for r in range(1, racks + 1))
    node_plans = tuple(node_plan(name, i, rack_of(i, nodes, racks), families)
                       for i in range(1, nodes + 1))
    pools = tuple(PoolPlan(POOL_NAMES[v], POOL_V4 if v == 4 else POOL_V6, BLOCK_SIZE[v],
                           VXLAN_MODES[encap]) for v in families)
    ext = ext_plan(name, families) if bgp != "none" else None
    return Topology(name=name, stack=stack, encap=encap, bgp=bgp, datastore=datastore, mtu=MTU,
                    tor_netns=f"{name}-tor", racks=rack_plans, nodes=node_plans, pools=pools,
                    ext=ext)


def check_name(name: str) -> None:
    if len(name) > MAX_NAME or not _LAB_NAME.match(name):
        raise ConfigError(f"lab name {name!r}: use at most {MAX_NAME} lower-case letters,"
                          " digits and '-' (it prefixes the lab's namespaces)")


def rack_of(index: int, nodes: int, racks: int) -> int:
    """Racks hold contiguous runs of nodes, as even as possible (1-based)."""
    per_rack, extra = divmod(nodes, racks)
    bound = 0
    for rack in range(1, racks + 1):
        bound += per_rack + (1 if rack <= extra else 0)
        if index <= bound:
            return rack
    raise ConfigError(f"node {index} is outside 1..{nodes}")


def rack_subnets(rack: int) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    """The fabric subnets of rack ``rack`` (1-based): the rack-th /24 and /64."""
    v4 = next(itertools.islice(FABRIC_V4.subnets(new_prefix=24), rack - 1, None))
    v6 = next(itertools.islice(FABRIC_V6.subnets(new_prefix=64), rack - 1, None))
    return v4, v6


def rack_plan(rack: int, families: tuple[int, ...]) -> Rack:
    v4, v6 = rack_subnets(rack)
    return Rack(index=rack, bridge=f"fabric{rack}",
                subnet_v4=v4 if 4 in families else None, subnet_v6=v6 if 6 in families else None)


def node_plan(lab: str, index: int, rack: int, families: tuple[int, ...]) -> NodePlan:
    v4, v6 = rack_subnets(rack)
    return NodePlan(
        name=f"node-{index}", index=index, rack=rack, netns=f"{lab}-node-{index}",
        fabric_if=NODE_IF, tor_if=f"node-{index}",
        ipv4=_host4(v4, 10 + index) if 4 in families else None,
        # ::11 for node-1, like 198.18.0.11: the decimal host number read as hex digits
        ipv6=_host6(v6, int(str(10 + index), 16)) if 6 in families else None,
    )


def ext_plan(lab: str, families: tuple[int, ...]) -> ExtPlan:
    v4, v6 = rack_subnets(EXT_SUBNET)
    return ExtPlan(
        netns=f"{lab}-ext", tor_if="ext", ext_if=NODE_IF,
        gateways=(*((_host4(v4, 1),) if 4 in families else ()),
                  *((_host6(v6, 1),) if 6 in families else ())),
        addresses=(*((_host4(v4, 10),) if 4 in families else ()),
                   *((_host6(v6, 0x10),) if 6 in families else ())))


def _host4(net: ipaddress.IPv4Network, n: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface((net.network_address + n, net.prefixlen))


def _host6(net: ipaddress.IPv6Network, n: int) -> ipaddress.IPv6Interface:
    return ipaddress.IPv6Interface((net.network_address + n, net.prefixlen))


def _choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{option} {value!r}: choose one of {', '.join(choices)}")
