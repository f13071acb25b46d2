"""The notifier's own metrics (the shared ones live in shared.metrics). No tenant or invoice ids in labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["ALERTS", "ATTEMPTS", "ATTEMPT_DURATION", "DELIVERIES", "OLDEST_PENDING", "PENDING", "RETRY_QUEUE",
           "WAITING"]

ALERTS = Counter("fapiao_notifier_alerts_total", "Alert events taken in, by kind and outcome (new | duplicate)",
                 ["kind", "outcome"])
DELIVERIES = Counter("fapiao_notifier_deliveries_total",
                     "Deliveries finished, by channel and outcome (delivered | exhausted | cancelled)",
                     ["channel", "outcome"])
ATTEMPTS = Counter("fapiao_notifier_attempts_total", "Delivery attempts, by channel and outcome (delivered | failed "
                   "| exhausted)", ["channel", "outcome"])
ATTEMPT_DURATION = Histogram("fapiao_notifier_attempt_duration_seconds", "Duration of one delivery attempt",
                             ["channel"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PENDING = Gauge("fapiao_notifier_pending_deliveries", "Deliveries not yet delivered or exhausted", ["channel"])
RETRY_QUEUE = Gauge("fapiao_notifier_retry_queue_depth", "Pending deliveries that failed at least once", ["channel"])
OLDEST_PENDING = Gauge("fapiao_notifier_oldest_pending_delivery_age_seconds",
                       "Age of the oldest delivery not yet delivered or exhausted")
WAITING = Gauge("fapiao_notifier_digest_waiting_alerts", "Alerts waiting for their digest window to close")
