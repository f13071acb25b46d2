"""The sync service's own metrics (the shared ones live in shared.metrics). No invoice ids in labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["BREAKER_STATE", "OUTCOMES", "RELEASED", "REQUEST_LATENCY", "RETRY_BACKLOG"]

REQUEST_LATENCY = Histogram(
    "fapiao_sync_request_duration_seconds", "Latency of requests to the tax store", ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OUTCOMES = Counter(
    "fapiao_sync_outcomes_total",
    "Per-invoice outcomes of submission attempts (created, duplicate, repaired, read_back, failed, rejected, deferred)",
    ["outcome"],
)
BREAKER_STATE = Gauge("fapiao_sync_breaker_state", "Circuit to the tax store: 0 closed, 1 half-open, 2 open")
RELEASED = Counter(
    "fapiao_sync_released_total",
    "Invoices the store's failures had put off, made due at once when the circuit closed again",
)
RETRY_BACKLOG = Gauge("fapiao_sync_retry_backlog", "Invoices waiting for another submission attempt")
