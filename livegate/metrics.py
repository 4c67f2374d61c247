"""Prometheus metrics without a client library: counters, gauges and histograms, rendered
in the text exposition format. Names are prefixed ``livegate_``.

Hot paths increment plain attributes (``pushes.value += n``); labelled series are dict
lookups. With ``http_server.workers > 1`` every worker writes a snapshot to a shared folder
and ``/metrics`` adds the workers' values up (per host).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "METRICS", "render", "merge_snapshots"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.value = 0.0
        self.series: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def labels_inc(self, values: tuple[str, ...], amount: float = 1.0) -> None:
        self.series[values] = self.series.get(values, 0.0) + amount

    def snapshot(self) -> dict[str, Any]:
        if self.label_names:
            return {"|".join(k): v for k, v in self.series.items()}
        return {"": self.value}


class Gauge:
    kind = "gauge"

    def __init__(self, name: str, help_text: str, fn: Callable[[], float] | None = None,
                 labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.fn = fn
        self.value = 0.0
        self.series: dict[tuple[str, ...], float] = {}

    def snapshot(self) -> dict[str, Any]:
        if self.label_names:
            return {"|".join(k): v for k, v in self.series.items()}
        return {"": float(self.fn()) if self.fn is not None else self.value}


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.buckets = buckets
        self.series: dict[tuple[str, ...], list[float]] = {}  # counts per bucket + [+Inf count, sum]

    def observe(self, values: tuple[str, ...], seconds: float) -> None:
        row = self.series.get(values)
        if row is None:
            row = self.series[values] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, seconds)] += 1
        row[-1] += seconds

    def snapshot(self) -> dict[str, Any]:
        return {"|".join(k): list(v) for k, v in self.series.items()}


Metric = Counter | Gauge | Histogram


class Registry:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}

    def add(self, metric: Metric) -> Any:
        self.metrics[metric.name] = metric
        return metric

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: metric.snapshot() for name, metric in self.metrics.items()}


def merge_snapshots(snapshots: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Add the workers' values up, series by series."""
    total: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        for name, series in snap.items():
            into = total.setdefault(name, {})
            for key, value in series.items():
                if isinstance(value, list):
                    prev = into.get(key)
                    into[key] = [a + b for a, b in zip(prev, value, strict=True)] if prev else list(value)
                else:
                    into[key] = into.get(key, 0.0) + value
    return total


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf"
    return repr(float(v)) if v != int(v) else str(int(v))


def render(registry: Registry, snapshot: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, metric in registry.metrics.items():
        series = snapshot.get(name, {})
        lines.append(f"# HELP {name} {metric.help}")
        lines.append(f"# TYPE {name} {metric.kind}")
        for key, value in sorted(series.items()):
            values = tuple(key.split("|")) if metric.label_names else ()
            if isinstance(metric, Histogram):
                cumulative = 0.0
                for bound, count in zip((*metric.buckets, math.inf), value[:-1], strict=True):
                    cumulative += count
                    lbl = _labels((*metric.label_names, "le"), (*values, _num(bound)))
                    lines.append(f"{name}_bucket{lbl} {_num(cumulative)}")
                base = _labels(metric.label_names, values)
                lines.append(f"{name}_sum{base} {value[-1]!r}")
                lines.append(f"{name}_count{base} {_num(cumulative)}")
            else:
                lines.append(f"{name}{_labels(metric.label_names, values)} {_num(value)}")
    return "\n".join(lines) + "\n"


class _Metrics:
    """The metrics one livegate process keeps."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.connections = r.add(Gauge("livegate_connections", "Open client connections."))
        self.subscriptions = r.add(Gauge("livegate_subscriptions", "Live client subscriptions."))
        self.channels = r.add(Gauge("livegate_channels", "Channels with local subscribers."))
        self.commands = r.add(Counter("livegate_commands_total", "Client commands by method and result.",
                                      ("method", "result")))
        self.command_duration = r.add(Histogram("livegate_command_duration_seconds",
                                                "Client command handling time.", ("method",)))
        self.publications = r.add(Counter("livegate_publications_total",
                                          "Publications delivered to this node's hub (in)."))
        self.pushes = r.add(Counter("livegate_pushes_total", "Messages written to clients (out)."))
        self.bytes_in = r.add(Counter("livegate_bytes_in_total", "Bytes of client frames received."))
        self.bytes_out = r.add(Counter("livegate_bytes_out_total", "Bytes written to clients."))
        self.disconnects = r.add(Counter("livegate_disconnects_total", "Disconnects by close code.", ("code",)))
        self.api_requests = r.add(Counter("livegate_api_requests_total", "Server API calls by method and result.",
                                          ("method", "result")))
        self.api_duration = r.add(Histogram("livegate_api_duration_seconds", "Server API call time.", ("method",)))
        self.broker_publish = r.add(Histogram("livegate_broker_publish_duration_seconds",
                                              "Engine publish time.", ("engine",)))
        self.engine_up = r.add(Gauge("livegate_engine_up", "1 when the engine (memory or redis) is reachable."))
        self.postgres_up = r.add(Gauge("livegate_postgres_up", "1 when PostgreSQL is reachable (0 when not configured)."))
        self.archive_buffered = r.add(Gauge("livegate_archive_buffered", "Publications waiting to be archived."))
        self.archive_written = r.add(Gauge("livegate_archive_written_total", "Publications written to the archive."))
        self.archive_dropped = r.add(Gauge("livegate_archive_dropped_total",
                                           "Publications dropped from the archive because its buffer was full."))
        self.outbox_executed = r.add(Gauge("livegate_outbox_executed_total", "Outbox rows executed."))
        self.outbox_dead = r.add(Gauge("livegate_outbox_dead_total", "Outbox rows moved to outbox_dead."))


METRICS = _Metrics()
