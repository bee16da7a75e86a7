"""The wheel: built from a copy of the checkout, installed into a fresh virtualenv.

No root and no namespace, but it needs PyPI (setuptools for the isolated build,
tabby's dependencies for the install; pip's cache makes a second run quick), so
it lives here rather than in tests/unit, marked slow. Built with ``pip wheel
--no-deps`` from a copy (tests included, so that leaving them out is the
configuration's doing, and the checkout gets no build/ or egg-info), installed
with Debian's ``/usr/bin/python3 -m venv``, then every command runs from a
directory outside the checkout with PYTHONPATH unset.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

import tabby

CHECKOUT = Path(__file__).resolve().parents[2]
PYTHON = Path("/usr/bin/python3")
NOT_SOURCE = (".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".mypy_cache",
              ".ruff_cache", ".pytest_cache", "var")

pytestmark = pytest.mark.skipif(not PYTHON.is_file(), reason=f"no {PYTHON} (Debian python3)")


def run(argv: list[str], cwd: Path, timeout: float = 600,
        extra: dict[str, str] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(argv, cwd=cwd, env={**env, **(extra or {})}, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def requirement(text: str) -> tuple[str, frozenset[str]]:
    """("pyyaml", {">=6.0", "<7"}) of "PyYAML>=6.0,<7" (metadata may reorder the bounds)."""
    m = re.fullmatch(r"([A-Za-z0-9._-]+)(.*)", text.replace(" ", ""))
    assert m, text
    return m.group(1).lower(), frozenset(m.group(2).split(","))


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_virtualenv(tmp_path: Path) -> None:
    started = time.monotonic()
    source, dist, venv, elsewhere = (tmp_path / d for d in ("src", "dist", "venv", "cwd"))
    shutil.copytree(CHECKOUT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    elsewhere.mkdir()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        elsewhere)
    built = time.monotonic()
    [wheel] = dist.glob("*.whl")
    assert wheel.name == f"tabby_network-{tabby.__version__}-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = f"tabby_network-{tabby.__version__}.dist-info"
        meta = zf.read(f"{info}/METADATA").decode()
        scripts = zf.read(f"{info}/entry_points.txt").decode()
    assert "tabby/py.typed" in names and "tabby/cni/plugin.py" in names
    # tabby ui's page is package data
    assert {f"tabby/ui/static/{f}" for f in ("index.html", "app.js", "app.css")} <= set(names)
    assert [n for n in names if n.startswith("tests/") or "/tests/" in n] == []
    assert [n for n in names if n.endswith(".pyc") or "__pycache__" in n] == []
    assert {n.split("/")[0] for n in names} == {"tabby", info}
    assert re.search(r"^Name: tabby-network$", meta, re.M)
    assert re.search(rf"^Version: {re.escape(tabby.__version__)}$", meta, re.M)
    declared = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    required = re.findall(r"^Requires-Dist: ([^;\n]+)$", meta, re.M)
    assert {requirement(r) for r in required} == {requirement(r) for r in declared["dependencies"]}
    for script in ("tabby = tabby.cli.main:main", "tabby-cni = tabby.cni.plugin:main",
                   "tabby-ipam = tabby.ipam.plugin:main"):
        assert script in scripts

    run([str(PYTHON), "-m", "venv", str(venv)], elsewhere)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], elsewhere)
    installed = time.monotonic()
    run([str(venv / "bin" / "python"), "-m", "pip", "check"], elsewhere)
    where = run([str(venv / "bin" / "python"), "-c", "import tabby; print(tabby.__file__)"],
                elsewhere)
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout's

    assert run([str(venv / "bin" / "tabby"), "--version"], elsewhere) == \
        f"tabby {tabby.__version__}\n"
    client = {"version": tabby.__version__, "python": platform.python_version(),
              "distribution": "tabby-network"}
    assert json.loads(run([str(venv / "bin" / "tabby"), "version", "--client", "-o", "json"],
                          elsewhere)) == {**client, "client": client}
    for plugin in ("tabby-cni", "tabby-ipam"):
        answer = json.loads(run([str(venv / "bin" / plugin)], elsewhere,
                                extra={"CNI_COMMAND": "VERSION"}))
        assert "1.1.0" in answer["supportedVersions"], answer
    print(f"\nwheel: built in {built - started:.1f} s, installed with its dependencies in "
          f"{installed - built:.1f} s, {time.monotonic() - started:.1f} s in all")
