"""Helpers for tests that run a real Kubernetes control plane (tabby.kube.controlplane).

    with running_control_plane(tmp_path) as cp: ...       # skips when not built
    kubectl(cp, "get", "pods", "-A")                      # -> CompletedProcess
    apply_yaml(cp, docs)                                  # kubectl apply -f -
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tabby.errors import ConfigError
from tabby.kube import binaries
from tabby.kube.controlplane import ControlPlane

SERVICE_RANGES = ["198.18.128.0/20", "fd7a:bb1e:2::/112"]


def require_binaries() -> Path:
    try:
        return binaries.bin_dir()
    except ConfigError as e:
        pytest.skip(str(e))


@contextlib.contextmanager
def running_control_plane(directory: Path, **options: Any) -> Iterator[ControlPlane]:
    require_binaries()
    with ControlPlane(directory, service_ranges=options.pop("service_ranges", SERVICE_RANGES),
                      **options) as cp:
        yield cp


def kubectl(cp: ControlPlane, *args: str, stdin: str | None = None, check: bool = True,
            kubeconfig: Path | None = None, timeout: float = 120.0,
            ) -> subprocess.CompletedProcess[str]:
    argv = [binaries.program("kubectl"), "--kubeconfig", str(kubeconfig or cp.admin_kubeconfig),
            *args]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


def apply_yaml(cp: ControlPlane, docs: Iterable[dict[str, Any]], *args: str) -> str:
    return kubectl(cp, "apply", *args, "-f", "-", stdin=yaml.safe_dump_all(list(docs))).stdout
