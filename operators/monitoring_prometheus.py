"""The latest monitoring figures as Prometheus gauges (prometheus-client).

One gauge family, `streamml_model_performance`, labelled model, version, variant, window
(`hour`, `day` or `all`), metric, and class, predicted, feature, status (empty when the metric
has none): each group's latest hour and day windows and its cumulative figures. Undefined
figures (null) are left out. `streamml_model_performance_window_start_seconds` gives each
latest window's start. `MonitoringCollector` reads the metrics table at every scrape (again only
when the file changed) and can be registered in any prometheus-client registry, e.g. the REST
service's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from streamml.operators.monitoring_store import latest_windows, metrics_path, read_metrics

__all__ = ["PERFORMANCE_GAUGE", "MonitoringCollector", "performance_families", "render_prometheus"]

PERFORMANCE_GAUGE = "streamml_model_performance"
"""Name of the gauge family of the monitoring figures."""
_LABELS = ("model", "version", "variant", "window", "metric", "class", "predicted", "feature")
_LABELS += ("status",)


def performance_families(table: pa.Table) -> list[GaugeMetricFamily]:
    """Return the gauge families of the latest windows of a metrics table."""
    figures = GaugeMetricFamily(
        PERFORMANCE_GAUGE,
        "Live model performance of the latest hour and day windows and cumulative",
        labels=_LABELS,
    )
    starts = GaugeMetricFamily(
        f"{PERFORMANCE_GAUGE}_window_start_seconds",
        "Start of the latest window the monitoring figures are from (UTC epoch seconds)",
        labels=("model", "version", "variant", "window"),
    )
    seen = set()
    for r in latest_windows(table).to_pylist():
        if r["window_start"] is not None:
            key = (r["model"], r["version"], r["variant"], r["window"])
            if key not in seen:
                seen.add(key)
                starts.add_metric(key, r["window_start"].timestamp())
        if r["value"] is None:
            continue
        figures.add_metric([r[k] or "" for k in _LABELS], r["value"])
    return [figures, starts]


def render_prometheus(table: pa.Table) -> bytes:
    """Return the latest windows of a metrics table in the Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(_Fixed(performance_families(table)))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.families


class MonitoringCollector(Collector):
    """Collects the gauges from the metrics table at `path` (nothing while it does not exist)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = metrics_path(Path(path))
        self._stamp: tuple[int, int] | None = None
        self._families: list[GaugeMetricFamily] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the gauges of the table as it is now."""
        try:
            st = self.path.stat()
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._families = performance_families(read_metrics(self.path))
            except (OSError, pa.ArrowInvalid):
                return
            self._stamp = stamp
        yield from self._families
