"""For the issuer's status self-check: the ledger's finding about each invoice as the issuer compares it with
its status (look-up by id, the open rows page by page), and the repair, the finding sent again (restate)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.reconciler import models as m
from services.reconciler.rules import Policy
from services.reconciler.writes import Topics, Writes, iso, lock, save
from shared.events import InvoiceAwaitingVisibility, InvoiceConfirmed, InvoiceGapFound, InvoiceStuck

__all__ = ["ledger_lookup", "open_rows", "restate"]

_ENTRY_COLUMNS = ("invoice_id", "state", "recon_seq", "sync_seq", "next_check_at", "last_resync_at", "case_no")


def _ledger_entry(r: Any) -> dict[str, Any]:
    return {"invoice_id": str(r.invoice_id), "state": r.state, "recon_seq": r.recon_seq, "sync_seq": r.sync_seq,
            "next_check_at": iso(r.next_check_at), "last_resync_at": iso(r.last_resync_at),
            "case_no": r.case_no}


async def ledger_lookup(*, session: AsyncSession, invoice_ids: Sequence[uuid.UUID]) -> list[dict[str, Any]]:
    """Each known invoice's state, the last event sequence sent about it and its live schedule."""
    led = m.ledger
    rows = (await session.execute(
        select(*(led.c[c] for c in _ENTRY_COLUMNS)).where(led.c.invoice_id.in_(sorted(set(invoice_ids))),
                                                          led.c.content_hash.is_not(None))
        .order_by(led.c.invoice_id))).all()
    return [_ledger_entry(r) for r in rows]


async def open_rows(*, session: AsyncSession, after: uuid.UUID | None, limit: int) -> list[dict[str, Any]]:
    """A page, in id order, of the rows not confirmed yet (those with a next check: the partial index)."""
    led = m.ledger
    conds: list[ColumnElement[bool]] = [led.c.next_check_at.is_not(None), led.c.content_hash.is_not(None)]
    if after is not None:
        conds.append(led.c.invoice_id > after)
    rows = (await session.execute(
        select(*(led.c[c] for c in _ENTRY_COLUMNS)).where(*conds).order_by(led.c.invoice_id).limit(limit))).all()
    return [_ledger_entry(r) for r in rows]


async def restate(*, session: AsyncSession, invoice_ids: Sequence[uuid.UUID], policy: Policy,
                  topics: Topics) -> dict[str, int]:
    """Send the issuer this ledger's current finding again, as a new event marked `restated`.

    The repair for a status the issuer shows differently from the ledger: the fact travels the normal path
    (outbox, Kafka, the issuer's consumer), so the issuer's timeline says what happened. Rejected and voided
    rows carry no finding and are left alone. Returns the restatements by ledger state.
    """
    states = await lock(session, invoice_ids)
    w = Writes(topics)
    out: Counter[str] = Counter()
    for s in states.values():
        if s["content_hash"] is None or s["state"] in ("rejected", "voided"):
            continue
        _restate(w, s, policy)
        out[s["state"]] += 1
    await save(session, states.values())
    await w.flush(session)
    return dict(out)


def _restate(w: Writes, s: dict[str, Any], policy: Policy) -> None:
    state = s["state"]
    common = {"restated": True, "case_no": s["case_no"], "next_check_at": s["next_check_at"]}
    if state == "confirmed":
        w.event(s, InvoiceConfirmed, {**common, "receipt_no": s["receipt_no"], "acked_at": s["acked_at"],
                                       "confirmed_at": s["confirmed_at"], "how": "check", "recovered": False,
                                       "reopened": False})
    elif state == "stuck":
        w.event(s, InvoiceStuck, {**common, "reason": "still not confirmed at the tax authority",
                                   "accepted_at": s["accepted_at"], "since": s["since"], "stuck_at": s["stuck_at"],
                                   "stuck_after_seconds": policy.stuck_after, "resyncs": s["resyncs"],
                                   "max_resyncs": policy.stuck_after_resyncs, "last_error": s["last_error"],
                                   "gap_kind": s["gap_kind"]})
    elif state == "gap":
        w.event(s, InvoiceGapFound, {**common, "kind": s["gap_kind"] or "missing", "reopened": s["reopened"],
                                       "acked_at": s["acked_at"], "sla_seconds": policy.visibility_sla,
                                       "resync": s["resyncs"], "max_resyncs": policy.stuck_after_resyncs,
                                       "resync_at": s["last_resync_at"], "stuck_after_seconds": policy.stuck_after,
                                       "since": s["since"], "held": s["held"]})
    else:  # awaiting, or pending: what it waits for, with no verdict on visibility yet
        deadline = s["acked_at"] + timedelta(seconds=policy.visibility_sla) if s["acked_at"] else None
        w.event(s, InvoiceAwaitingVisibility, {**common, "receipt_no": s["receipt_no"], "acked_at": s["acked_at"],
                                                 "sla_seconds": policy.visibility_sla, "deadline": deadline,
                                                 "checks": s["checks"]})
