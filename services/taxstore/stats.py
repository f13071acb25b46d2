"""What the simulator did to its clients, counted, so a test or an operator can check a client's
bookkeeping against the truth (e.g. "every dropped invoice was later found missing and resent").

In memory and per process, like the faults; mirrored to Prometheus for dashboards.

Every submitted item of a write that got past the outage and error faults ends in exactly one of
stored, duplicates, repaired, conflicts, rejected, dropped or timeouts_not_applied, so those add up
to `submissions`. `corrupted` is a subset of `stored`; `timeouts_applied` items are also counted in
the outcome they had. Form writes are not submissions: a timed-out one counts in `timeouts`, and when it
was applied anyway, also in what it did (`forms_created`, `red_issued`, ...).
"""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["COUNTERS", "Stats"]

COUNTERS = (
    "requests", "submissions", "stored", "duplicates", "repaired", "conflicts", "rejected", "dropped",
    "corrupted", "errors", "timeouts", "timeouts_applied", "timeouts_not_applied", "outage_refused", "lost",
    # Red-letter forms: made, answered again (an idempotent retry), decided; the red invoices they issued.
    "forms_created", "forms_answered_again", "forms_confirmed", "forms_rejected", "red_issued", "red_dropped",
    "red_corrupted",
    # Verification (查验) look-ups, in all and by result; reviews decided through the admin API.
    "verifications", "verified_normal", "verified_red_lettered", "verified_partly_red_lettered", "verified_voided",
    "verified_under_review", "verified_not_found", "reviews_approved", "reviews_denied",
)

_EVENTS = Counter("fapiao_taxstore_events_total", "What the simulated tax store did, by kind", ["kind"])


class Stats:
    def __init__(self) -> None:
        self._counts = dict.fromkeys(COUNTERS, 0)

    def add(self, name: str, n: int = 1) -> None:
        if name not in self._counts:
            raise KeyError(name)
        if n:
            self._counts[name] += n
            _EVENTS.labels(name).inc(n)

    def reset(self) -> None:
        """Zero the counters shown by /admin/stats (Prometheus counters never go back)."""
        self._counts = dict.fromkeys(COUNTERS, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)
