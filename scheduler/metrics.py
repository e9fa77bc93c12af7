"""The clock's /metrics (Prometheus text format) and /healthz, on one HTTP port.

Per job: rows read, posted and rejected; requests, retries and 429 answers; runs by
status; the last run's duration; the last success time; the cursor lag (seconds between
now and the checkpoint's cursor value); the dead-letter depth.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import loader


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


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on ``host:port`` in a daemon thread.
    ``health`` returns (healthy, details)."""

    def __init__(
        self,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        port: int,
        host: str = "0.0.0.0",
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            """Answers ``/metrics`` and ``/healthz``; anything else is 404."""

            def do_GET(self) -> None:
                """``/metrics``: the registry as text; ``/healthz``: 200 or 503 with
                ``health()``'s details as JSON (the query string is ignored)."""
                if self.path.split("?")[0] == "/metrics":
                    self._answer(200, CONTENT_TYPE_LATEST, metrics.text())
                elif self.path.split("?")[0] == "/healthz":
                    healthy, details = health()
                    body = json.dumps({"status": "ok" if healthy else "stalled", **details})
                    self._answer(200 if healthy else 503, "application/json", body.encode())
                else:
                    self._answer(404, "text/plain", b"not found\n")

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Scrapes are not worth a log line each."""

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="loader-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket; waits for the serving loop to end."""
        self._httpd.shutdown()
        self._httpd.server_close()
