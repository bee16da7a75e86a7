"""Datastores: one contract (``Store``), three backends, chosen by URL.

    memory://                       in-process (tests)
    sqlite:///var/lib/tabby/tabby.db one file, WAL, shared by processes (default)
    etcd://127.0.0.1:2379[,h:p...]  etcd v3 through its HTTP gateway, plain HTTP
    etcds://h:p[,h:p...]?ca=/ca.crt&cert=/client.crt&key=/client.key
                                    the same over TLS with a client certificate
    kubernetes:///path/kubeconfig   the Kubernetes API (kubernetes:// in a pod: in-cluster)

``etcds://`` takes its files from the query or from ``$TABBY_ETCD_CA``,
``$TABBY_ETCD_CERT`` and ``$TABBY_ETCD_KEY`` (the query wins; Calico's
``ETCD_CA_CERT_FILE``, ``ETCD_CERT_FILE``, ``ETCD_KEY_FILE``), every path
absolute, each file read and parsed before the store is returned
(``tabby.store.etcdtls``). ``etcd://`` with a query, or with one of those
variables set, is refused rather than silently sent in clear.
"""

from __future__ import annotations

import os

from tabby.errors import ConfigError

# The contract's types load on first use (PEP 562 ``__getattr__`` below): tabby-ipam's
# exec path imports tabby.store.sqlitedb on every pod, and with it this package, but
# never base.py (dataclasses, queue, abc) or urllib.parse (re).
TYPE_CHECKING = False  # not typing.TYPE_CHECKING, for the same reason
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from tabby.store.base import Event, Item, Key, ListResult, Store, Watch

_BASE_NAMES = frozenset({"Event", "Item", "Key", "ListResult", "Store", "Watch"})

DEFAULT_URL = "sqlite:///var/lib/tabby/tabby.db"
ENV = "TABBY_DATASTORE"

__all__ = ["DEFAULT_URL", "Event", "Item", "Key", "ListResult", "Store", "Watch", "open_store",
           "store_url"]


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        from tabby.store import base
        return getattr(base, name)
    raise AttributeError(f"module 'tabby.store' has no attribute {name!r}")


def store_url(flag: str | None = None) -> str:
    """The datastore URL: the flag, else $TABBY_DATASTORE, else the default."""
    return flag or os.environ.get(ENV) or DEFAULT_URL


def open_store(url: str, *, env: Mapping[str, str] | None = None) -> Store:
    """The store ``url`` names; ``env`` (default: this process's environment) may
    hold etcd's TLS files."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"datastore {url!r}: expected sqlite:///PATH, etcd://HOST:PORT,"
                          " etcds://HOST:PORT?ca=...&cert=...&key=...,"
                          " kubernetes:///KUBECONFIG or memory://")
    if scheme == "memory":
        from tabby.store.memory import MemoryStore
        return MemoryStore()
    if scheme == "sqlite":
        from tabby.store.sqlite import SQLiteStore
        if not rest.startswith("/"):
            raise ConfigError(f"datastore {url!r}: the SQLite path must be absolute (sqlite:///PATH)")
        return SQLiteStore(rest)
    if scheme in ("etcd", "etcds"):
        return _open_etcd(url, scheme, rest, os.environ if env is None else env)
    if scheme == "kubernetes":
        from tabby.store.kubernetes import KubernetesStore
        if rest and not rest.startswith("/"):
            raise ConfigError(f"datastore {url!r}: the kubeconfig path must be absolute"
                              " (kubernetes:///PATH), or give none for in-cluster credentials")
        return KubernetesStore(rest or None)
    raise ConfigError(f"datastore {url!r}: unknown scheme {scheme!r}"
                      " (sqlite, etcd, etcds, kubernetes or memory)")


def _open_etcd(url: str, scheme: str, rest: str, env: Mapping[str, str]) -> Store:
    from urllib.parse import parse_qsl

    from tabby.store.etcd import EtcdStore
    from tabby.store.etcdtls import ENV_FILES, FILES, EtcdTLS
    where, question, query = rest.partition("?")
    endpoints = [e for e in where.strip("/").split(",") if e]
    if not endpoints:
        raise ConfigError(f"datastore {url!r}: name at least one etcd endpoint HOST:PORT")
    from_env = {f: env[var] for f, var in ENV_FILES.items() if env.get(var)}
    if scheme == "etcd":
        if question:
            raise ConfigError(f"datastore {url!r}: etcd:// is plain HTTP and takes no options;"
                              " for TLS write etcds://HOST:PORT?ca=...&cert=...&key=...")
        if from_env:
            var = ENV_FILES[next(iter(from_env))]
            raise ConfigError(f"datastore {url!r}: ${var} is set but etcd:// is plain HTTP;"
                              " write etcds:// for TLS, or unset it")
        return EtcdStore(endpoints)
    files, labels = dict(from_env), {f: f"${ENV_FILES[f]}=" for f in from_env}
    try:
        # A "+" in a path is a plus, not the space of an HTML form.
        pairs = parse_qsl(query.replace("+", "%2B"), keep_blank_values=True,
                          strict_parsing=bool(query))
    except ValueError as e:
        raise ConfigError(f"datastore {url!r}: the query does not parse ({e});"
                          " expected ca=PATH&cert=PATH&key=PATH") from e
    seen: set[str] = set()
    for name, value in pairs:
        if name not in FILES:
            raise ConfigError(f"datastore {url!r}: unknown option {name!r}"
                              " (etcds:// takes ca=, cert= and key=)")
        if name in seen:
            raise ConfigError(f"datastore {url!r}: {name}= is given twice")
        seen.add(name)
        files[name], labels[name] = value, f"{name}="
    try:
        tls = EtcdTLS.from_files(files, labels)
    except ConfigError as e:
        raise ConfigError(f"datastore {url!r}: {e}") from e
    return EtcdStore(endpoints, tls=tls)
