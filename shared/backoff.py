"""The one retry delay in the system: exponential, capped, jittered, and never shorter than a Retry-After.

Every loop that waits before trying again (Kafka and database restarts, the sync service's submissions, the
notifier's deliveries, the reconciler's resyncs, the circuit breaker, the CLI) calls `backoff`.
"""

from __future__ import annotations

import random
from typing import Literal

__all__ = ["Jitter", "backoff"]

Jitter = Literal["full", "equal"]


def backoff(attempt: int, *, base: float, cap: float, jitter: Jitter = "full", retry_after: float | None = None,
            retry_after_cap: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry): the step min(cap, base * 2**attempt),
    with full jitter (uniform over 0..step, spreads a crowd best) or equal jitter (half the step plus up to half:
    never shorter than half, so a schedule someone was promised keeps its shape). A Retry-After the other side
    sent is waited for at least, up to `retry_after_cap` (default: `cap`)."""
    step = min(cap, base * 2 ** min(max(attempt, 0), 30))
    pick = (rng or random).uniform
    delay = pick(0, step) if jitter == "full" else step / 2 + pick(0, step / 2)
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), cap if retry_after_cap is None else retry_after_cap))
    return delay
