"""The sync service's results (submitted, rejected, an attempt failed) -> the sync register and the timeline."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.feeds.registers import State, lock_state, no_move_note, save_state, settle
from services.issuer.lifecycle import Status
from shared.envelope import Received
from shared.events import InvoiceRejected, InvoiceSubmissionFailed, InvoiceSubmitted, SyncResult

__all__ = ["apply_sync_results"]


async def apply_sync_results(*, session: AsyncSession, events: Sequence[Received[SyncResult]]) -> int:
    """Record what the sync service learned, in the caller's transaction; returns how many were applied.

    Each invoice's results carry an increasing `sequence`: redelivered or stale ones are skipped, so the
    handler is idempotent without a processed-events table. Every applied result becomes the sync register's
    latest word and a timeline entry; the status is then derived (lifecycle.derive), so a result the
    reconciler's later finding already accounts for — or any result after it confirmed the invoice — is
    history on the timeline and moves nothing.
    """
    ids = {uuid.UUID(r.envelope.subject) for r in events}
    if not ids:
        return 0
    state = await lock_state(session, ids)
    timeline_rows: list[dict[str, Any]] = []
    changed: dict[uuid.UUID, State] = {}
    now = datetime.now(UTC)
    for r in sorted(events, key=lambda r: (r.envelope.subject, r.envelope.sequence)):
        e, result = r.envelope, r.event
        iid = uuid.UUID(e.subject)
        st = state.get(iid)
        if st is None or e.sequence <= st["sync_seq"]:
            continue  # not ours, or already applied
        target, reason, nxt, nxt_at, kind, message = _sync_effect(result)
        st.update(sync_seq=e.sequence, sync_status=target.value, sync_note={
            "reason": reason, "next_action": nxt, "next_action_at": nxt_at.isoformat() if nxt_at else None})
        if isinstance(result, InvoiceSubmitted) and result.receipt_no:
            st["receipt_no"] = result.receipt_no
        source = settle(st, now)
        changed[iid] = st
        if source != "sync":
            message += f" ({no_move_note(st, source)})"
        timeline_rows.append({"invoice_id": iid, "at": now, "kind": kind, "message": message,
                              "detail": {"event_id": e.id, **e.data}})
    if not changed:
        return 0
    await save_state(session, list(changed.values()), now)
    await session.execute(m.timeline.insert(), timeline_rows)
    return len(timeline_rows)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "?"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _sync_effect(e: SyncResult) -> tuple[Status, str, str | None, datetime | None, str, str]:
    """(target status, reason, next action, next action at, timeline kind, timeline message) of one result."""
    n = e.attempt
    latency = f"{e.latency_ms} ms"
    if isinstance(e, InvoiceSubmitted):
        receipt = e.receipt_no
        how = {"read_back": "found at the authority by read-back", "duplicate": "the authority already had it",
               "repaired": "the authority's damaged copy was restored", "created": "stored"}.get(e.how or "", "")
        reason = f"Acknowledged by the tax authority at {_when(e.at)}, receipt {receipt} (attempt {n}, {how})."
        return (Status.SUBMITTED, reason, "Check visibility at the authority (automatic).", None, "submitted",
                f"Attempt {n}: acknowledged by the tax authority, receipt {receipt} ({how}, {latency})")
    if isinstance(e, InvoiceRejected):
        code, why = e.reason_code or "REJECTED", e.reason or "no reason given"
        return (Status.REJECTED, f"Rejected by the tax authority: [{code}] {why}",
                "Correct the invoice and issue it under a new number, or void this one.", None, "rejected",
                f"Attempt {n}: rejected by the tax authority [{code}] {why}")
    assert isinstance(e, InvoiceSubmissionFailed)
    error = e.error or "unknown error"
    if e.gave_up:
        return (Status.RETRYING, f"Submission gave up after {n} attempts; last error: {error}",
                "The reconciler will check the authority and escalate (automatic).", None, "gave_up",
                f"Attempt {n} failed and was the last: {error}")
    if not e.attempted:
        reason = f"Not sent yet: {error}"
        message = f"Held back: {error}"
    else:
        unknown = " The outcome is unknown; the next attempt reads the authority back first." if e.ambiguous else ""
        reason = f"Submission attempt {n} failed: {error}.{unknown}"
        message = f"Attempt {n} failed after {latency}: {error}"
    nxt = f"Attempt {n + 1} at {_when(e.next_attempt_at)} (automatic)."
    return Status.RETRYING, reason, nxt, e.next_attempt_at, "attempt_failed", message
