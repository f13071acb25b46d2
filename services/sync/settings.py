from __future__ import annotations

from pydantic import Field

from shared.settings import SharedSettings


class SyncSettings(SharedSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    public_url: str = Field(default="http://127.0.0.1:8001", description="base URL of this service")
    taxstore_url: str = Field(default="http://127.0.0.1:8100", description="base URL of the tax store")
    connect_timeout: float = Field(default=2.0, gt=0, description="seconds to connect to the tax store")
    submit_timeout: float = Field(default=10.0, gt=0, description="seconds to wait for a submission's answer")
    read_timeout: float = Field(default=5.0, gt=0, description="seconds to wait for a read-back answer")
    submit_batch_size: int = Field(default=200, ge=1, le=500, description="invoices per submission request")
    max_in_flight: int = Field(default=4, ge=1, le=64, description="concurrent requests to the tax store")
    max_poll_records: int = Field(default=1000, ge=1, le=10_000)
    retry_base: float = Field(default=1.0, gt=0, description="first retry delay in seconds (then doubling)")
    retry_cap: float = Field(default=120.0, gt=0, description="longest delay between two attempts, seconds")
    retry_max_attempts: int = Field(default=30, ge=1, description="attempts before sync gives up on an invoice")
    breaker_threshold: int = Field(default=5, ge=1,
                                   description="consecutive failed requests that open the circuit to the store")
    breaker_base: float = Field(default=1.0, gt=0, description="first open interval of the circuit, seconds")
    breaker_cap: float = Field(default=15.0, gt=0, description="longest open interval of the circuit, seconds")
    breaker_health_interval: float = Field(
        default=1.0, gt=0, description="seconds between cheap reads of the store while the circuit is open; once "
                                       "the store was seen down and answers again, the probe goes at once")
    scheduler_interval: float = Field(default=0.5, gt=0, description="how often due retries are looked for")
    form_watch_interval: float = Field(default=30.0, gt=0,
                                       description="how often a pending red-letter form is read at the store, "
                                                   "seconds (a decision made elsewhere, or the window's end)")
    form_missing_invoice_retry: float = Field(
        default=600.0, ge=0, description="a red-letter form asked for on an invoice the store does not show is asked "
                                         "again (with the retry backoff) for this long, seconds: the authority "
                                         "acknowledged the invoice, so it is lag or a loss the reconciler resyncs; "
                                         "then the form fails")
    relay_batch_size: int = Field(default=2000, ge=1, le=10_000)
    relay_poll_interval: float = Field(default=1.0, gt=0)
    auto_migrate: bool = Field(default=True, description="run Alembic migrations at start-up")
