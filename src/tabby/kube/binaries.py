"""Where the Kubernetes programs tabby runs come from.

kube-apiserver, kube-controller-manager, kube-scheduler and kubectl are built
from the Kubernetes Go module at one pinned release by
``scripts/build-kubernetes`` into a cache outside the checkout, keyed by the
release (``/var/cache/tabby/kubernetes/<release>/bin``). ``TABBY_K8S_BIN``
names another directory holding the same four programs.
"""

from __future__ import annotations

import os
from pathlib import Path

from tabby.errors import ConfigError

__all__ = ["KUBERNETES_VERSION", "PROGRAMS", "bin_dir", "program"]

KUBERNETES_VERSION = "v1.37.2"
CACHE = Path("/var/cache/tabby/kubernetes")
PROGRAMS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def bin_dir() -> Path:
    """The directory of the built programs; ConfigError naming the fix if absent."""
    override = os.environ.get("TABBY_K8S_BIN")
    base = Path(override) if override else CACHE / KUBERNETES_VERSION / "bin"
    missing = [p for p in PROGRAMS if not os.access(base / p, os.X_OK)]
    if missing:
        raise ConfigError(f"Kubernetes {KUBERNETES_VERSION} programs missing in {base}:"
                          f" {', '.join(missing)}; build them with scripts/build-kubernetes"
                          " (make bootstrap does)")
    return base


def program(name: str) -> str:
    return str(bin_dir() / name)
