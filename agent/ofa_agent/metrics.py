"""Prometheus metrics (names fixed in docs/contracts.md), on a registry of the app's own."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series double the output and nothing here uses them.
disable_created_metrics()

PREFIX = "ofa_agent_"
OUTCOMES = ("ok", "client_error", "rejected", "timeout", "error")
# 10 ms .. 10 s: a tiny-model CPU call is ~15 ms, an OFA-large CPU batch several seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def outcome_for(status: int) -> str:
    """Map an HTTP status to the requests_total outcome label."""
    if status < 400:
        return "ok"
    if status in (429, 503):
        return "rejected"
    if status == 504:
        return "timeout"
    if status < 500:
        return "client_error"
    return "error"


class Metrics:
    """The agent's metrics; one instance per app, so tests can build many apps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests", "Predict requests by outcome", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds", "Predict request latency, receipt to answer",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_seconds = Histogram(
            PREFIX + "queue_seconds", "Time a pair waited in the batching queue",
            buckets=(0.001, 0.0025, 0.005) + LATENCY_BUCKETS, registry=r,
        )
        self.inference_seconds = Histogram(
            PREFIX + "inference_seconds", "Duration of one batched forward",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            PREFIX + "batch_size", "Pairs per batched forward", buckets=BATCH_BUCKETS, registry=r
        )
        self.inflight = Gauge(PREFIX + "inflight", "Predict requests in progress", registry=r)
        self.queue_depth = Gauge(
            PREFIX + "queue_depth", "Pairs waiting in the batching queue", registry=r
        )
        self.ready = Gauge(PREFIX + "ready", "1 when /v2/health/ready answers 200", registry=r)
        self.model_info = Gauge(
            PREFIX + "model_info", "The model this agent serves (value 1)",
            ["model_id", "revision", "digest", "device", "dtype", "release"], registry=r,
        )
        # Registered on the first CUDA reading only: a CPU node exports no GPU series.
        self.gpu_memory_used: Gauge | None = None
        self.gpu_memory_total: Gauge | None = None

    def observe_request(self, status: int, seconds: float) -> None:
        """Count one predict request and its latency."""
        self.requests.labels(outcome_for(status)).inc()
        self.request_duration.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one forward."""
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def set_gpu_memory(self, used_total: tuple[int, int] | None) -> None:
        """Update the CUDA memory gauges (nothing on CPU)."""
        if used_total is None:
            return
        if self.gpu_memory_used is None or self.gpu_memory_total is None:
            self.gpu_memory_used = Gauge(
                PREFIX + "gpu_memory_used_bytes", "CUDA memory in use", registry=self.registry
            )
            self.gpu_memory_total = Gauge(
                PREFIX + "gpu_memory_total_bytes", "CUDA memory of the device",
                registry=self.registry,
            )
        self.gpu_memory_used.set(used_total[0])
        self.gpu_memory_total.set(used_total[1])

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
