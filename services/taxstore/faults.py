"""Fault injection for the simulated tax store, kept pure (no I/O, no clock) so a fault scenario is
reproducible: the same seed and the same requests in the same order give the same faults.

Faults live in memory, per process: two taxstore processes have two generators and two sets of knobs,
and a restart forgets run-time changes (the settings' `fault_*` values apply again).

Order of decisions for every /v1 request (`FaultInjector.plan`):

1. `outage`: the request is refused (503) and *nothing* is drawn.
2. Otherwise exactly three values are drawn for the request, always, whatever the rates:
   latency jitter, then the error coin (`error_rate`), then the timeout coin (`timeout_rate`).
3. Then, for a write, exactly three values per submitted item, in item order, always:
   the drop coin (`drop_rate`), the corrupt coin (`corrupt_rate`), and the coin that decides whether
   the item is applied when the request times out (one half each).

Because the number of draws never depends on the rates, changing one rate never shifts the
decisions another rate makes. A coin with rate r comes up when its draw is below r, so rate 0
never fires and rate 1 always does.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["DRAWS_PER_ITEM", "DRAWS_PER_REQUEST", "FaultInjector", "Faults", "ItemFaults", "RequestPlan"]

DRAWS_PER_REQUEST = 3
DRAWS_PER_ITEM = 3


@dataclass(frozen=True)
class Faults:
    """The knobs. Field names are the ones GET/PUT /admin/faults speak."""

    latency_ms: int = 0
    latency_jitter_ms: int = 0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    visibility_delay_ms: int = 0
    corrupt_rate: float = 0.0
    outage: bool = False
    seed: int | None = None
    timeout_hang_ms: int = 30_000

    @classmethod
    def from_settings(cls, settings: Any) -> Faults:
        """From the `fault_*` fields of TaxstoreSettings."""
        return cls(**{name: getattr(settings, f"fault_{name}") for name in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ItemFaults:
    drop: bool  # answer as stored, store nothing
    corrupt: bool  # store a changed total
    applied_on_timeout: bool  # when the request times out: was this item written before the hang?


@dataclass(frozen=True)
class RequestPlan:
    """Everything fault-related one request will do, decided up front in one go."""

    outage: bool
    latency_s: float
    error: bool
    timeout: bool
    hang_s: float
    visibility_delay_ms: int
    items: tuple[ItemFaults, ...]


class FaultInjector:
    """The current knobs plus one generator; `plan()` is synchronous, so concurrent requests on one
    event loop take their draws in arrival order without interleaving."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._faults = faults or Faults()
        self._rng = random.Random(self._faults.seed)

    @property
    def faults(self) -> Faults:
        return self._faults

    def update(self, **changes: Any) -> Faults:
        """Change some knobs; naming `seed` (even to the same value, or None) restarts the generator."""
        unknown = set(changes) - set(Faults.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        self._faults = replace(self._faults, **changes)
        if "seed" in changes:
            self._rng = random.Random(self._faults.seed)
        return self._faults

    def plan(self, *, items: int = 0) -> RequestPlan:
        """Decide the faults of one request carrying `items` submissions (0 for a read)."""
        f = self._faults
        if f.outage:
            return RequestPlan(outage=True, latency_s=0.0, error=False, timeout=False, hang_s=0.0,
                               visibility_delay_ms=f.visibility_delay_ms, items=())
        rnd = self._rng.random
        jitter, error, timeout = rnd(), rnd(), rnd()
        per_item = []
        for _ in range(items):
            drop, corrupt, applied = rnd(), rnd(), rnd()
            per_item.append(ItemFaults(drop=drop < f.drop_rate, corrupt=corrupt < f.corrupt_rate,
                                       applied_on_timeout=applied < 0.5))
        return RequestPlan(
            outage=False,
            latency_s=(f.latency_ms + jitter * f.latency_jitter_ms) / 1000,
            error=error < f.error_rate,
            timeout=timeout < f.timeout_rate,
            hang_s=f.timeout_hang_ms / 1000,
            visibility_delay_ms=f.visibility_delay_ms,
            items=tuple(per_item),
        )
