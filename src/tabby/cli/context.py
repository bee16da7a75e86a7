"""What every subcommand needs: which lab, which datastore, a typed client.

The datastore is, in order: ``--datastore``, ``$TABBY_DATASTORE``, the
datastore of the selected lab if that lab is up, the default SQLite file.
"""

from __future__ import annotations

import argparse
import os

from tabby.store import DEFAULT_URL, ENV, open_store
from tabby.store.client import Client

LAB_ENV = "TABBY_LAB"
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


def open_client(args: argparse.Namespace) -> Client:
    return Client(open_store(datastore_url(args)))
