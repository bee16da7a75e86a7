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
module does the IPAM work on the request it accepted.

The exec path is paid on every pod. On SQLite, ADD and DEL run in
:mod:`tabby.ipam.fastpath` (standard library and tabby's cheap modules only:
no model, typing, dataclasses, ipaddress or json), one transaction each, taken
in the store's exec queue (a flock: eight concurrent execs hand the write lock
on at once instead of sleeping in SQLite's busy handler); the rest (CHECK,
STATUS, GC, other datastores, and what the fast path declines) runs the engine,
on SQLite in one transaction. The process ends with ``os._exit`` (see ``main``):
no close-time checkpoint, the WAL is trimmed every megabyte instead
(``tabby.store.sqlitedb.trim_wal``). Errors are CNI error
objects on stdout with a non-zero exit, never a traceback: the front-end's
(1 incompatible cniVersion, 4 invalid CNI_* variables or CNI_ARGS, 6
malformed JSON, 7 invalid network config) and this plugin's own: 7 invalid
``ipam`` settings, 11 datastore unreachable or busy (try again), 50 STATUS:
not ready, 100 pool exhausted, 101 no usable pool, 102 CHECK failed, 999
unexpected.
"""

from __future__ import annotations

import os

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
from tabby.ipam.pluginconfig import Config, read_config

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs every pod ~3 ms
if TYPE_CHECKING:  # the engine loads on use: VERSION and the SQLite fast path need none of it
    import contextlib
    import sqlite3
    from collections.abc import Callable, Mapping
    from typing import Any, NoReturn, TypeVar

    from tabby.ipam.engine import IPAM, Assignment
    from tabby.store import sqlitedb
    from tabby.store.client import Client

    Address = tuple[str, int, str | None]  # address/prefix, IP version, gateway (as text)
    Route = tuple[str, int, str | None]  # dst CIDR, its IP version, gw (as text)
    T = TypeVar("T")

NAME = "tabby-ipam"
# What the blocks tabby-ipam claims hold back (the engine's Reservation: ordinals at the
# start, at the end, and a note), per IP version: see the docstring.
RESERVE = {4: (2, 1, "network, gateway, broadcast"), 6: (2, 0, "subnet-router anycast, gateway")}
BUSY_TIMEOUT = 30.0  # seconds an exec waits for SQLite's write lock (as SQLiteStore)

# tabby-ipam's own codes (the spec leaves 100 and up to each plugin).
E_EXHAUSTED, E_NO_POOL, E_CHECK = 100, 101, 102


def _fail(code: int, msg: str, details: str = "") -> NoReturn:
    raise CNIError(code, msg, details)


# -- entry point ------------------------------------------------------------------------


def main() -> NoReturn:
    """Console entry point (``tabby-ipam``): answer, then end the process at once.

    ``os._exit`` once the answer is written and flushed skips the interpreter's
    teardown and, above all, SQLite's checkpoint when the last connection to the
    store closes (two fsyncs, then a new WAL and two more for the next process).
    What was committed is in the WAL and the next opener reads it: WAL with
    ``synchronous = NORMAL`` promises survival of a process crash, and this exit is
    one, as far as the file can tell (tabby.store.sqlitedb)."""
    env = os.environ
    code = frontend.main(NAME, lambda request: _serve(request, env, keep_open=True))
    os._exit(code)


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """One invocation: (exit status, stdout bytes). Never raises."""
    return frontend.serve(NAME, lambda request: _serve(request, env, keep_open=False),
                          env, stdin)


def _serve(request: dict[str, Any], env: Mapping[str, str], *, keep_open: bool) -> bytes:
    """A request the front-end accepted: the result on stdout, or nothing (DEL, CHECK, ...)."""
    result = _dispatch(read_config(request, env, keep_open))
    if result is None:
        return b""
    from tabby.ipam.rawrecords import make_dumps

    return (make_dumps(compact=False)(result) + "\n").encode()


# -- commands ---------------------------------------------------------------------------


def _dispatch(cfg: Config) -> dict[str, Any] | None:
    command = cfg.command
    try:
        if command == "ADD":
            return _add(cfg)
        if command == "DEL":
            _delete(cfg)
        elif command == "CHECK":
            _check(cfg)
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


def _sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///PATH`` datastore; None for any other (or a bad one:
    the engine's open_store names what is wrong)."""
    scheme, _, rest = url.partition("://")
    return rest if scheme == "sqlite" and rest.startswith("/") else None


def _queue(cfg: Config) -> sqlitedb.ExecQueue | None:
    """The exec queue of a SQLite datastore (tabby.store.sqlitedb.ExecQueue), not taken."""
    from tabby.store import sqlitedb

    path = _sqlite_path(cfg.datastore)
    return sqlitedb.ExecQueue(path) if path is not None else None


def _fast(cfg: Config, queue: sqlitedb.ExecQueue,
          work: Callable[[sqlite3.Connection, str], T]) -> T:
    """``work`` (one transaction: tabby.ipam.fastpath) on a connection of its own to the
    SQLite file, in the exec queue: only the transaction waits there, not the open (which
    may read the WAL) nor the WAL's trim."""
    from tabby.store import sqlitedb

    conn = sqlitedb.connect(queue.db, BUSY_TIMEOUT)
    try:
        with queue:
            result = work(conn, queue.db)
    except BaseException:
        if not cfg.keep_open:
            conn.close()
        raise
    if cfg.keep_open:
        sqlitedb.trim_wal(conn, queue.db)  # never closed, so never checkpointed: see there
    else:
        conn.close()
    return result


def _engine(cfg: Config, work: Callable[[Client, IPAM], T], *, writes: bool = True) -> T:
    """``work`` with the engine on the datastore; on SQLite in the exec queue (taken once
    the model is imported: that is not the queue's time) and, if it ``writes``, in one
    transaction."""
    import contextlib

    from tabby.ipam.engine import IPAM  # noqa: F401 (imported here, outside the queue)
    from tabby.store.client import Client  # noqa: F401

    queue = _queue(cfg)
    with queue if queue is not None else contextlib.nullcontext():
        client, ipam = _open(cfg)
        try:
            with _atomically(client) if writes else contextlib.nullcontext():
                return work(client, ipam)
        finally:
            client.store.close()


def _open(cfg: Config) -> tuple[Client, IPAM]:
    from tabby.ipam.blocks import Reservation
    from tabby.ipam.engine import IPAM
    from tabby.store import open_store
    from tabby.store.client import Client
    client = Client(open_store(cfg.datastore))
    reservations = {version: Reservation(*held) for version, held in RESERVE.items()}
    return client, IPAM(client, reservations=reservations)


def _atomically(client: Client) -> contextlib.AbstractContextManager[object]:
    """On SQLite, one transaction around the engine's calls (other writers wait, so a
    node's block is claimed once, not by every concurrent ADD); elsewhere, none."""
    import contextlib

    from tabby.store.sqlite import SQLiteStore
    store = client.store
    return store.transaction() if isinstance(store, SQLiteStore) else contextlib.nullcontext()


def _add(cfg: Config) -> dict[str, Any]:
    if not (cfg.assign_v4 or cfg.assign_v6):
        _fail(ERR_INVALID_CONFIG,
              "ipam: assign_ipv4 and assign_ipv6 are both false; nothing to assign")
    attrs = {"node": cfg.node, "containerID": cfg.container_id, "ifname": cfg.ifname,
             "network": cfg.network}
    for value, attr in ((cfg.pod_namespace, "namespace"), (cfg.pod_name, "pod")):
        if value:
            attrs[attr] = value

    def assign(client: Client, ipam: IPAM) -> list[Address]:
        assigned = ipam.assign(cfg.handle_id, cfg.node, num_v4=int(cfg.assign_v4),
                               num_v6=int(cfg.assign_v6), attrs=attrs,
                               pools_v4=cfg.pools_v4, pools_v6=cfg.pools_v6)
        return _ips(client, assigned)

    queue = _queue(cfg)
    if queue is None:
        return _result(cfg.version, _engine(cfg, assign), cfg.routes)
    from tabby.ipam import fastpath

    want = {4: int(cfg.assign_v4), 6: int(cfg.assign_v6)}
    got = _fast(cfg, queue, lambda conn, path: fastpath.add(
        conn, path, cfg.handle_id, cfg.node, want, {4: cfg.pools_v4, 6: cfg.pools_v6},
        attrs, RESERVE))
    if not isinstance(got, str):
        return _result(cfg.version, got, cfg.routes)
    return _result(cfg.version, _engine(cfg, assign), cfg.routes)


def _ips(client: Client, got: Assignment) -> list[Address]:
    from tabby.ipam import blocks as blk
    from tabby.model import IPAMBlock, block_name
    out: list[Address] = []
    for ip, cidr in zip(got.addresses, got.blocks, strict=True):
        block = client.try_get(IPAMBlock, block_name(cidr))
        gateway = None
        owner = blk.owner(block.spec, 1) if block is not None and cidr.num_addresses > 2 else None
        if owner is not None and owner.handle_id == blk.RESERVED_HANDLE:
            gateway = str(cidr.network_address + 1)  # held back for this: no pod has it
        out.append((f"{ip}/{cidr.prefixlen}", ip.version, gateway))
    return out


def _result(version: str, ips: list[Address], routes: tuple[Route, ...]) -> dict[str, Any]:
    entries = []
    for iface, ip_version, gateway in ips:
        entry: dict[str, Any] = {"address": iface}
        if version < "1.0.0":
            entry = {"version": str(ip_version), **entry}
        if gateway is not None:
            entry["gateway"] = gateway
        entries.append(entry)
    gateways = {v: gw for _, v, gw in reversed(ips) if gw is not None}
    out_routes = []
    for dst, dst_version, gw in routes:
        via = gw or gateways.get(dst_version)  # spelled out: CHECK compares routes literally
        out_routes.append({"dst": dst, **({"gw": via} if via else {})})
    return {"cniVersion": version, "ips": entries, "routes": out_routes}


def _delete(cfg: Config) -> None:
    queue = _queue(cfg)
    if queue is not None:
        from tabby.ipam import fastpath

        if _fast(cfg, queue, lambda conn, path: fastpath.release(conn, path, cfg.handle_id)):
            return
    _engine(cfg, lambda client, ipam: ipam.release_handle(cfg.handle_id))


def _check(cfg: Config) -> None:
    import ipaddress

    handle = cfg.handle_id
    held = set(_engine(cfg, lambda _, ipam: ipam.addresses_of(handle), writes=False))
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

    def check(client: Client, _: IPAM) -> None:
        pools = client.list(IPPool)
        node = client.try_get(Node, cfg.node)
        labels = dict(node.meta.labels) if node else {}
        for version, wanted, names in ((4, cfg.assign_v4, cfg.pools_v4),
                                       (6, cfg.assign_v6, cfg.pools_v6)):
            if wanted:
                usable_pools(pools, version, cfg.node, labels, names)

    _engine(cfg, check, writes=False)


def _gc(cfg: Config) -> None:
    """Release this network's handles held for this node that the runtime no longer knows."""
    valid = set()
    for key in wire.VALID_ATTACHMENTS_KEYS:
        for item in cfg.raw.get(key) or []:
            if isinstance(item, dict):
                valid.add(f"{cfg.network}.{item.get('containerID')}.{item.get('ifname')}")

    def collect(_: Client, ipam: IPAM) -> None:
        for handle in ipam.handles(prefix=f"{cfg.network}."):
            if handle not in valid and ipam.attributes_of(handle).get("node") == cfg.node:
                ipam.release_handle(handle)

    _engine(cfg, collect)
