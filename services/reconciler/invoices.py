"""One invoice by hand, for operators: its ledger row, a check now, a resync now (补录)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reconciler import models as m
from services.reconciler.rules import Policy
from services.reconciler.writes import Topics, Writes, jsonable, lock, save
from shared.errors import Conflict, NotFound

__all__ = ["get_invoice", "request_check", "request_resync"]


async def get_invoice(*, session: AsyncSession, invoice_id: uuid.UUID) -> dict[str, Any]:
    row = (await session.execute(select(m.ledger).where(m.ledger.c.invoice_id == invoice_id))).first()
    if row is None:
        raise NotFound(f"no invoice {invoice_id}")
    return jsonable(dict(row._mapping))


async def request_check(*, session: AsyncSession, invoice_id: uuid.UUID, by: str) -> dict[str, Any]:
    """Check this invoice at the next round (now), whatever its state except rejected or voided."""
    row = (await session.execute(
        update(m.ledger).where(m.ledger.c.invoice_id == invoice_id,
                               m.ledger.c.state.notin_(("rejected", "voided")))
        .values(next_check_at=func.now(), check_requested_by=by).returning(m.ledger.c.state)
    )).first()
    if row is None:
        raise NotFound(f"no checkable invoice {invoice_id}")
    return {"invoice_id": str(invoice_id), "state": row.state, "check": "requested"}


async def request_resync(*, session: AsyncSession, invoice_id: uuid.UUID, policy: Policy,
                         topics: Topics) -> dict[str, Any]:
    """An operator's resync (补录): the sync service resubmits the invoice (reading back first), and the
    reconciler checks it again soon after. Not counted against the automatic resync budget."""
    states = await lock(session, [invoice_id])
    s = states.get(invoice_id)
    if s is None or s["content_hash"] is None:
        raise NotFound(f"no invoice {invoice_id}")
    if s["state"] in ("rejected", "voided"):
        raise Conflict(f"the invoice is {s['state']}; there is nothing to resubmit", extra={"state": s["state"]})
    now = datetime.now(UTC)
    w = Writes(topics)
    w.resync(s, "requested by an operator", by="operator")
    w.note(s["case_no"], "resync", "Resync requested by an operator.", now)
    s.update(last_resync_at=now, next_check_at=now + timedelta(seconds=policy.first_check_after),
             check_requested_by="admin")
    await save(session, [s])
    await w.flush(session)
    return {"invoice_id": str(invoice_id), "state": s["state"], "resync": "requested",
            "next_check_at": s["next_check_at"].isoformat()}
