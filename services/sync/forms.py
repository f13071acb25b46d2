"""Red-letter forms at the store, as the sync service carries them: the issuer's requests (make a form, confirm or
reject one) become rows of `form_ops`, each written once and attempted until the store answers; a pending form
is then watched (read now and then) until it is decided or void. Every change the store reports is one
`RedLetterFormUpdated` event in the outbox, numbered per form.

Every write is idempotent at the store (a form on the issuer's form id as `request_id`; deciding a form the way
it was decided answers it again), so a write that timed out is simply made again: no read-back is needed.

Callers own the transaction; nothing here commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.sync import models as m
from shared.envelope import encode, new_envelope
from shared.events import SYNC_SOURCE, RedLetterDecisionRequested, RedLetterFormUpdated, RedLetterRequested
from shared.outbox import notify_outbox

__all__ = ["FINAL", "FormOp", "FormResult", "claim_due", "intake_decisions", "intake_requests", "record"]

FINAL = frozenset({"confirmed", "rejected", "voided"})


@dataclass(frozen=True)
class FormOp:
    """One write to make (or a form to read) at the store."""

    op_id: uuid.UUID
    form_id: uuid.UUID
    invoice_id: uuid.UUID
    tenant_id: uuid.UUID
    op: str  # create | confirm | reject
    party_tax_id: str
    body: dict[str, Any]
    form_no: str | None
    status: str  # retrying (write it) | watching (read it)
    store_status: str | None
    attempts: int
    created_at: datetime | None = None

    @classmethod
    def of(cls, row: Any) -> FormOp:
        return cls(row.op_id, row.form_id, row.invoice_id, row.tenant_id, row.op, row.party_tax_id, row.body,
                   row.form_no, row.status, row.store_status, row.attempts, row.created_at)

    def request(self) -> tuple[str, str, dict[str, Any] | None, dict[str, str] | None]:
        """(method, path, body, params) of this op's next call."""
        if self.status == "watching":
            return "GET", f"/v1/red-letter-forms/{self.form_no}", None, {"party_tax_id": self.party_tax_id}
        if self.op == "create":
            return "POST", "/v1/red-letter-forms", self.body, None
        return "POST", f"/v1/red-letter-forms/{self.form_no}/{self.op}", self.body, None


@dataclass(frozen=True)
class FormResult:
    """What one call learned: the form (answered), a refusal for good (status 4xx + problem), or a failure."""

    op: FormOp
    form: dict[str, Any] | None = None
    refused: dict[str, Any] | None = None
    http_status: int | None = None
    error: str | None = None  # a failure: try again at `retry_at`
    retry_at: datetime | None = None


async def intake_requests(*, session: AsyncSession, events: list[tuple[RedLetterRequested, uuid.UUID]]) -> int:
    """Forms asked for: one create op each (a redelivered event finds its row). `events`: (event, tenant)."""
    rows = [{
        "op_id": e.form_id, "form_id": e.form_id, "invoice_id": e.invoice_id, "tenant_id": e.tenant_id,
        "op": "create", "party_tax_id": e.requested_by, "status": "retrying", "next_attempt_at": datetime.now(UTC),
        "body": {"request_id": str(e.form_id), "invoice": {"seller_tax_id": e.seller_tax_id, "number": e.number},
                 "requested_by": e.requested_by, "reason_code": e.reason_code,
                 **({"lines": [x.model_dump(exclude_none=True) for x in e.lines]} if e.lines is not None else {}),
                 **({"note": e.note} if e.note else {})},
    } for e, _ in events]
    if not rows:
        return 0
    return len((await session.execute(
        pg_insert(m.form_ops).on_conflict_do_nothing(index_elements=["op_id"]).returning(m.form_ops.c.op_id), rows
    )).all())


async def intake_decisions(*, session: AsyncSession, events: list[tuple[RedLetterDecisionRequested, uuid.UUID]]
                           ) -> int:
    """Decisions asked for: one confirm or reject op each. `events`: (event, the seller tenant)."""
    rows = [{
        "op_id": e.decision_id, "form_id": e.form_id, "invoice_id": e.invoice_id, "tenant_id": tenant,
        "op": "confirm" if e.confirm else "reject", "party_tax_id": e.by, "form_no": e.form_no,
        "status": "retrying", "next_attempt_at": datetime.now(UTC),
        "body": {"by": e.by, **({"note": e.note} if e.note else {})},
    } for e, tenant in events]
    if not rows:
        return 0
    return len((await session.execute(
        pg_insert(m.form_ops).on_conflict_do_nothing(index_elements=["op_id"]).returning(m.form_ops.c.op_id), rows
    )).all())


async def claim_due(*, session: AsyncSession, limit: int, lease_seconds: float) -> list[FormOp]:
    """Up to `limit` due ops, leased so no other worker takes them meanwhile."""
    f = m.form_ops
    due = (select(f.c.op_id).where(f.c.status.in_(("retrying", "watching")), f.c.next_attempt_at <= func.now())
           .order_by(f.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True)).scalar_subquery()
    rows = (await session.execute(
        update(f).where(f.c.op_id.in_(due)).values(next_attempt_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(*f.c))).all()
    return [FormOp.of(r) for r in rows]


async def record(*, session: AsyncSession, results: list[FormResult], topic: str, watch_every: float) -> int:
    """Make the results durable: each op's next step, and an event for each change of a form. Returns events."""
    f = m.form_ops
    events = 0
    now = datetime.now(UTC)
    for r in results:
        op = r.op
        if r.error is not None:
            await session.execute(update(f).where(f.c.op_id == op.op_id).values(
                attempts=op.attempts + (op.status == "retrying"), last_error=r.error, next_attempt_at=r.retry_at,
                updated_at=func.now()))
            continue
        if r.refused is not None:
            await session.execute(update(f).where(f.c.op_id == op.op_id).values(
                status="done", attempts=op.attempts + 1, next_attempt_at=None, updated_at=func.now(),
                last_error=str(r.refused.get("detail") or r.refused.get("title") or r.http_status)))
            if op.op == "create":  # the form was never made: the issuer hears why
                events += await _emit(session, op, topic, now, status="failed", form_no=None, form=None,
                                      error=str(r.refused.get("detail") or "refused by the tax store")[:2000],
                                      error_code=str(r.refused.get("code") or "") or None,
                                      http_status=r.http_status)
            else:  # a decision refused (decided otherwise, void): the form's own watch reports what it is
                await _watch_again(session, op.form_id)
            continue
        form = r.form or {}
        status, form_no = str(form.get("status")), str(form.get("form_no"))
        watching = status == "pending" and op.op == "create"
        attempts = op.attempts + (op.status == "retrying")
        await session.execute(update(f).where(f.c.op_id == op.op_id).values(
            status="watching" if watching else "done", form_no=form_no, attempts=attempts,
            next_attempt_at=now + timedelta(seconds=watch_every) if watching else None, last_error=None,
            updated_at=func.now()))
        known = (await session.execute(
            select(f.c.store_status).where(f.c.form_id == op.form_id, f.c.op == "create").with_for_update()
        )).scalar_one_or_none()
        if known == status:
            continue
        await session.execute(update(f).where(f.c.form_id == op.form_id).values(store_status=status))
        if status in FINAL:
            await session.execute(update(f).where(f.c.form_id == op.form_id, f.c.status == "watching")
                                  .values(status="done", next_attempt_at=None))
        events += await _emit(session, op, topic, now, status=status, form_no=form_no, form=form)
    if events:
        await notify_outbox(session, m.outbox)
    return events


async def _watch_again(session: AsyncSession, form_id: uuid.UUID) -> None:
    f = m.form_ops
    await session.execute(update(f).where(f.c.form_id == form_id, f.c.status == "watching")
                          .values(next_attempt_at=func.now()))


async def _emit(session: AsyncSession, op: FormOp, topic: str, now: datetime, *, status: str, form_no: str | None,
                form: dict[str, Any] | None, error: str | None = None, error_code: str | None = None,
                http_status: int | None = None) -> int:
    seq = (await session.execute(
        pg_insert(m.form_seqs).values(form_id=op.form_id, seq=1)
        .on_conflict_do_update(index_elements=["form_id"], set_={"seq": m.form_seqs.c.seq + 1})
        .returning(m.form_seqs.c.seq))).scalar_one()
    event = RedLetterFormUpdated(form_id=op.form_id, invoice_id=op.invoice_id, tenant_id=op.tenant_id,
                                 status=status, form_no=form_no, form=form, error=error, error_code=error_code,
                                 http_status=http_status, at=now)
    envelope = new_envelope(source=SYNC_SOURCE, event=event, subject=str(op.invoice_id), tenant=str(op.tenant_id),
                            sequence=seq)
    await session.execute(m.outbox.insert().values(topic=topic, key=str(op.invoice_id), event_id=envelope.id,
                                                   event_type=envelope.type, payload=encode(envelope)))
    return 1
