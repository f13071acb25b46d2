"""Prometheus metrics shared by every service. Labels are bounded: route templates, never ids."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "CONSUMER_LAG", "CONTENT_TYPE_LATEST", "DB_UNAVAILABLE", "DEAD_LETTERS", "GC_FROZEN", "GC_PAUSE", "HTTP_LATENCY",
    "HTTP_REQUESTS",
    "OUTBOX_BACKLOG", "OUTBOX_LEADER", "OUTBOX_OLDEST_AGE", "OUTBOX_PUBLISHED", "RATE_LIMITED", "render",
]

HTTP_REQUESTS = Counter(
    "fapiao_http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "fapiao_http_request_duration_seconds", "HTTP request latency", ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_BACKLOG = Gauge("fapiao_outbox_backlog", "Outbox rows not yet on Kafka", ["service"],
                       multiprocess_mode="livemax")
OUTBOX_OLDEST_AGE = Gauge(
    "fapiao_outbox_oldest_unpublished_age_seconds", "Age of the oldest outbox row not yet on Kafka", ["service"],
    multiprocess_mode="livemax",
)
OUTBOX_LEADER = Gauge(
    "fapiao_outbox_relay_leader",
    "1 while this replica holds its schema's relay lock and relays the outbox, 0 while it stands by", ["service"],
    multiprocess_mode="livemax",
)
OUTBOX_PUBLISHED = Counter("fapiao_outbox_published_total", "Outbox rows published to Kafka", ["service"])
DB_UNAVAILABLE = Counter(
    "fapiao_db_unavailable_total", "Requests answered 503 because the database could not take them, by reason",
    ["service", "reason"],
)
RATE_LIMITED = Counter(
    "fapiao_rate_limited_total",
    "Requests refused with 429, by budget (read | write | import | ping) and reason (rate | concurrency); "
    "never by tenant or subscription",
    ["service", "budget", "reason"],
)
GC_PAUSE = Histogram(
    "fapiao_gc_pause_seconds", "Time the garbage collector held the process (every request waits meanwhile)",
    ["service", "generation"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
)
GC_FROZEN = Gauge(
    "fapiao_gc_frozen_objects", "Objects moved out of the collector's reach once the service had started", ["service"],
    multiprocess_mode="livemax",
)
DEAD_LETTERS = Counter("fapiao_dead_letters_total", "Messages sent to a dead-letter topic", ["service", "topic"])
CONSUMER_LAG = Gauge(
    "fapiao_consumer_lag_records", "Records on a partition not yet consumed by the group",
    ["group", "topic", "partition"], multiprocess_mode="livemax",
)


def render() -> bytes:
    """This process's metrics; in a service of several processes that share PROMETHEUS_MULTIPROC_DIR (the issuer
    with FAPIAO_API_WORKERS above 1), those of all of them, whichever one is asked: counters and histograms
    summed, gauges as each declares (multiprocess_mode; "live…" leaves out processes that have died)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
