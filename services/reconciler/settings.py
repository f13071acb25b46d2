from __future__ import annotations

from pydantic import Field

from shared.settings import Seconds, SharedSettings


class ReconcilerSettings(SharedSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8002, ge=1, le=65535)
    public_url: str = Field(default="http://127.0.0.1:8002", description="base URL of this service")
    timezone: str = Field(default="Asia/Shanghai", description="whose calendar dates the case numbers")
    taxstore_url: str = Field(default="http://127.0.0.1:8100", description="base URL of the tax store")
    connect_timeout: float = Field(default=2.0, gt=0, description="seconds to connect to the tax store")
    read_timeout: float = Field(default=5.0, gt=0, description="seconds to wait for one answer of the tax store")
    visibility_sla: Seconds = Field(default=30.0, gt=0,
                                    description="time an acknowledged invoice may take to become visible")
    first_check_after: Seconds = Field(default=1.0, gt=0,
                                       description="first visibility check this long after an acknowledgement")
    stuck_after: Seconds = Field(default=600.0, gt=0,
                                 description="an invoice unconfirmed this long after issue (or reopening) is stuck")
    stuck_after_resyncs: int = Field(default=5, ge=1, description="... or after this many resyncs")
    resync_base: Seconds = Field(default=10.0, gt=0, description="least time between two resyncs (then doubling)")
    resync_cap: Seconds = Field(default=300.0, gt=0, description="most time between two resyncs")
    stuck_recheck: Seconds = Field(default=60.0, gt=0, description="how often a stuck invoice is checked again")
    review_sla: Seconds = Field(default=2 * 86_400.0, gt=0,
                                description="how long a cross-region review (跨区域审核) may take before it is "
                                            "alerted as overdue (once); a held invoice is never resubmitted")
    red_invoice_grace: Seconds = Field(
        default=300.0, gt=0, description="a confirmed red-letter form whose red invoice is not in the ledger this "
                                         "long after its confirmation is a gap (a case and an alert)")
    check_batch_size: int = Field(default=500, ge=1, le=10_000, description="invoices checked per round")
    lookup_batch_size: int = Field(default=200, ge=1, le=200, description="invoice numbers per store query")
    check_interval: Seconds = Field(default=1.0, gt=0, description="longest idle wait between two check rounds")
    check_lease: Seconds = Field(default=60.0, gt=0, description="a claimed check not finished by then is redone")
    max_in_flight: int = Field(default=4, ge=1, le=64, description="concurrent requests to the tax store")
    sweep_interval: Seconds = Field(default=3600.0, gt=0,
                                    description="how often each (seller, issue date) window is swept")
    sweep_after_confirm: Seconds = Field(
        default=60.0, gt=0, description="a window with a recent confirmation is swept again this soon, and this "
                                        "often while it stays hot: a store that loses a confirmed invoice is noticed "
                                        "within about this long instead of within FAPIAO_SWEEP_INTERVAL")
    sweep_hot_for: Seconds = Field(default=3600.0, ge=0,
                                   description="how long after its last confirmation a window stays hot")
    sweep_windows_per_round: int = Field(default=10, ge=1, le=1000)
    orphan_grace: Seconds = Field(default=300.0, ge=0,
                                  description="an invoice unknown here is alerted if still unknown after this")
    relay_batch_size: int = Field(default=1000, ge=1, le=10_000)
    relay_poll_interval: float = Field(default=1.0, gt=0)
    auto_migrate: bool = Field(default=True, description="run Alembic migrations at start-up")
