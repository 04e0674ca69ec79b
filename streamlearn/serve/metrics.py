"""What `GET /metrics` reports, in the Prometheus text format (one registry per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format."""


class Metrics:
    """Requests, errors, latency, batch sizes, and the resident tasks and bytes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("streamlearn_requests", "HTTP requests answered, by route and status.",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("streamlearn_errors", "HTTP requests answered with a 4xx or 5xx status, by route.",
                              ["route", "status"], registry=self.registry)
        self.latency = Histogram("streamlearn_request_seconds", "Time from request to response, by route.",
                                 ["route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_rows = Histogram("streamlearn_batch_rows", "Rows per inference batch.", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.predicted_rows = Counter("streamlearn_predicted_rows", "Rows classified.", registry=self.registry)
        self.resident_tasks = Gauge("streamlearn_resident_tasks", "Tasks whose parts are in memory.",
                                    registry=self.registry)
        self.resident_bytes = Gauge("streamlearn_resident_bytes", "Bytes of the resident tasks' parts.",
                                    registry=self.registry)
        self.loads = Gauge("streamlearn_artifact_loads", "Artifacts loaded and verified since start.",
                           registry=self.registry)
        self.evictions = Gauge("streamlearn_evictions", "Tasks evicted to stay within the memory budget.",
                               registry=self.registry)

    def observe_batch(self, rows: int) -> None:
        """Count one batch of `rows` rows."""
        self.batch_rows.observe(rows)
        self.predicted_rows.inc(rows)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self, resident) -> bytes:
        """The text exposition, with the residency gauges read from `resident` now."""
        self.resident_tasks.set(len(resident.resident()))
        self.resident_bytes.set(resident.resident_bytes())
        self.loads.set(resident.loads)
        self.evictions.set(resident.evictions)
        return generate_latest(self.registry)
