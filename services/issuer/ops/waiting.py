"""One definition of lag, end to end: every invoice not yet confirmed, by the stage it waits in and since when.

The stage follows from the issuer's status and who decided it (lifecycle.derive). An age is counted from the
moment the ERP's invoice was accepted (`accepted_at`): how long it has not been at the authority, whichever stage
it is in now. Time in the stage (`status_since`) is given beside it: an invoice that bounces between a resync
and awaiting visibility keeps its age, so "oldest" and the alert on it never reset while an invoice waits.

| stage | status | waits for |
|---|---|---|
| outbox | accepted | the outbox relay to put its event on Kafka |
| kafka | published | sync to take it off Kafka and make a first attempt |
| sync_retries | retrying, decided by sync | the next attempt (after a failure, or held back by an open circuit) |
| awaiting_visibility | submitted | the reconciler to see it visible and identical at the authority |
| resync | retrying, decided by the reconciler | a resubmission after the reconciler found a gap |
| stuck | stuck | the case to be worked (past the SLA; alerted) |
| rejected | rejected | the seller: the authority refused it with its reason |

An invoice held for cross-region review (`under_review`), or denied there (`review_denied`), is at the authority
and waits in no stage here: the reconciler tracks the review against FAPIAO_REVIEW_SLA and alerts when it is late.

Counted from the issuer's own ledger, so no backlog can hide in a place no figure looks at (a consumer that took
every event off Kafka, sync's retry queue during an outage): the dashboard's headline, `fapiao status`, the
metrics `fapiao_pipeline_waiting_invoices` / `fapiao_pipeline_oldest_waiting_seconds` and the alert rules read this.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.lifecycle import Status
from shared.settings import format_duration

__all__ = ["STAGES", "Stage", "StageFigure", "Waiting", "stage_of", "waiting"]

UNSETTLED = [Status.ACCEPTED, Status.PUBLISHED, Status.SUBMITTED, Status.RETRYING, Status.STUCK]
"""As ix_invoices_unsettled (migration 0004) lists them, so the planner can use it."""


@dataclass(frozen=True)
class Stage:
    name: str
    label: str


STAGES = (
    Stage("outbox", "issuer outbox, not yet on Kafka"),
    Stage("kafka", "on Kafka, not yet taken by sync"),
    Stage("sync_retries", "sync retries"),
    Stage("awaiting_visibility", "awaiting visibility at the authority"),
    Stage("resync", "resync after a gap"),
    Stage("stuck", "stuck, case open"),
    Stage("rejected", "rejected, the seller must act"),
)


def stage_of(status: str, reason_source: str | None) -> str | None:
    """The stage an invoice of this status waits in; None when it waits for nothing (confirmed, voided, …)."""
    match status:
        case Status.ACCEPTED:
            return "outbox"
        case Status.PUBLISHED:
            return "kafka"
        case Status.RETRYING:
            return "resync" if reason_source == "reconciler" else "sync_retries"
        case Status.SUBMITTED:
            return "awaiting_visibility"
        case Status.STUCK:
            return "stuck"
        case Status.REJECTED:
            return "rejected"
    return None


@dataclass(frozen=True)
class StageFigure:
    stage: str
    label: str
    count: int
    oldest_seconds: float | None  # the longest any of them has waited since it was accepted
    in_stage_seconds: float | None = None  # the longest any of them has been in this stage


@dataclass(frozen=True)
class Waiting:
    stages: list[StageFigure]  # every stage, in pipeline order, zeros included

    @property
    def total(self) -> int:
        return sum(s.count for s in self.stages)

    @property
    def oldest_seconds(self) -> float | None:
        ages = [s.oldest_seconds for s in self.stages if s.oldest_seconds is not None]
        return max(ages) if ages else None

    @property
    def most_in(self) -> StageFigure | None:
        busy = [s for s in self.stages if s.count]
        return max(busy, key=lambda s: (s.count, s.oldest_seconds or 0)) if busy else None

    def headline(self) -> str:
        """"N invoices not yet at the authority, oldest 4 min 12 s, most in: sync retries" (or all confirmed)."""
        if not self.total:
            return "0 invoices waiting: every invoice is confirmed at the authority or settled"
        most = self.most_in
        assert most is not None
        noun = "invoice" if self.total == 1 else "invoices"
        return (f"{self.total} {noun} not yet at the authority, oldest {format_duration(self.oldest_seconds or 0)}, "
                f"most in: {most.label}")

    def as_dict(self) -> dict[str, object]:
        most = self.most_in
        return {"total": self.total, "oldest_seconds": self.oldest_seconds,
                "most_in": most.stage if most else None, "headline": self.headline(),
                "stages": [{"stage": s.stage, "label": s.label, "count": s.count, "oldest_seconds": s.oldest_seconds,
                            "in_stage_seconds": s.in_stage_seconds} for s in self.stages]}


async def waiting(*, session: AsyncSession, tenant_id: uuid.UUID | None = None,
                  now: datetime | None = None) -> Waiting:
    """Count and oldest age per stage (over the unsettled invoices only: ix_invoices_unsettled)."""
    inv = m.invoices
    mine = [inv.c.tenant_id == tenant_id] if tenant_id is not None else []
    rows: list[Any] = []
    # Two reads, each matching a partial index: the unsettled ones (ix_invoices_unsettled), the rejected ones
    # (ix_invoices_rejected); a rejected invoice stays until the seller voids it, and rejects pile up.
    for statuses in (UNSETTLED, [Status.REJECTED]):
        rows += (await session.execute(
            select(inv.c.status, inv.c.reason_source, func.count(), func.min(inv.c.accepted_at),
                   func.min(inv.c.status_since))
            .where(inv.c.status.in_(statuses), *mine).group_by(inv.c.status, inv.c.reason_source)
        )).all()
    now = now or datetime.now(UTC)
    counts: dict[str, int] = {}
    accepted: dict[str, datetime] = {}
    entered: dict[str, datetime] = {}
    for status, source, n, first_accepted, first_entered in rows:
        stage = stage_of(status, source)
        if stage is None:
            continue
        counts[stage] = counts.get(stage, 0) + int(n)
        for earliest, at in ((accepted, first_accepted), (entered, first_entered)):
            if at is not None and (stage not in earliest or at < earliest[stage]):
                earliest[stage] = at

    def age(earliest: dict[str, datetime], stage: str) -> float | None:
        return round(max(0.0, (now - earliest[stage]).total_seconds()), 1) if stage in earliest else None

    return Waiting([StageFigure(s.name, s.label, counts.get(s.name, 0), age(accepted, s.name), age(entered, s.name))
                    for s in STAGES])
