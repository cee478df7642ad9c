"""Prometheus metrics of the server, in a registry of their own (one per app, so several apps
can live in one process, as in tests and bench/serve.py)."""

from __future__ import annotations

import prometheus_client

from lateint.serve.searcher import STAGE_TIMINGS

# Seconds: 0.5 ms .. 30 s, dense where CPU requests land.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """requests by endpoint and status, latency per stage, batch sizes, queue depth."""

    def __init__(self, queue_depth, in_flight):
        """queue_depth, in_flight: callables read at scrape time."""
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "lateint_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.stage_latency = prometheus_client.Histogram(
            "lateint_stage_latency_seconds",
            "Latency of each search stage per request (queue: waiting for a batch; request: "
            "the whole HTTP handler).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.search_latency = prometheus_client.Histogram(
            "lateint_search_latency_seconds",
            "POST /search from its arrival at the app to its "
            "answer, by status (503s shed at the front door included).",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = prometheus_client.Histogram(
            "lateint_batch_size",
            "Queries per micro-batch.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        depth = prometheus_client.Gauge(
            "lateint_queue_depth", "Search requests waiting for a batch.", registry=self.registry
        )
        depth.set_function(queue_depth)
        running = prometheus_client.Gauge(
            "lateint_batch_in_flight",
            "Search requests in the batch being processed.",
            registry=self.registry,
        )
        running.set_function(in_flight)

    def observe_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def observe_search_answer(self, status: int, seconds: float) -> None:
        self.search_latency.labels(status=str(status)).observe(seconds)

    def observe_search(
        self, timings_ms: dict, queue_seconds: float, request_seconds: float
    ) -> None:
        for stage in STAGE_TIMINGS:
            self.stage_latency.labels(stage=stage).observe(timings_ms[stage] / 1e3)
        self.stage_latency.labels(stage="queue").observe(queue_seconds)
        self.stage_latency.labels(stage="request").observe(request_seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format."""
        return prometheus_client.generate_latest(
            self.registry
        ), prometheus_client.CONTENT_TYPE_LATEST
