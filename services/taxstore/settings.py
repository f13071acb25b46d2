"""The tax store's configuration. Faults are settings too, so a whole fault scenario can be set up
from the environment before the first request arrives (they stay changeable at run time via /admin/faults)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from shared.settings import CoreSettings, Seconds


class TaxstoreSettings(CoreSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=1, le=65535)
    public_url: str = Field(default="http://127.0.0.1:8100", description="base URL shown in links and docs")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    batch_max: int = Field(default=500, ge=1, le=10_000, description="most submissions in one batch; more get 413")
    require_registration: bool = Field(
        default=False, description="reject sellers not registered via PUT /admin/sellers (SELLER_NOT_REGISTERED)")
    auto_migrate: bool = Field(default=True, description="run Alembic migrations at start-up")

    fault_latency_ms: int = Field(default=0, ge=0, le=600_000, description="fixed delay added to every /v1 request")
    fault_latency_jitter_ms: int = Field(default=0, ge=0, le=600_000,
                                         description="plus a uniform random delay in [0, jitter]")
    fault_error_rate: float = Field(default=0.0, ge=0, le=1, description="share of /v1 requests answered 500")
    fault_timeout_rate: float = Field(
        default=0.0, ge=0, le=1,
        description="share of /v1 requests that hang for fault_timeout_hang_ms, then 504; writes may or may not apply")
    fault_drop_rate: float = Field(default=0.0, ge=0, le=1,
                                   description="share of new submissions answered as stored but never stored")
    fault_visibility_delay_ms: int = Field(default=0, ge=0, le=86_400_000,
                                           description="stored invoices stay invisible to reads this long")
    fault_corrupt_rate: float = Field(default=0.0, ge=0, le=1,
                                      description="share of new submissions stored with a changed total")
    fault_outage: bool = Field(default=False, description="answer every /v1 request 503 until lifted")
    fault_seed: int | None = Field(default=None, description="seed of the fault generator; unset = not reproducible")
    fault_timeout_hang_ms: int = Field(default=30_000, ge=0, le=600_000,
                                       description="how long a timed-out request hangs before its 504")

    # The authority's policy (policy.py), also changeable at run time via PUT /admin/policy.
    red_letter_confirm_window: Seconds = Field(
        default=72 * 3600, gt=0, le=30 * 86400,
        description="a red-letter form awaiting the counterparty's confirmation is void after this long (72h)")
    red_letter_used_rate: float = Field(
        default=0.5, ge=0, le=1,
        description="share of blue invoices the buyer 'has used' (a seller's form then needs its confirmation)")
    review_threshold: Decimal | None = Field(
        default=None, ge=0, max_digits=14, decimal_places=2,
        description="cross-region invoices with a total above this are held for review; unset = no review")
    review_delay: Seconds = Field(default=86_400, ge=0, le=30 * 86400,
                                  description="the bureau decides a held invoice on its own after this long")
    review_denial_rate: float = Field(default=0.1, ge=0, le=1,
                                      description="share of held invoices the bureau denies on its own")
    decision_seed: int = Field(default=0, ge=0, le=2**31 - 1,
                               description="seed of the 'has used' and denial coins (per invoice)")
