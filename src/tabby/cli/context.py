"""What every subcommand needs: which lab, which datastore, a typed client.

The datastore is, in order: ``--datastore``, ``$TABBY_DATASTORE``, the
datastore of the selected lab if that lab is up, the default SQLite file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tabby.errors import ConfigError
from tabby.store import DEFAULT_URL, ENV, open_store
from tabby.store.client import Client

LAB_ENV = "TABBY_LAB"
# This machine's agent's BIRD control socket (outside a lab).
DEFAULT_BIRD_SOCKET = Path("/run/tabby/bird/bird.ctl")
DEFAULT_LAB = "tabby"


def lab_name(args: argparse.Namespace) -> str:
    return str(getattr(args, "lab", None) or os.environ.get(LAB_ENV) or DEFAULT_LAB)


def wiring_lab(args: argparse.Namespace) -> object | None:
    """The selected lab if it is up and wires pods itself (SQLite, etcd): there
    ``apply`` of a Pod or Service goes through the lab. A Kubernetes-mode lab's
    API server, scheduler, controllers and kubelet stand-ins do that work."""
    lab = running_lab(args)
    if lab is None or str(getattr(lab, "datastore", "")).startswith("kubernetes://"):
        return None
    return lab


def running_lab(args: argparse.Namespace) -> object | None:
    """The LabState of the selected lab if it is up, else None."""
    try:
        from tabby.lab import state
    except ImportError:  # the lab package is optional for store-only use
        return None
    lab: object | None = state.load(lab_name(args))
    return lab


def datastore_url(args: argparse.Namespace) -> str:
    explicit = getattr(args, "datastore", None) or os.environ.get(ENV)
    if explicit:
        return str(explicit)
    lab = running_lab(args)
    if lab is not None:
        return str(lab.datastore)  # type: ignore[attr-defined]
    return DEFAULT_URL


def open_client(args: argparse.Namespace, *, create: bool = False,
                dry_run: bool = False) -> Client:
    """A client of the chosen datastore. Only commands that write resources pass
    ``create``: a reading command (get, describe, ipam show, ...) never creates a
    SQLite file, so a mistyped path is an error, not an empty store. ``dry_run``:
    writes are checked by the store's real rules and dropped (tabby.store.dryrun)."""
    url = datastore_url(args)
    if not create:
        require_existing(url)
    store = open_store(url)
    if dry_run:
        from tabby.store.dryrun import dry_run as dry
        store = dry(store)
    return Client(store)


def require_existing(url: str) -> None:
    """ConfigError if ``url`` is a SQLite file that does not exist (yet)."""
    scheme, sep, path = url.partition("://")
    if scheme != "sqlite" or not sep or not path.startswith("/") or os.path.exists(path):
        return
    raise ConfigError(
        f"datastore {url}: {path} does not exist (nothing has been written there yet);"
        f" choose another with --datastore URL or ${ENV}, or a lab's with --lab NAME /"
        f" ${LAB_ENV}; tabby apply creates it")
