"""The sync service's use cases on its own ledger of submissions. The Kafka loop and the retry scheduler
(worker.py) are the doors; everything that decides an invoice's fate is here.

Callers own the transaction; nothing here commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from sqlalchemy import CursorResult, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.sync import models as m
from shared.db import columns_except
from shared.envelope import encode, new_envelope
from shared.events import (
    SYNC_SOURCE,
    InvoiceIssued,
    InvoiceRejected,
    InvoiceSubmissionFailed,
    InvoiceSubmitted,
    SyncResult,
)
from shared.outbox import notify_outbox

__all__ = [
    "Outcome", "Pending", "apply_resync", "apply_voided", "claim_due", "counts", "get_submission", "intake",
    "next_due_in", "record_outcomes", "retry_backlog",
]


@dataclass(frozen=True)
class Pending:
    """A submission about to be attempted."""

    invoice_id: uuid.UUID
    seller_tax_id: str
    number: str
    content: dict[str, Any]
    content_hash: str
    attempts: int
    ambiguous: bool
    red_letter_of: str | None = None

    @classmethod
    def of(cls, row: Any, *, ambiguous: bool | None = None, content: dict[str, Any] | None = None) -> Pending:
        return cls(row.invoice_id, row.seller_tax_id, row.number, row.content if content is None else content,
                   row.content_hash, row.attempts, row.ambiguous if ambiguous is None else ambiguous, row.red_letter_of)

    def submission(self) -> dict[str, Any]:
        """What the store is sent for it (a red invoice names its blue original)."""
        return {"invoice": self.content, **({"red_letter_of": self.red_letter_of} if self.red_letter_of else {})}


@dataclass
class Outcome:
    """What one attempt learned about one invoice."""

    invoice_id: uuid.UUID
    kind: str  # submitted | failed | rejected | deferred
    attempt: int
    how: str = ""  # submitted: created | duplicate | repaired | read_back
    receipt_no: str | None = None
    http_status: int | None = None
    latency_ms: int = 0
    error: str | None = None
    ambiguous: bool = False
    reason_code: str | None = None
    reasons: list[dict[str, Any]] = field(default_factory=list)
    next_attempt_at: datetime | None = None
    gave_up: bool = False


async def intake(*, session: AsyncSession, issued: list[InvoiceIssued], lease_seconds: float) -> list[Pending]:
    """Record newly issued invoices as due-but-leased; returns the rows this caller must attempt now.

    The row is written before the first request: if the process dies mid-request, the lease runs out and
    the scheduler picks the row up as ambiguous (read back before resubmitting). A redelivered event finds
    its row and returns nothing.
    """
    if not issued:
        return []
    now = datetime.now(UTC)
    values = [
        {"invoice_id": e.invoice_id, "tenant_id": e.tenant_id, "seller_tax_id": e.seller_tax_id, "number": e.number,
         "content": e.invoice, "content_hash": e.content_hash, "status": "retrying", "attempts": 0,
         "ambiguous": True, "next_attempt_at": now + timedelta(seconds=lease_seconds), "issued_seq": 1,
         "accepted_at": e.accepted_at, "created_at": now, "updated_at": now, "red_letter_of": e.red_letter_of}
        for e in issued
    ]
    rows = (await session.execute(
        pg_insert(m.submissions).on_conflict_do_nothing(index_elements=["invoice_id"]).returning(*_INTAKE_BACK),
        values,
    )).all()
    docs = {e.invoice_id: e.invoice for e in issued}  # the document is not read back: the event holds it
    # Written ambiguous (for a crash); for the attempt about to be made we know nothing was sent yet.
    return [Pending.of(r, ambiguous=False, content=docs[r.invoice_id]) for r in rows]


_INTAKE_BACK = columns_except(m.submissions, "content")


async def apply_voided(*, session: AsyncSession, invoice_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """The seller voided these: never submit them again. Returns the ids that were still pending."""
    if not invoice_ids:
        return set()
    rows = (await session.execute(
        update(m.submissions).where(m.submissions.c.invoice_id.in_(invoice_ids))
        .values(status="voided", next_attempt_at=None, updated_at=func.now())
        .returning(m.submissions.c.invoice_id)
    )).all()
    return {r.invoice_id for r in rows}


async def apply_resync(*, session: AsyncSession, invoice_ids: list[uuid.UUID]) -> int:
    """补录: make the invoices due now, reading back first so a resync never creates a duplicate.
    Returns how many were known and not final."""
    if not invoice_ids:
        return 0
    result = cast("CursorResult[Any]", await session.execute(
        update(m.submissions)
        .where(m.submissions.c.invoice_id.in_(invoice_ids),
               m.submissions.c.status.in_(("submitted", "retrying", "gave_up")))
        .values(status="retrying", ambiguous=True, next_attempt_at=func.now(), updated_at=func.now())
    ))
    return int(result.rowcount or 0)


async def claim_due(*, session: AsyncSession, limit: int, lease_seconds: float) -> list[Pending]:
    """Take up to `limit` due rows, pushing their due time past a lease so no other worker takes them."""
    s = m.submissions
    due = (
        select(s.c.invoice_id).where(s.c.status == "retrying", s.c.next_attempt_at <= func.now())
        .order_by(s.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
    ).scalar_subquery()
    rows = (await session.execute(
        update(s).where(s.c.invoice_id.in_(due))
        .values(next_attempt_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(*s.c)
    )).all()
    return [Pending.of(r) for r in rows]


async def next_due_in(*, session: AsyncSession) -> float | None:
    """Seconds until the earliest retry is due (None when nothing waits)."""
    s = m.submissions
    at = (await session.execute(
        select(func.min(s.c.next_attempt_at)).where(s.c.status == "retrying")
    )).scalar_one_or_none()
    if at is None:
        return None
    return max(0.0, (at - datetime.now(UTC)).total_seconds())


_OUTCOME_STATUS = {"submitted": "submitted", "rejected": "rejected", "failed": "retrying", "deferred": "retrying"}

# The table name comes from our own metadata; every value is a bound parameter.
_APPLY = text(f"""
UPDATE {m.submissions.fullname} AS s SET
    status = v.status,
    attempts = v.attempts,
    ambiguous = v.ambiguous,
    next_attempt_at = v.next_at,
    last_error = v.error,
    receipt_no = coalesce(v.receipt_no, s.receipt_no),
    reason_code = v.reason_code,
    result_seq = s.result_seq + 1,
    updated_at = now(),
    submitted_at = CASE WHEN v.status = 'submitted' THEN now() ELSE s.submitted_at END
FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:attempts AS int[]), CAST(:ambiguous AS bool[]),
            CAST(:next_at AS timestamptz[]), CAST(:errors AS text[]), CAST(:receipts AS text[]),
            CAST(:reason_codes AS text[]))
    AS v(id, status, attempts, ambiguous, next_at, error, receipt_no, reason_code)
WHERE s.invoice_id = v.id AND s.status IN ('retrying', 'gave_up')
RETURNING s.invoice_id, s.tenant_id, s.seller_tax_id, s.number, s.result_seq, s.status
""")  # noqa: S608


async def record_outcomes(*, session: AsyncSession, outcomes: list[Outcome], topic: str,
                          max_attempts: int) -> int:
    """Make the outcomes durable with one result event each (via the outbox), in the caller's transaction.

    Rows the seller voided meanwhile, or that another attempt already settled, keep their state; the
    attempt is still logged. Returns how many result events were queued.
    """
    if not outcomes:
        return 0
    for o in outcomes:
        if o.kind == "failed" and o.attempt >= max_attempts:
            o.gave_up, o.next_attempt_at = True, None
    params = {
        "ids": [o.invoice_id for o in outcomes],
        "statuses": ["gave_up" if o.gave_up else _OUTCOME_STATUS[o.kind] for o in outcomes],
        "attempts": [o.attempt for o in outcomes],
        "ambiguous": [o.ambiguous for o in outcomes],
        "next_at": [o.next_attempt_at for o in outcomes],
        "errors": [o.error for o in outcomes],
        "receipts": [o.receipt_no for o in outcomes],
        "reason_codes": [o.reason_code for o in outcomes],
    }
    applied = {r.invoice_id: r for r in (await session.execute(_APPLY, params)).all()}
    now = datetime.now(UTC)
    log_rows = [
        {"invoice_id": o.invoice_id, "attempt": o.attempt, "at": now,
         "outcome": o.how if o.kind == "submitted" else o.kind, "http_status": o.http_status,
         "latency_ms": o.latency_ms, "detail": o.error or o.receipt_no}
        for o in outcomes if o.kind != "deferred"
    ]
    if log_rows:
        await session.execute(m.attempts.insert(), log_rows)
    outbox_rows = []
    for o in outcomes:
        row = applied.get(o.invoice_id)
        if row is None:
            continue
        event = _result_event(o, row, now)
        envelope = new_envelope(source=SYNC_SOURCE, event=event, subject=str(o.invoice_id),
                                tenant=str(row.tenant_id), sequence=row.result_seq)
        outbox_rows.append({"topic": topic, "key": str(o.invoice_id), "event_id": envelope.id,
                            "event_type": envelope.type, "payload": encode(envelope)})
    if outbox_rows:
        await session.execute(m.outbox.insert(), outbox_rows)
        await notify_outbox(session, m.outbox)
    return len(outbox_rows)


def _result_event(o: Outcome, row: Any, now: datetime) -> SyncResult:
    base: dict[str, Any] = {"invoice_id": o.invoice_id, "seller_tax_id": row.seller_tax_id, "number": row.number,
                            "attempt": o.attempt, "latency_ms": o.latency_ms, "at": now}
    if o.kind == "submitted":
        return InvoiceSubmitted(**base, receipt_no=o.receipt_no, how=o.how)
    if o.kind == "rejected":
        return InvoiceRejected(**base, reason_code=o.reason_code, reason=o.error, reasons=o.reasons)
    return InvoiceSubmissionFailed(**base, error=o.error, ambiguous=o.ambiguous, http_status=o.http_status,
                                   attempted=o.kind != "deferred", gave_up=o.gave_up,
                                   next_attempt_at=o.next_attempt_at)


_RELEASE = text(f"""
UPDATE {m.submissions.fullname} AS s SET next_attempt_at = now(), updated_at = now()
FROM unnest(CAST(:ids AS uuid[]), CAST(:next_at AS timestamptz[])) AS v(id, next_at)
WHERE s.invoice_id = v.id AND s.status = 'retrying' AND s.next_attempt_at = v.next_at AND v.next_at > now()
""")  # noqa: S608


async def release_held(*, session: AsyncSession, held: dict[uuid.UUID, datetime]) -> int:
    """Make due now the rows put off by the store (`held`: id -> the next try written then) that still wait
    for exactly that try: a row claimed, settled or put off again since has another time (or status) and is
    left alone, so nothing is attempted twice at once. How many were released."""
    if not held:
        return 0
    result = await session.execute(_RELEASE, {"ids": list(held), "next_at": list(held.values())})
    return int(getattr(result, "rowcount", 0) or 0)


async def retry_backlog(*, session: AsyncSession) -> int:
    s = m.submissions
    return int((await session.execute(
        select(func.count()).select_from(s).where(s.c.status == "retrying"))).scalar_one())


async def counts(*, session: AsyncSession) -> dict[str, int]:
    s = m.submissions
    rows = (await session.execute(select(s.c.status, func.count()).group_by(s.c.status))).all()
    return {r[0]: int(r[1]) for r in rows}


async def get_submission(*, session: AsyncSession, invoice_id: uuid.UUID) -> dict[str, Any] | None:
    s, a = m.submissions, m.attempts
    row = (await session.execute(select(s).where(s.c.invoice_id == invoice_id))).first()
    if row is None:
        return None
    tries = (await session.execute(select(a).where(a.c.invoice_id == invoice_id).order_by(a.c.id))).all()
    out = {k: v for k, v in row._mapping.items() if k not in ("content",)}
    out["attempt_log"] = [
        {"attempt": t.attempt, "at": t.at, "outcome": t.outcome, "http_status": t.http_status,
         "latency_ms": t.latency_ms, "detail": t.detail} for t in tries
    ]
    return orjson.loads(orjson.dumps(out, default=str))
