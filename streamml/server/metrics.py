"""Prometheus metrics of the REST service (prometheus-client).

Requests by route, method and status, request latency by route, feature reads by freshness
status, on-demand fetch outcomes by service, predictions by model, variant and role. With
several workers, `PROMETHEUS_MULTIPROC_DIR` is set by the runner and `/metrics` aggregates the
workers' files (prometheus-client's multiprocess mode); with one, the process's registry.
With a monitoring folder (the prediction store's `metrics/`, written by `streamml monitor
compute`), `/metrics` also serves the latest live-performance gauges
(`streamml.operators.monitoring_prometheus`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Content type of the Prometheus text format."""

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """The service's counters and histograms, in their own registry."""

    def __init__(self, monitoring_dir: Path | None = None) -> None:
        self._monitoring = None
        if monitoring_dir is not None:
            from streamml.operators.monitoring_prometheus import MonitoringCollector

            self._monitoring = MonitoringCollector(monitoring_dir)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # prometheus-client picks its value class when first imported; a worker forked from
            # a parent that imported it before the variable was set must pick it again.
            values.ValueClass = values.get_value_class()
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "streamml_http_requests", "HTTP requests", ["route", "method", "status"], registry=reg
        )
        self.latency = Histogram(
            "streamml_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_BUCKETS,
            registry=reg,
        )
        self.features = Counter(
            "streamml_feature_reads", "Feature values read, by freshness", ["status"], registry=reg
        )
        self.fetches = Counter(
            "streamml_ondemand_fetches",
            "On-demand fetches, by outcome (ok, failed, deadline)",
            ["service", "outcome"],
            registry=reg,
        )
        self.predictions = Counter(
            "streamml_predictions",
            "Predictions recorded",
            ["model", "version", "variant", "role"],
            registry=reg,
        )
        self.timeouts = Counter(
            "streamml_prediction_timeouts", "Timeout records", ["reason"], registry=reg
        )
        self._children: dict[tuple[str, str, int], tuple[object, object]] = {}
        self._feature_children: dict[str, Any] = {}
        self._prediction_children: dict[tuple[str, str, str, str], Any] = {}
        if self._monitoring is not None:
            reg.register(self._monitoring)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and its latency."""
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
        pair[0].inc()  # type: ignore[attr-defined]
        pair[1].observe(seconds)  # type: ignore[attr-defined]

    def count_features(self, statuses: dict[str, int]) -> None:
        """Count feature values read, by status (`{status: n}`)."""
        children = self._feature_children
        for status, n in statuses.items():
            child = children.get(status)
            if child is None:
                child = children[status] = self.features.labels(status)
            child.inc(n)

    def count_prediction(self, model: str, version: str, variant: str, role: str) -> None:
        """Count one recorded prediction."""
        key = (model, version, variant, role)
        child = self._prediction_children.get(key)
        if child is None:
            child = self._prediction_children[key] = self.predictions.labels(*key)
        child.inc()

    def render(self) -> bytes:
        """Return the Prometheus text of this process, or of every worker in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            if self._monitoring is not None:
                registry.register(self._monitoring)
            return generate_latest(registry)
        return generate_latest(self.registry)
