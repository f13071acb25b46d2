from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from shared.settings import Seconds, SharedSettings


class IssuerSettings(SharedSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str = Field(default="http://127.0.0.1:8000", description="base URL shown in links and docs")
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    batch_max: int = Field(default=1000, ge=1, le=10_000)
    issue_window_days: int = Field(default=365, ge=1, description="oldest issue_date accepted, in days")
    timezone: str = Field(default="Asia/Shanghai", description="whose calendar decides 'today'")
    idempotency_wait_seconds: float = Field(default=5.0, gt=0, le=60,
                                            description="how long a repeat waits for the first request to finish")
    idempotency_ttl_hours: int = Field(default=24, ge=1)
    api_workers: int = Field(
        default=1, ge=0, le=32,
        description="processes answering the API on one port (a shared listening socket); above 1 the outbox relay, "
                    "the status feed and the sweeps run in one more process of their own, on background_port; "
                    "0: half the machine's cores, at least 1 (what make up and compose use)")
    background_port: int = Field(default=0, ge=0, le=65535,
                                 description="with api_workers above 1: the background process's port for /healthz, "
                                             "/readyz and /metrics (0: port + 9)")
    process_role: Literal["all", "api", "background"] = Field(
        default="all", description="set by the issuer for its own children: 'all' runs everything in this process; "
                                   "'api' only answers requests; 'background' only relays and sweeps")
    listen_fd: int | None = Field(default=None, ge=0,
                                  description="set by the issuer for its API children: the listening socket they share")
    relay_batch_size: int = Field(default=1000, ge=1, le=10_000)
    relay_poll_interval: float = Field(default=1.0, gt=0)
    auto_migrate: bool = Field(default=True, description="run Alembic migrations at start-up")
    reconciler_url: str = Field(default="http://127.0.0.1:8002",
                                description="the reconciler's base URL; cases and summaries are proxied there")
    reconciler_timeout: float = Field(default=5.0, gt=0, le=60,
                                      description="seconds allowed for each call to the reconciler")
    notifier_url: str = Field(default="http://127.0.0.1:8003",
                              description="the notifier's base URL; subscriptions, history and mutes are proxied there")
    notifier_timeout: float = Field(default=10.0, gt=0, le=60,
                                    description="seconds allowed for each call to the notifier")
    taxstore_url: str = Field(default="http://127.0.0.1:8100",
                              description="the tax store: its health and faults on the operators' dashboard")
    form_expiry_warning: Seconds = Field(default=12 * 3600.0, gt=0, le=30 * 86400,
                                       description="seconds before a pending red-letter form is void when the "
                                                   "'expires soon' alert goes out (once per form)")
    taxstore_timeout: float = Field(default=5.0, gt=0, le=60,
                                    description="seconds to wait for the tax store's verification (发票查验)")
    sync_url: str = Field(default="http://127.0.0.1:8001", description="the sync service: its health on the dashboard")
    ops_sample_interval: Seconds = Field(default=5.0, ge=0.2, le=300,
                                         description="how often the dashboard's sampler takes a reading")
    ops_history: Seconds = Field(default=900.0, ge=10, le=86_400,
                                 description="how far back the dashboard's charts reach (kept in memory)")
    self_check_interval: Seconds = Field(
        default=30.0, ge=0.5, le=86_400,
        description="how often the issuer's statuses are compared with the reconciler's ledger (and repaired)")
    self_check_grace: Seconds = Field(
        default=60.0, ge=0, le=86_400,
        description="an invoice changed more recently than this is left out of the comparison (facts in flight)")
    self_check_batch: int = Field(default=500, ge=1, le=1000, description="invoices per self-check look-up")
    schedule_timeout: Seconds = Field(
        default=1.0, gt=0, le=10,
        description="how long a read waits for the reconciler's live schedule before showing the stored one")
    api_key_cache_seconds: Seconds = Field(
        default=1.0, ge=0, le=60, description="how long this process trusts an API key it has checked (0: ask the "
                                              "database every time); a revoked key works here for at most this long")
    # Per-tenant limits on /v1 (services/issuer/limits.py). Per process: N replicas allow up to N times each.
    rate_limits: bool = Field(default=True, description="per-tenant rate limits and in-flight cap on /v1 (false: off)")
    read_rate: float = Field(default=10.0, gt=0, le=1_000_000, description="GET requests per second per tenant")
    read_burst: int = Field(default=50, ge=1, le=10_000_000, description="GET requests a tenant may send at once")
    write_rate: float = Field(default=25.0, gt=0, le=1_000_000,
                              description="POST/PUT/PATCH/DELETE of one resource per second per tenant")
    write_burst: int = Field(default=100, ge=1, le=10_000_000, description="writes a tenant may send at once")
    import_rate: float = Field(default=2000.0, gt=0, le=10_000_000,
                               description="invoices per second per tenant through /v1/invoices/batch and /import")
    import_burst: int = Field(default=20_000, ge=1, le=100_000_000,
                              description="invoices a tenant may send at once through batches and imports")
    tenant_concurrency: int = Field(default=4, ge=1, le=100_000,
                                    description="requests of one tenant in flight at once; more are refused with 429")

    @property
    def workers(self) -> int:
        """api_workers with 0 resolved: half the cores (the database, Kafka and the other services need the
        rest; measured on 2 cores, a second API process cost the issuer ~20 % more CPU at 200 POSTs/s)."""
        return api_workers(self.api_workers)


def api_workers(setting: int) -> int:
    """FAPIAO_API_WORKERS as the issuer runs it: 0 is half the cores, at least 1 (the stack and the bench say it
    the same way)."""
    return setting or max(1, (os.cpu_count() or 1) // 2)
