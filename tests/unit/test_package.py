"""The distribution: every third-party import declared with bounds, one version, ``tabby version``.

Imports are read from the source (every ``import`` and ``from ... import`` of every
module under src/tabby, at any level: a lazy import inside a function counts), their
top-level names mapped to the distributions that provide them
(``importlib.metadata.packages_distributions()``) and held to pyproject.toml's
``[project] dependencies``. The wheel itself is built and installed by
tests/netns/test_wheel.py.
"""

from __future__ import annotations

import ast
import json
import platform
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import grimp
import pytest

import tabby
from tabby.cli import installcni
from tabby.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SRC = ROOT / "src" / "tabby"


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, str]:
    """{normalised distribution name: requirement} of [project] dependencies."""
    out = {}
    for req in PYPROJECT["project"]["dependencies"]:
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
        assert m, req
        out[normal(m.group(0))] = req
    return out


def third_party_imports() -> dict[str, list[str]]:
    """{top-level module outside the standard library and tabby: [modules importing it]}."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in ("tabby", "__future__"):
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    providers = metadata.packages_distributions()
    wanted = declared()
    imports = third_party_imports()
    assert {"yaml", "kubernetes", "urllib3", "pyroute2"} <= set(imports)  # the walk sees them
    missing = {}
    for module, where in sorted(imports.items()):
        dists = {normal(d) for d in providers.get(module, [])}
        if not dists & set(wanted):
            missing[module] = (sorted(dists) or "not installed", where[:3])
    assert missing == {}, f"imported but not in [project] dependencies: {missing}"


def test_every_dependency_has_bounds_and_is_used() -> None:
    providers = metadata.packages_distributions()
    used = {normal(d) for m in third_party_imports() for d in providers.get(m, [])}
    for name, req in declared().items():
        assert re.search(r">=\s*[\d.]+", req) and re.search(r"<\s*[\d.]+", req), req
        assert name in used, f"{req} is declared but nothing under src/tabby imports it"


def test_one_version_and_the_distribution_name() -> None:
    project = PYPROJECT["project"]
    assert project["name"] == tabby.DISTRIBUTION == "tabby-network"
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tabby.__version__"}
    assert set(project["scripts"]) == {"tabby", "tabby-cni", "tabby-ipam"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", tabby.__version__)


def test_tabby_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--client"]) == 0
    assert capsys.readouterr().out == f"tabby {tabby.__version__}\n"
    assert main(["version", "--client", "-o", "json"]) == 0
    client = {"version": tabby.__version__, "python": platform.python_version(),
              "distribution": "tabby-network"}
    assert json.loads(capsys.readouterr().out) == {**client, "client": client}
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"tabby {tabby.__version__}\n"


def test_install_cni_copies_what_the_plugins_import() -> None:
    """tabby-ipam's package directory holds the distributions its imports come from;
    tabby-cni needs nothing outside the standard library."""
    graph = grimp.build_graph("tabby", include_external_packages=True, cache_dir=None)
    providers = metadata.packages_distributions()
    copied = {normal(d.metadata["Name"]) for d in installcni.distributions(
        installcni.IPAM_DISTRIBUTIONS)}
    for entry, allowed in (("tabby.cni.plugin", set()), ("tabby.ipam.plugin", copied)):
        external = {m for m in graph.find_upstream_modules(entry)
                    if not m.startswith("tabby") and m not in sys.stdlib_module_names}
        needed = {normal(d) for m in external for d in providers.get(m, [m])}
        assert needed <= allowed, (entry, needed - allowed)
    assert {"kubernetes", "etcd3gw", "requests", "urllib3", "pyyaml"} <= copied
    assert not {"pyroute2", "cryptography"} & copied  # the agent's and the lab's, not IPAM's
