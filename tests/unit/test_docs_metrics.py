"""docs/metrics.md names every metric the code exports, with its type and labels.

The tables' rows (``| `name` | type | `label`, ... | meaning |``) are compared
with the registries the code builds; a metric in one and not the other fails.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

from tabby.agent.metrics import AgentMetrics, Registry

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
ROW = re.compile(r"^\|\s*`(?P<name>[a-z_:]+)`\s*\|\s*(?P<kind>\w+)\s*\|(?P<labels>[^|]*)\|.+\|$")

# Every place that builds a Registry, and the registry it builds. A new one
# (say, for the controllers) must be listed here, and so documented.
def _agent() -> Registry:
    from tabby.agent.flows import FlowMetrics
    registry = AgentMetrics(lambda: ({}, {})).registry
    FlowMetrics(registry)  # the flow collector's series join it when flow logs are on
    from tabby.agent.policymetrics import PolicyMetrics
    from tabby.policy.flowids import FlowIds
    PolicyMetrics(registry, nft_read=lambda what: "{}", ids=lambda: FlowIds({}))
    return registry


REGISTRIES: dict[str, Callable[[], Registry]] = {"src/tabby/agent/metrics.py": _agent}


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            assert match["name"] not in rows, f"{match['name']} is documented twice"
            labels = tuple(re.findall(r"`(\w+)`", match["labels"]))
            rows[match["name"]] = (match["kind"], labels)
    return rows


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for build in REGISTRIES.values():
        for metric in build().metrics():
            out[metric.name] = (metric.kind, metric.label_names)
    return out


def test_every_exported_metric_is_documented_and_nothing_else() -> None:
    code, doc = exported(), documented()
    assert len(code) >= 15  # the agent's, at least: the registry was read
    missing = sorted(set(code) - set(doc))
    assert not missing, f"exported but not in docs/metrics.md: {missing}"
    stale = sorted(set(doc) - set(code))
    assert not stale, f"in docs/metrics.md but exported by nothing: {stale}"
    for name, (kind, labels) in code.items():
        assert doc[name] == (kind, labels), (
            f"{name}: the code has type {kind}, labels {list(labels)}; docs/metrics.md says"
            f" type {doc[name][0]}, labels {list(doc[name][1])}")


def test_no_registry_is_left_out() -> None:
    """A Registry built anywhere else would export metrics this test never reads."""
    builders = set()
    for path in (ROOT / "src" / "tabby").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "Registry"):
                builders.add(str(path.relative_to(ROOT)))
    assert builders == set(REGISTRIES), (
        f"Registry() is built in {sorted(builders)}; list each in REGISTRIES with the"
        " registry it builds, and document its metrics in docs/metrics.md")
