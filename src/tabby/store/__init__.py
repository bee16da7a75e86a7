"""Datastores: one contract (``Store``), three backends, chosen by URL.

    memory://                       in-process (tests)
    sqlite:///var/lib/tabby/tabby.db one file, WAL, shared by processes (default)
    etcd://127.0.0.1:2379[,h:p...]  etcd v3 through its HTTP gateway
    kubernetes:///path/kubeconfig   the Kubernetes API (kubernetes:// in a pod: in-cluster)
"""

from __future__ import annotations

import os

from tabby.errors import ConfigError
from tabby.store.base import Event, Item, Key, ListResult, Store, Watch

DEFAULT_URL = "sqlite:///var/lib/tabby/tabby.db"
ENV = "TABBY_DATASTORE"

__all__ = ["DEFAULT_URL", "Event", "Item", "Key", "ListResult", "Store", "Watch", "open_store",
           "store_url"]


def store_url(flag: str | None = None) -> str:
    """The datastore URL: the flag, else $TABBY_DATASTORE, else the default."""
    return flag or os.environ.get(ENV) or DEFAULT_URL


def open_store(url: str) -> Store:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"datastore {url!r}: expected sqlite:///PATH, etcd://HOST:PORT,"
                          " kubernetes:///KUBECONFIG or memory://")
    if scheme == "memory":
        from tabby.store.memory import MemoryStore
        return MemoryStore()
    if scheme == "sqlite":
        from tabby.store.sqlite import SQLiteStore
        if not rest.startswith("/"):
            raise ConfigError(f"datastore {url!r}: the SQLite path must be absolute (sqlite:///PATH)")
        return SQLiteStore(rest)
    if scheme == "etcd":
        from tabby.store.etcd import EtcdStore
        endpoints = [e for e in rest.strip("/").split(",") if e]
        if not endpoints:
            raise ConfigError(f"datastore {url!r}: name at least one etcd endpoint HOST:PORT")
        return EtcdStore(endpoints)
    if scheme == "kubernetes":
        from tabby.store.kubernetes import KubernetesStore
        if rest and not rest.startswith("/"):
            raise ConfigError(f"datastore {url!r}: the kubeconfig path must be absolute"
                              " (kubernetes:///PATH), or give none for in-cluster credentials")
        return KubernetesStore(rest or None)
    raise ConfigError(f"datastore {url!r}: unknown scheme {scheme!r}"
                      " (sqlite, etcd, kubernetes or memory)")
