"""The reconciler's findings and case updates -> the finding register, `recon` and the timeline."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.explain import describe_event
from services.issuer.feeds.registers import State, lock_state, save_state, settle
from services.issuer.invoices.cases import cases_on_timeline
from services.issuer.lifecycle import Status, finding_of
from shared.envelope import Received
from shared.events import CaseUpdated, InvoiceAwaitingVisibility, InvoiceConfirmed, ReconciliationEvent

__all__ = ["apply_reconciliation"]


async def apply_reconciliation(*, session: AsyncSession, events: Sequence[Received[ReconciliationEvent]]) -> int:
    """Record what the reconciler found, in the caller's transaction; returns how many events were applied.

    Idempotent like apply_sync_results, on the reconciler's own per-invoice `sequence`. Each applied event
    merges its data into `recon` (rendered at read time by explain.py) and adds a timeline entry; a finding
    (the reconciler's ledger state, with the sync sequence it had seen) becomes the finding register's
    latest word and the status is derived again. Only a finding confirms an invoice, and only a later
    finding (a check or a sweep that sees it gone) reopens one.
    """
    ids = {uuid.UUID(r.envelope.subject) for r in events}
    if not ids:
        return 0
    state = await lock_state(session, ids)
    opened_cases = await cases_on_timeline(session, list(state)) if any(
        isinstance(r.event, CaseUpdated) for r in events) else set()
    timeline_rows: list[dict[str, Any]] = []
    changed: dict[uuid.UUID, State] = {}
    applied = 0
    now = datetime.now(UTC)
    for r in sorted(events, key=lambda r: (r.envelope.subject, r.envelope.sequence)):
        e = r.envelope
        iid = uuid.UUID(e.subject)
        st = state.get(iid)
        if st is None or e.sequence <= st["recon_seq"]:
            continue  # not ours, or already applied
        # Stored as checked and normalised (times as ISO 8601 UTC), as sent otherwise; explain.py renders it.
        data = r.event.model_dump(mode="json", exclude_unset=True)
        _record(st, r, data, now)
        changed[iid] = st
        applied += 1
        kind, message = describe_event(e.type, data, at_time=e.time)
        if kind == "case_opened":
            if data["case_no"] in opened_cases:
                continue  # the seller's request already put this opening on the timeline (record_case)
            opened_cases.add(data["case_no"])
        if r.event.restated:
            message += " (restated: the status self-check found the issuer disagreeing with the reconciler)"
        timeline_rows.append({"invoice_id": iid, "at": now, "kind": kind, "message": message,
                              "detail": {"event_id": e.id, **e.data}})
    if not changed:
        return 0
    await save_state(session, list(changed.values()), now)
    if timeline_rows:
        await session.execute(m.timeline.insert(), timeline_rows)
    return applied


def _record(st: State, r: Received[ReconciliationEvent], data: dict[str, Any], now: datetime) -> None:
    """One event into the registers (in place), and the status settled again."""
    e, found = r.envelope, r.event
    is_finding, finding = finding_of(e.type, found.ledger_state)
    st["recon_seq"] = e.sequence
    recon = {**(st["recon"] or {}), **data, "type": e.type, "applied_at": now.isoformat()}
    if isinstance(found, CaseUpdated):
        recon["case_status"] = found.status
    st["recon"] = recon
    if found.case_no and not (isinstance(found, CaseUpdated) and found.status != "open"):
        st["case_no"] = found.case_no  # a resolved or closed case stays on the invoice as history
    if isinstance(found, InvoiceConfirmed | InvoiceAwaitingVisibility) and found.receipt_no:
        st["receipt_no"] = found.receipt_no
    if is_finding and found.ledger_state is None and finding is Status.RETRYING \
            and st["finding_status"] == Status.STUCK.value:
        finding = Status.STUCK  # an older event: a gap found while stuck did not end the case
    if is_finding:
        # An event from before findings carried the sync sequence was made knowing what we know.
        seen = found.sync_seq
        st.update(finding_status=finding.value if finding else None,
                  finding_sync_seq=st["sync_seq"] if seen is None else seen)
    settle(st, now)
