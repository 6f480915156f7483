"""Prometheus metrics of one app (its own registry: no process-wide state, so several apps, or
Ray Serve replicas, never share or collide)."""

from __future__ import annotations

from typing import Any

from ..errors import require

# Routes with their own label; anything else (a fuzzer's random paths) is "other", so the number
# of series stays bounded.
ENDPOINTS = ("/v1/embeddings", "/embed", "/v1/classify", "/v1/search", "/v1/models", "/health", "/info",
             "/metrics")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        prometheus = require("prometheus_client", "serve", "the server's /metrics")
        self.registry = prometheus.CollectorRegistry()
        self._generate = prometheus.generate_latest
        self.content_type = prometheus.CONTENT_TYPE_LATEST
        kw: dict[str, Any] = {"registry": self.registry}
        self.requests = prometheus.Counter("mrl_requests", "HTTP requests by endpoint and status code",
                                           ["endpoint", "status"], **kw)
        self.latency = prometheus.Histogram("mrl_request_seconds", "Request latency by endpoint (seconds)",
                                            ["endpoint"], buckets=LATENCY_BUCKETS, **kw)
        self.batch_size = prometheus.Histogram("mrl_batch_size", "Items per runtime call (dynamic batching)",
                                               buckets=BATCH_BUCKETS, **kw)
        self.batch_seconds = prometheus.Histogram("mrl_batch_seconds", "Seconds per runtime call",
                                                  buckets=LATENCY_BUCKETS, **kw)
        self.queue = prometheus.Gauge("mrl_queue_items", "Items waiting for a runtime call", **kw)
        self.items = prometheus.Counter("mrl_items", "Items run through the model, by endpoint", ["endpoint"], **kw)
        self.loaded = prometheus.Gauge("mrl_model_loaded", "1 once the model is loaded and warm", **kw)

    @staticmethod
    def endpoint(path: str) -> str:
        return path if path in ENDPOINTS else "other"

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = self.endpoint(path)
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return self._generate(self.registry)
