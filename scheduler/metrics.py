"""The clock's /metrics (Prometheus text format) and /healthz, on one HTTP port with
the status page (:mod:`.web`).

Per job: rows read, posted and rejected; requests, retries and 429 answers; runs by
status; the last run's duration; the last success time; the cursor lag (seconds between
now and the checkpoint's cursor value); the dead-letter depth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import loader

from .web import Response, WebServer, health_route


class Metrics:
    """The clock's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        job = ["job"]

        def counter(name: str, doc: str, labels: list[str] = job) -> Counter:
            """A ``loader_``-prefixed counter in this registry, labelled by job."""
            return Counter(f"loader_{name}", doc, labels, registry=self.registry)

        def gauge(name: str, doc: str) -> Gauge:
            """A ``loader_``-prefixed gauge in this registry, labelled by job."""
            return Gauge(f"loader_{name}", doc, job, registry=self.registry)

        self.rows_read = counter("rows_read", "Rows read from the source.")
        self.rows_posted = counter("rows_posted", "Rows the endpoint acknowledged.")
        self.rows_rejected = counter("rows_rejected", "Rows rejected and dead-lettered.")
        self.requests = counter("requests", "HTTP requests, retries included.")
        self.retries = counter("retries", "Requests retried.")
        self.throttled = counter("throttled", "429 Too Many Requests answers.")
        self.runs = counter("runs", "Runs, by how they ended.", ["job", "status"])
        self.duration = gauge("run_duration_seconds", "Duration of the last run.")
        self.last_success = gauge("last_success_timestamp_seconds", "When a run last succeeded.")
        self.cursor_lag = gauge("cursor_lag_seconds", "Age of the checkpoint's cursor value.")
        self.dead_letters = gauge("dead_letters", "Rows waiting in the dead-letter table.")

    def observe(
        self, job: str, result: loader.RunResult | None, status: str, *,
        lag: float | None, dead_letters: int | None, now: float,
    ) -> None:  # fmt: skip
        """Record one run (``result`` is ``None`` when it never started)."""
        self.runs.labels(job, status).inc()
        if result is not None:
            self.rows_read.labels(job).inc(result.rows_read)
            self.rows_posted.labels(job).inc(result.rows_posted)
            self.rows_rejected.labels(job).inc(result.rows_rejected)
            self.requests.labels(job).inc(result.requests)
            self.retries.labels(job).inc(result.retries)
            self.throttled.labels(job).inc(result.throttled)
            self.duration.labels(job).set(result.duration)
        if status in (loader.Status.SUCCEEDED, loader.Status.PARTIAL):
            self.last_success.labels(job).set(now)
        if lag is not None:
            self.cursor_lag.labels(job).set(lag)
        if dead_letters is not None:
            self.dead_letters.labels(job).set(dead_letters)

    def text(self) -> bytes:
        """The Prometheus exposition of every metric."""
        return bytes(generate_latest(self.registry))


class MetricsServer(WebServer):
    """Serves ``/metrics`` and ``/healthz`` on ``host:port`` in a daemon thread, and
    ``page`` (the status page) at ``/``, behind ``password`` when given.
    ``health`` returns (healthy, details)."""

    def __init__(
        self,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        port: int,
        host: str = "0.0.0.0",
        *,
        page: Callable[[], Response] | None = None,
        password: str | None = None,
    ) -> None:
        routes = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.text()),
            "/healthz": health_route(health),
            **({} if page is None else {"/": page}),
        }
        super().__init__(routes, port, host, password=password)
