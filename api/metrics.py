"""`GET /metrics`: the service in the Prometheus text format, for an operator's monitoring.

Two sources: what the database holds (`quanta_jobs.service_metrics`, read at each
scrape: jobs by kind and status, queued jobs, live workers, uploads and stored bytes,
job durations and attempts as histograms), and this API process's own HTTP latency by
route and status, measured by `HttpLatency` (a plain ASGI middleware; the route is its
template, `/v1/jobs/{job_id}`, so ids do not multiply the series).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from quanta_jobs.service_metrics import snapshot

#: HTTP latency buckets (seconds): probes and pages are milliseconds, uploads seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceCollector(Collector):
    """Reads the database at each scrape (`quanta_jobs.service_metrics.snapshot`)."""

    def __init__(self, sessions: Callable[[], Session], heartbeat_s: float) -> None:
        self.sessions, self.heartbeat_s = sessions, heartbeat_s

    def collect(self) -> Iterator[Any]:
        with self.sessions() as session:
            now = snapshot(session, self.heartbeat_s)
        jobs = GaugeMetricFamily("quanta_jobs", "Jobs by kind and status.",
                                 labels=["kind", "status"])
        for (kind, status), count in sorted(now.jobs.items()):
            jobs.add_metric([kind, status], count)
        yield jobs
        queued = sum(n for (kind, status), n in now.jobs.items()
                     if status == "queued" and kind != "study")
        yield GaugeMetricFamily("quanta_queued_jobs", "Jobs waiting for a worker (a study's "
                                "jobs each count, the study itself does not).", value=queued)
        yield GaugeMetricFamily("quanta_workers_alive", "Workers whose heartbeat is recent.",
                                value=now.workers_alive)
        yield GaugeMetricFamily("quanta_uploads", "Uploaded files kept.", value=now.uploads)
        stored = GaugeMetricFamily("quanta_stored_bytes", "Bytes kept, by area.",
                                   labels=["area"])
        stored.add_metric(["uploads"], now.upload_bytes)
        stored.add_metric(["artifacts"], now.artifact_bytes)
        yield stored
        for name, text, histograms in (
                ("quanta_job_duration_seconds", "From start to end, of the jobs that ended.",
                 now.durations),
                ("quanta_job_attempts", "Attempts of the jobs that ended.", now.attempts)):
            family = HistogramMetricFamily(name, text, labels=["kind"])
            for kind, h in sorted(histograms.items()):
                family.add_metric([kind], [(_bound(b), n) for b, n in h.buckets], h.total)
            yield family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def make_registry(sessions: Callable[[], Session], heartbeat_s: float
                  ) -> tuple[CollectorRegistry, Histogram]:
    """The app's own registry (not the process-global one: tests build many apps)."""
    registry = CollectorRegistry()  # not described: read the database only when scraped
    registry.register(ServiceCollector(sessions, heartbeat_s))
    latency = Histogram("quanta_http_request_duration_seconds",
                        "Time to answer a request, by method, route and status.",
                        ["method", "route", "status"], buckets=LATENCY_BUCKETS,
                        registry=registry)
    return registry, latency


class HttpLatency:
    """ASGI middleware that times each HTTP request into `latency`."""

    def __init__(self, app: Any, latency: Histogram) -> None:
        self.app, self.latency = app, latency

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.latency.labels(scope["method"], template, str(status[0])).observe(
                time.perf_counter() - start)
