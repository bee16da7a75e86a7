"""Counters, gauges and histograms, rendered in Prometheus' text format (0.0.4).

Small and dependency-free: the agent has a handful of series. Every metric
is thread-safe; ``Registry.render()`` is what ``/metrics`` serves. Label
values are escaped as the format requires.
"""

from __future__ import annotations

import bisect
import math
import platform
import threading
from collections.abc import Callable, Iterable, Sequence

import tabby

Labels = tuple[tuple[str, str], ...]

BUILD_INFO = "tabby_build_info"  # ``tabby version`` reads it back (tabby.cli.version)
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(names: Sequence[str], values: Sequence[str]) -> Labels:
    if len(names) != len(values):
        raise ValueError(f"expected labels {list(names)}, got {list(values)}")
    return tuple(zip(names, values, strict=True))


def _fmt_labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = (*labels, *extra)
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[Labels, float] = {}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        key = _labels(self.label_names, label_values)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(_labels(self.label_names, label_values), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *label_values: str) -> None:
        key = _labels(self.label_names, label_values)
        with self._lock:
            self._values[key] = value


class FuncGauge(_Metric):
    """A gauge (or counter) read at render time: ``read()`` -> {label values: value}."""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str],
                 read: Callable[[], dict[tuple[str, ...], float]], kind: str = "gauge") -> None:
        super().__init__(name, help_text, label_names)
        self._read = read
        self.kind = kind

    def samples(self) -> list[str]:
        values = self._read()
        return [f"{self.name}{_fmt_labels(_labels(self.label_names, k))} {_fmt_value(v)}"
                for k, v in sorted(values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = (),
                 buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}  # counts, [sum, n]

    def observe(self, value: float, *label_values: str) -> None:
        key = _labels(self.label_names, label_values)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * len(self.buckets), [0.0, 0.0]))
            index = bisect.bisect_left(self.buckets, value)
            if index < len(counts):
                counts[index] += 1
            total[0] += value
            total[1] += 1

    def count(self, *label_values: str) -> int:
        with self._lock:
            series = self._series.get(_labels(self.label_names, label_values))
            return int(series[1][1]) if series else 0

    def samples(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, (list(c), list(t))) for k, (c, t) in self._series.items())
        for key, (counts, (total, n)) in items:
            running = 0
            for bound, count in zip(self.buckets, counts, strict=True):
                running += count
                out.append(f"{self.name}_bucket{_fmt_labels(key, (('le', _fmt_value(bound)),))}"
                           f" {running}")
            out.append(f"{self.name}_bucket{_fmt_labels(key, (('le', '+Inf'),))} {int(n)}")
            out.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(total)}")
            out.append(f"{self.name}_count{_fmt_labels(key)} {int(n)}")
        return out


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> None:
        self._metrics.append(metric)

    def metrics(self) -> tuple[_Metric, ...]:
        """Every metric, in render order (docs/metrics.md is checked against it)."""
        return tuple(self._metrics)

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self.add(metric)
        return metric

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help_text, labels)
        self.add(metric)
        return metric

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = (),
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        metric = Histogram(name, help_text, labels, buckets)
        self.add(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines += metric.header()
            lines += metric.samples()
        return "\n".join(lines) + "\n"


class AgentMetrics:
    """The agent's series, in one place."""

    def __init__(self, netlink_counts: Callable[[], tuple[dict[str, int], dict[str, int]]]
                 ) -> None:
        self.registry = Registry()
        r = self.registry
        r.gauge(BUILD_INFO, "Always 1; the labels say which tabby and Python this agent runs.",
                ("version", "python")).set(1, tabby.__version__, platform.python_version())
        r.add(FuncGauge("tabby_netlink_calls_total", "Netlink (and sysctl) calls by operation.",
                        ("op",), lambda: {(k,): v for k, v in netlink_counts()[0].items()},
                        kind="counter"))
        r.add(FuncGauge("tabby_netlink_errors_total", "Netlink calls the kernel refused.",
                        ("op",), lambda: {(k,): v for k, v in netlink_counts()[1].items()},
                        kind="counter"))
        self.cni_requests = r.counter("tabby_cni_requests_total",
                                      "CNI requests by command and outcome.",
                                      ("command", "result"))
        self.cni_seconds = r.histogram("tabby_cni_request_duration_seconds",
                                       "Time the agent spent on a CNI request.", ("command",))
        self.endpoints = r.gauge("tabby_endpoints", "Workload endpoints on this node.")
        self.ready = r.gauge("tabby_ready", "1 once the first full sync has completed.")
        self.syncs = r.counter("tabby_syncs_total", "Reconcile passes by outcome.", ("result",))
        self.sync_seconds = r.histogram("tabby_sync_duration_seconds",
                                        "Time of one reconcile pass (compute and apply).")
        self.route_changes = r.counter("tabby_route_changes_total",
                                       "Routes written or deleted by the reconciler.", ("op",))
        self.routes_desired = r.gauge("tabby_routes_desired", "Routes this node should have.")
        self.route_conflicts = r.gauge("tabby_route_conflicts",
                                       "Desired routes held by another protocol's route.")
        self.routes_unresolved = r.gauge("tabby_routes_unresolved",
                                         "Desired routes whose device is missing.")
        self.store_events = r.counter("tabby_store_events_total",
                                      "Store events the agent consumed.", ("resource",))
        self.store_relists = r.counter("tabby_store_relists_total",
                                       "Full re-lists (start, compaction, errors).")
        self.endpoint_updates = r.counter("tabby_endpoint_label_updates_total",
                                          "WorkloadEndpoints rewritten after a pod or namespace"
                                          " changed.")

    def observe(self, command: str, seconds: float, ok: bool) -> None:
        """The CNI server's metrics sink."""
        self.cni_requests.inc(command, "ok" if ok else "error")
        self.cni_seconds.observe(seconds, command)
