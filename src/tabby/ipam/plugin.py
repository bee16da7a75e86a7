"""tabby-ipam: a standalone CNI IPAM plugin (spec 1.1) on tabby's IPAM engine.

Any main plugin (the reference ``bridge``, ``ptp``, ...) can delegate to it::

    "ipam": {"type": "tabby-ipam",
             "datastore": "sqlite:///var/lib/tabby/tabby.db",   # else $TABBY_DATASTORE
             "node": "node-1",                                  # else $TABBY_NODE, hostname
             "assign_ipv4": true, "assign_ipv6": false,
             "ipv4_pools": ["pool-a"], "ipv6_pools": [],        # names or CIDRs; [] = any
             "routes": [{"dst": "0.0.0.0/0"}]}

Commands: ADD, DEL (idempotent; CNI_NETNS may be empty), CHECK (0.4.0+: the
handle still holds the addresses of prevResult), STATUS and GC (1.1.0: GC
releases this network's handles on this node that are not in
``cni.dev/valid-attachments``), VERSION. Results are written in the format of
the requested cniVersion (0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0; before 1.0.0 each
IP carries ``"version"``). The handle is ``<network name>.<CNI_CONTAINERID>.<CNI_IFNAME>``.

Address choice: each address is returned with its *block's* prefix (e.g.
``198.19.0.5/26``) and a gateway, the block's first host address (network+1).
Blocks this plugin creates reserve (Calico's host-reserved addresses) the
network address, that gateway, and for IPv4 the broadcast address, so no pod
ever receives them. Hence:

- ``bridge``: pods of one node share their block's subnet, so they reach each
  other on the bridge directly; with ``isGateway`` the bridge takes the
  gateway address, the one address of the block no pod holds. Pods in other
  blocks of the node are reached through that gateway (add a route for the
  pool, e.g. ``"routes": [{"dst": "198.19.0.0/16"}]``, or ``isDefaultGateway``).
- ``ptp``: the gateway becomes the host side's /32 (/128), the route to the
  block goes through it, and the node routes each pod's /32 to its veth.

Routes are those of the ``routes`` setting; one without ``gw`` is given the
gateway of its family (the main plugins would apply it so anyway, and the
reference plugins' CHECK compares routes literally). Blocks of size /31, /32
(/127, /128) reserve nothing and get no gateway.

The invocation (CNI_* variables, stdin, cniVersion, CNI_ARGS, VERSION) is
read and checked by :mod:`tabby.cni.frontend`, exactly as for tabby-cni; this
module does the IPAM work on the request it accepted. Errors are CNI error
objects on stdout with a non-zero exit, never a traceback: the front-end's
(1 incompatible cniVersion, 4 invalid CNI_* variables or CNI_ARGS, 6
malformed JSON, 7 invalid network config) and this plugin's own: 7 invalid
``ipam`` settings, 11 datastore unreachable or busy (try again), 50 STATUS:
not ready, 100 pool exhausted, 101 no usable pool, 102 CHECK failed, 999
unexpected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from tabby.cni import frontend, wire
from tabby.errors import (
    ERR_DECODING,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_NOT_AVAILABLE,
    ERR_TRY_AGAIN_LATER,
    CNIError,
    ConfigError,
    NoUsablePool,
    PoolExhausted,
    StoreError,
    TabbyError,
    ValidationError,
)

if TYPE_CHECKING:  # ipaddress, json and socket load on use: VERSION needs none of them
    import ipaddress

    from tabby.cni.protocol import CNIRequest
    from tabby.ipam.engine import IPAM, Assignment
    from tabby.store.client import Client

    IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
    IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAME = "tabby-ipam"

# tabby-ipam's own codes (the spec leaves 100 and up to each plugin).
E_EXHAUSTED, E_NO_POOL, E_CHECK = 100, 101, 102


def _fail(code: int, msg: str, details: str = "") -> NoReturn:
    raise CNIError(code, msg, details)


@dataclass(frozen=True, slots=True)
class Config:
    version: str
    network: str
    datastore: str
    node: str
    assign_v4: bool
    assign_v6: bool
    pools_v4: tuple[str, ...]
    pools_v6: tuple[str, ...]
    routes: tuple[tuple[IPNetwork, IPAddress | None], ...]
    raw: Mapping[str, Any]


# -- entry point ------------------------------------------------------------------------


def main() -> int:
    """Console entry point (``tabby-ipam``)."""
    env = os.environ
    return frontend.main(NAME, lambda request: _serve(request, env))


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """One invocation: (exit status, stdout bytes). Never raises."""
    return frontend.serve(NAME, lambda request: _serve(request, env), env, stdin)


def _serve(request: dict[str, Any], env: Mapping[str, str]) -> bytes:
    """A request the front-end accepted: the result on stdout, or nothing (DEL, CHECK, ...)."""
    import json

    from tabby.cni.protocol import CNIRequest

    req = CNIRequest.from_wire(request)
    result = _dispatch(req, _config(req, env))
    return b"" if result is None else (json.dumps(result) + "\n").encode()


# -- configuration ------------------------------------------------------------------------


def _config(req: CNIRequest, env: Mapping[str, str]) -> Config:
    ipam = req.config.get("ipam")
    if not isinstance(ipam, dict):
        _fail(ERR_INVALID_CONFIG,
              "network config needs an \"ipam\" object ({\"type\": \"tabby-ipam\", ...})")
    import socket

    from tabby.store import DEFAULT_URL, ENV
    return Config(
        version=req.cni_version, network=req.network_name,
        datastore=_str(ipam, "datastore") or env.get(ENV) or DEFAULT_URL,
        node=_str(ipam, "node") or env.get("TABBY_NODE") or socket.gethostname(),
        assign_v4=_flag(ipam, "assign_ipv4", True), assign_v6=_flag(ipam, "assign_ipv6", False),
        pools_v4=_names(ipam, "ipv4_pools"), pools_v6=_names(ipam, "ipv6_pools"),
        routes=_routes(ipam.get("routes")), raw=req.config)


def _str(ipam: Mapping[str, Any], key: str) -> str:
    value = ipam.get(key, "")
    if not isinstance(value, str):
        _fail(ERR_INVALID_CONFIG, f"ipam.{key} must be a string, not {value!r}")
    return value


def _flag(ipam: Mapping[str, Any], key: str, default: bool) -> bool:
    value = ipam.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # Calico's configs write "true"
    if not isinstance(value, bool):
        _fail(ERR_INVALID_CONFIG, f"ipam.{key} must be true or false, not {value!r}")
    return value


def _names(ipam: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = ipam.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(ERR_INVALID_CONFIG,
              f"ipam.{key} must be a list of pool names or CIDRs, not {value!r}")
    return tuple(value)


def _routes(value: object) -> tuple[tuple[IPNetwork, IPAddress | None], ...]:
    import ipaddress

    if value is None:
        return ()
    if not isinstance(value, list):
        _fail(ERR_INVALID_CONFIG,
              f"ipam.routes must be a list of {{dst: CIDR, gw: IP}}, not {value!r}")
    routes = []
    for i, r in enumerate(value):
        try:
            dst = ipaddress.ip_network(r["dst"])
            gw = ipaddress.ip_address(r["gw"]) if r.get("gw") else None
        except (TypeError, KeyError, ValueError, AttributeError) as e:
            _fail(ERR_INVALID_CONFIG,
                  f"ipam.routes[{i}] is not {{\"dst\": CIDR, \"gw\": IP}}: {r!r}", str(e))
        if gw is not None and gw.version != dst.version:
            _fail(ERR_INVALID_CONFIG,
                  f"ipam.routes[{i}]: gw {gw} is not of the family of {dst}")
        routes.append((dst, gw))
    return tuple(routes)


# -- commands ---------------------------------------------------------------------------


def _dispatch(req: CNIRequest, cfg: Config) -> dict[str, Any] | None:
    command = req.command
    try:
        if command == "ADD":
            return _add(cfg, req)
        if command == "DEL":
            _delete(cfg, req)
        elif command == "CHECK":
            _check(cfg, req)
        elif command == "STATUS":
            _status(cfg)
        else:
            _gc(cfg)
        return None
    except CNIError:
        raise  # already the answer (a CNIError is a TabbyError too)
    except (ConfigError, ValidationError) as e:
        _fail(ERR_INVALID_CONFIG, "invalid configuration", str(e))
    except TabbyError as e:
        if command == "STATUS":
            _fail(ERR_NOT_AVAILABLE, "tabby-ipam cannot assign addresses now", str(e))
        if isinstance(e, PoolExhausted):
            _fail(E_EXHAUSTED, "no free address", str(e))
        if isinstance(e, NoUsablePool):
            _fail(E_NO_POOL, "no usable IP pool", str(e))
        if isinstance(e, StoreError):
            _fail(ERR_TRY_AGAIN_LATER,
                  f"datastore {cfg.datastore} unavailable; try again later", str(e))
        _fail(ERR_INTERNAL, "tabby-ipam failed", str(e))


def _open(cfg: Config) -> tuple[Client, IPAM]:
    from tabby.ipam.blocks import Reservation
    from tabby.ipam.engine import IPAM
    from tabby.store import open_store
    from tabby.store.client import Client
    client = Client(open_store(cfg.datastore))
    reservations = {4: Reservation(2, 1, "network, gateway, broadcast"),
                    6: Reservation(2, 0, "subnet-router anycast, gateway")}
    return client, IPAM(client, reservations=reservations)


def _add(cfg: Config, req: CNIRequest) -> dict[str, Any]:
    if not (cfg.assign_v4 or cfg.assign_v6):
        _fail(ERR_INVALID_CONFIG,
              "ipam: assign_ipv4 and assign_ipv6 are both false; nothing to assign")
    attrs = {"node": cfg.node, "containerID": req.container_id, "ifname": req.ifname,
             "network": cfg.network}
    for value, attr in ((req.pod_namespace, "namespace"), (req.pod_name, "pod")):
        if value:
            attrs[attr] = value
    client, ipam = _open(cfg)
    try:
        got = ipam.assign(req.handle_id, cfg.node, num_v4=int(cfg.assign_v4),
                          num_v6=int(cfg.assign_v6), attrs=attrs,
                          pools_v4=cfg.pools_v4, pools_v6=cfg.pools_v6)
        return _result(cfg.version, _ips(client, got), cfg.routes)
    finally:
        client.store.close()


def _ips(client: Client, got: Assignment) -> list[tuple[IPInterface, IPAddress | None]]:
    import ipaddress

    from tabby.ipam import blocks as blk
    from tabby.model import IPAMBlock, block_name
    out: list[tuple[IPInterface, IPAddress | None]] = []
    for ip, cidr in zip(got.addresses, got.blocks, strict=True):
        block = client.try_get(IPAMBlock, block_name(cidr))
        gateway: IPAddress | None = None
        owner = blk.owner(block.spec, 1) if block is not None and cidr.num_addresses > 2 else None
        if owner is not None and owner.handle_id == blk.RESERVED_HANDLE:
            gateway = cidr.network_address + 1  # held back for this: no pod has it
        out.append((ipaddress.ip_interface((ip, cidr.prefixlen)), gateway))
    return out


def _result(version: str, ips: list[tuple[IPInterface, IPAddress | None]],
            routes: tuple[tuple[IPNetwork, IPAddress | None], ...]) -> dict[str, Any]:
    entries = []
    for iface, gateway in ips:
        entry: dict[str, Any] = {"address": str(iface)}
        if version < "1.0.0":
            entry = {"version": str(iface.version), **entry}
        if gateway is not None:
            entry["gateway"] = str(gateway)
        entries.append(entry)
    gateways = {gw.version: gw for _, gw in reversed(ips) if gw is not None}
    out_routes = []
    for dst, gw in routes:
        via = gw or gateways.get(dst.version)  # spelled out: CHECK compares routes literally
        out_routes.append({"dst": str(dst), **({"gw": str(via)} if via else {})})
    return {"cniVersion": version, "ips": entries, "routes": out_routes}


def _delete(cfg: Config, req: CNIRequest) -> None:
    client, ipam = _open(cfg)
    try:
        ipam.release_handle(req.handle_id)
    finally:
        client.store.close()


def _check(cfg: Config, req: CNIRequest) -> None:
    import ipaddress

    handle = req.handle_id
    client, ipam = _open(cfg)
    try:
        held = set(ipam.addresses_of(handle))
    finally:
        client.store.close()
    if not held:
        _fail(E_CHECK, f"handle {handle} holds no address", "the allocation is gone; re-ADD")
    prev = cfg.raw.get("prevResult")
    expected = set()
    for entry in (prev.get("ips") or []) if isinstance(prev, dict) else []:
        try:
            expected.add(ipaddress.ip_interface(entry["address"]).ip)
        except (TypeError, KeyError, ValueError) as e:
            _fail(ERR_DECODING, f"prevResult has a malformed ip entry {entry!r}", str(e))
    lost = expected - held
    if lost:
        _fail(E_CHECK, f"handle {handle} no longer holds {', '.join(map(str, sorted(lost)))}",
              f"it holds {', '.join(map(str, sorted(held)))}")


def _status(cfg: Config) -> None:
    from tabby.ipam.pools import usable_pools
    from tabby.model import IPPool, Node
    client, _ = _open(cfg)
    try:
        pools = client.list(IPPool)
        node = client.try_get(Node, cfg.node)
        labels = dict(node.meta.labels) if node else {}
        for version, wanted, names in ((4, cfg.assign_v4, cfg.pools_v4),
                                       (6, cfg.assign_v6, cfg.pools_v6)):
            if wanted:
                usable_pools(pools, version, cfg.node, labels, names)
    finally:
        client.store.close()


def _gc(cfg: Config) -> None:
    """Release this network's handles held for this node that the runtime no longer knows."""
    valid = set()
    for key in wire.VALID_ATTACHMENTS_KEYS:
        for item in cfg.raw.get(key) or []:
            if isinstance(item, dict):
                valid.add(f"{cfg.network}.{item.get('containerID')}.{item.get('ifname')}")
    client, ipam = _open(cfg)
    try:
        for handle in ipam.handles(prefix=f"{cfg.network}."):
            if handle not in valid and ipam.attributes_of(handle).get("node") == cfg.node:
                ipam.release_handle(handle)
    finally:
        client.store.close()
