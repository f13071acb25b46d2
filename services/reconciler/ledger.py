"""The ledger's use cases: take in what was issued, voided and what the sync service learned; claim the invoices
due for a check and record what each check showed (rules.decide decides; this writes the decision, its events,
alerts and case steps). Callers own the transaction; nothing here commits."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.reconciler import models as m
from services.reconciler.cases import close_case, new_case
from services.reconciler.rules import Decision, Policy, Seen, after_sync_result, decide, human_duration
from services.reconciler.sweeps import heat
from services.reconciler.writes import Row, Topics, Writes, lock, save
from shared.envelope import Received
from shared.events import (
    CaseClosedAlertRaised,
    CaseResolvedAlertRaised,
    InvoiceAwaitingVisibility,
    InvoiceConfirmed,
    InvoiceGapFound,
    InvoiceIssued,
    InvoiceRejected,
    InvoiceReviewUpdated,
    InvoiceStuck,
    InvoiceSubmitted,
    RecoveredAlertRaised,
    RejectedAlertRaised,
    ReviewDeniedAlertRaised,
    ReviewOverdueAlertRaised,
    StuckAlertRaised,
    SyncResult,
)

__all__ = ["CheckStats", "apply_checks", "apply_sync_results", "apply_voided", "claim_due", "intake_issued"]


# --- the expected side: issued, voided, sync results ------------------------------------------

async def intake_issued(*, session: AsyncSession, issued: Sequence[InvoiceIssued], policy: Policy,
                        sweep_interval: float) -> int:
    """Record issued invoices (a redelivered event changes nothing). Returns how many were new."""
    if not issued:
        return 0
    now = datetime.now(UTC)
    values = []
    windows: dict[tuple[str, date], uuid.UUID] = {}
    for e in issued:
        doc = e.invoice
        issue_date = date.fromisoformat(doc["issue_date"])
        buyer = doc.get("buyer") or {}
        values.append({
            "invoice_id": e.invoice_id, "tenant_id": e.tenant_id, "seller_tax_id": e.seller_tax_id,
            "number": e.number, "issue_date": issue_date, "buyer_tax_id": buyer.get("tax_id") or None,
            "buyer_name": buyer.get("name"), "total_amount": Decimal(doc["total_amount"]),
            "total_tax": Decimal(doc["total_tax"]), "total": Decimal(doc["total"]), "content_hash": e.content_hash,
            "accepted_at": e.accepted_at, "since": e.accepted_at, "state": "pending",
            # Nothing to look at before the sync service reports, unless it never does: then at the limit.
            "next_check_at": e.accepted_at + timedelta(seconds=policy.stuck_after),
        })
        windows[(e.seller_tax_id, issue_date)] = e.tenant_id
    led = m.ledger
    stmt = pg_insert(led)
    # A sync result may have arrived first and left a placeholder: fill it in.
    fill = ("issue_date", "buyer_tax_id", "buyer_name", "total_amount", "total_tax", "total", "content_hash",
            "accepted_at", "since")
    stmt = stmt.on_conflict_do_update(
        index_elements=[led.c.invoice_id],
        set_={c: stmt.excluded[c] for c in fill} | {
            "next_check_at": text(
                f"CASE WHEN {led.fullname}.state IN ('confirmed', 'rejected', 'voided') THEN NULL "
                f"WHEN {led.fullname}.state = 'pending' THEN excluded.next_check_at ELSE now() END"),
            "updated_at": func.now()},
        where=led.c.content_hash.is_(None),
    )
    result = cast("CursorResult[Any]", await session.execute(stmt, values))
    sw = pg_insert(m.sweep_windows).on_conflict_do_nothing(index_elements=["seller_tax_id", "issue_date"])
    await session.execute(sw, [
        {"seller_tax_id": s, "issue_date": d, "tenant_id": t, "next_sweep_at": now + timedelta(seconds=sweep_interval)}
        for (s, d), t in sorted(windows.items())
    ])
    return int(result.rowcount or 0)


async def apply_voided(*, session: AsyncSession, invoice_ids: Sequence[uuid.UUID], topics: Topics) -> int:
    """The seller voided these: nothing more to check; an open case closes."""
    states = await lock(session, invoice_ids)
    now = datetime.now(UTC)
    w = Writes(topics)
    for s in states.values():
        if s["state"] == "voided":
            continue
        s.update(state="voided", next_check_at=None, check_requested_by=None)
        if s["case_no"]:
            # Tell the notifier the case is over, so that reminders about it stop.
            w.alert(s, CaseClosedAlertRaised, "closed", now=now, case_no=s["case_no"], next_action=None,
                    reason=f"Case {s['case_no']} is closed: the seller voided invoice {s['number']}.")
            await close_case(session, w, s, "closed", "voided by the seller", now)
    await save(session, states.values())
    await w.flush(session)
    return len(states)


async def apply_sync_results(*, session: AsyncSession, results: Sequence[Received[SyncResult]], policy: Policy,
                             topics: Topics) -> Counter[str]:
    """What the sync service learned, in order per invoice; stale or redelivered results are skipped.
    Returns the applied results by kind: submitted, duplicate (the store already held it), failed, rejected."""
    results = sorted(results, key=lambda r: (r.envelope.subject, r.envelope.sequence))
    ids = {uuid.UUID(r.envelope.subject) for r in results}
    states = await lock(session, ids)
    missing = [r for r in results if uuid.UUID(r.envelope.subject) not in states]
    if missing:
        # Results can overtake the issued event (another topic): keep a placeholder to fill in later.
        placeholders = {}
        for r in missing:
            placeholders[uuid.UUID(r.envelope.subject)] = {
                "invoice_id": uuid.UUID(r.envelope.subject), "tenant_id": uuid.UUID(r.envelope.tenant),
                "seller_tax_id": r.event.seller_tax_id, "number": r.event.number, "state": "pending"}
        await session.execute(pg_insert(m.ledger).on_conflict_do_nothing(), list(placeholders.values()))
        states.update(await lock(session, placeholders))
    now = datetime.now(UTC)
    w = Writes(topics)
    changed: dict[uuid.UUID, dict[str, Any]] = {}
    applied: Counter[str] = Counter()
    for r in results:
        s = states.get(uuid.UUID(r.envelope.subject))
        if s is None or r.envelope.sequence <= s["sync_seq"]:
            continue
        s["sync_seq"] = r.envelope.sequence
        changes, rejected = after_sync_result(Row(s), r.event, now, policy)
        s.update(changes)
        changed[s["invoice_id"]] = s
        applied[_result_kind(r.event)] += 1
        if rejected:
            reason = s["last_error"]
            w.alert(s, RejectedAlertRaised, "rejected", reason=f"Rejected by the tax authority: {reason}",
                    next_action="Correct the invoice and issue it under a new number, or void this one.",
                    case_no=None, now=now)
            if s["case_no"]:
                await close_case(session, w, s, "closed", f"rejected by the tax authority: {reason}", now)
    await save(session, changed.values())
    await w.flush(session)
    return applied


def _result_kind(e: SyncResult) -> str:
    if isinstance(e, InvoiceSubmitted):
        return "duplicate" if e.how == "duplicate" else "submitted"
    return "rejected" if isinstance(e, InvoiceRejected) else "failed"


# --- checks -----------------------------------------------------------------------------------

async def claim_due(*, session: AsyncSession, limit: int, lease_seconds: float) -> list[Any]:
    """Up to `limit` invoices due for a check, leased so that no other round takes them meanwhile.
    Reads only the partial index of rows with a next check: the cost follows the unconfirmed, not the ledger."""
    led = m.ledger
    due = (select(led.c.invoice_id).where(led.c.next_check_at <= func.now())
           .order_by(led.c.next_check_at).limit(limit).with_for_update(skip_locked=True)).scalar_subquery()
    return list((await session.execute(
        update(led).where(led.c.invoice_id.in_(due))
        .values(next_check_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(led.c.invoice_id, led.c.seller_tax_id, led.c.number, led.c.content_hash)
    )).all())


@dataclass
class CheckStats:
    confirmed: int = 0
    recovered: int = 0
    resyncs: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, int] = field(default_factory=dict)
    stuck: int = 0
    unreachable: int = 0
    results: dict[str, int] = field(default_factory=dict)
    # Seconds from acceptance to confirmation, for invoices confirmed the first time (not after a reopening).
    latencies: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Round:
    """What recording one check round's decisions works with."""

    session: AsyncSession
    writes: Writes
    now: datetime
    policy: Policy
    timezone: str
    stats: CheckStats


async def apply_checks(*, session: AsyncSession, seen: dict[uuid.UUID, Seen], policy: Policy, topics: Topics,
                       timezone: str = "Asia/Shanghai", rng: random.Random | None = None,
                       hot_sweep: tuple[float, float] | None = None) -> CheckStats:
    """Decide and record what each check showed: confirm, wait, resync, escalate — with their events.
    `hot_sweep` (after, for): the windows of the invoices confirmed here are swept again within `after` seconds,
    and every `after` seconds for `for` seconds (sweeps.claim_sweep_windows)."""
    states = await lock(session, seen)
    rnd = _Round(session, Writes(topics), datetime.now(UTC), policy, timezone, CheckStats())
    confirmed_in: set[tuple[str, date]] = set()
    for iid, s in states.items():
        if s["state"] in ("rejected", "voided", "denied"):
            s.update(next_check_at=None, check_requested_by=None)
            continue
        observed = seen[iid]
        rnd.stats.results[observed.kind] = rnd.stats.results.get(observed.kind, 0) + 1
        requested_by = s["check_requested_by"]
        before = s["state"]
        d = decide(Row(s), observed, rnd.now, policy, rng)
        s.update(d.changes)
        if d.confirm:
            await _record_confirmation(rnd, s, d, requested_by)
            confirmed_in.add((s["seller_tax_id"], s["issue_date"]))
        else:
            await _record_finding(rnd, s, d, before, requested_by)
    await save(session, states.values())
    if hot_sweep is not None and confirmed_in:
        await heat(session, sorted(confirmed_in), rnd.now, *hot_sweep)
    await rnd.writes.flush(session)
    return rnd.stats


async def _record_confirmation(rnd: _Round, s: dict[str, Any], d: Decision, requested_by: str | None) -> None:
    """Visible and identical: the confirmation, a recovery's alert, the end of the invoice's case."""
    w, now, stats, case_no = rnd.writes, rnd.now, rnd.stats, s["case_no"]
    stats.confirmed += 1
    if not s["reopened"] and s["accepted_at"]:
        stats.latencies.append((now - s["accepted_at"]).total_seconds())
    visible_after = (now - s["acked_at"]).total_seconds() if s["acked_at"] else None
    case_status = None
    if case_no:
        w.note(case_no, "check", d.note, now, trigger=requested_by or "schedule", result="visible")
    if d.recovered:
        stats.recovered += 1
        w.alert(s, RecoveredAlertRaised, "recovered", now=now, case_no=case_no, next_action=None,
                reason=f"Now visible at the tax authority with identical content (receipt {s['receipt_no']}).")
        w.note(case_no, "alert", "Recovered alert raised.", now)
    if case_no:
        await close_case(rnd.session, w, s, "resolved",
                         f"visible at the tax authority with identical content (receipt {s['receipt_no']})", now,
                         emit=True)
        case_status = "resolved"
        if not d.recovered:  # a case the seller opened: tell them it is over (a recovery says so itself)
            w.alert(s, CaseResolvedAlertRaised, "resolved", now=now, case_no=case_no, next_action=None,
                    reason=f"Case {case_no} is resolved: the invoice is visible at the tax authority with "
                           f"identical content (receipt {s['receipt_no']}).")
            w.note(case_no, "alert", "Resolved alert raised.", now)
    w.event(s, InvoiceConfirmed, {
        "receipt_no": s["receipt_no"], "acked_at": s["acked_at"], "confirmed_at": now,
        "visible_after_seconds": round(visible_after, 3) if visible_after is not None else None,
        "how": requested_by if requested_by in ("sweep", "case") else "check", "recovered": d.recovered,
        "case_no": case_no, "case_status": case_status, "reopened": s["reopened"]})
    s["reopened"] = False


async def _record_finding(rnd: _Round, s: dict[str, Any], d: Decision, before: str,
                          requested_by: str | None) -> None:
    """Not confirmed: what to wait for, a resync, a gap found, or a stuck invoice with its case and alert."""
    w, now, p, stats, case_no = rnd.writes, rnd.now, rnd.policy, rnd.stats, s["case_no"]
    if case_no and (requested_by or d.resync or d.escalate or d.gap_event or s["state"] != before):
        w.note(case_no, "check", d.note, now, trigger=requested_by or "schedule")
    if d.announce:
        w.event(s, InvoiceAwaitingVisibility, {
            "receipt_no": s["receipt_no"], "acked_at": s["acked_at"], "sla_seconds": p.visibility_sla,
            "deadline": s["acked_at"] + timedelta(seconds=p.visibility_sla), "next_check_at": s["next_check_at"],
            "checks": s["checks"]})
    if d.resync:
        kind = s["gap_kind"] or "missing"
        stats.resyncs[kind] = stats.resyncs.get(kind, 0) + 1
        w.resync(s, f"{kind}: {d.note.strip()}")
        w.note(case_no, "resync", f"Resync {s['resyncs']} requested ({kind}).", now)
    if d.gap_event:
        kind = s["gap_kind"] or "missing"
        stats.gaps[kind] = stats.gaps.get(kind, 0) + 1
        w.event(s, InvoiceGapFound, {
            "kind": kind, "detail": d.note.strip(), "reopened": s["reopened"], "acked_at": s["acked_at"],
            "sla_seconds": p.visibility_sla, "resync": s["resyncs"], "max_resyncs": p.stuck_after_resyncs,
            "resync_at": s["last_resync_at"], "next_check_at": s["next_check_at"], "case_no": case_no,
            "stuck_after_seconds": p.stuck_after, "since": s["since"], "held": s["held"]})
    if d.escalate:
        await _escalate(rnd, s, d)
    if d.review or d.review_overdue:
        _review(rnd, s, d)


def _review(rnd: _Round, s: dict[str, Any], d: Decision) -> None:
    """Held for cross-region review, or denied: the finding for the issuer, and the alerts (once each)."""
    w, now, p = rnd.writes, rnd.now, rnd.policy
    denied = s["state"] == "denied"
    if d.review:
        w.event(s, InvoiceReviewUpdated, {
            "review_status": "denied" if denied else "under_review", "review_due_at": s["review_due_at"],
            "review_since": s["review_since"], "review_sla_seconds": p.review_sla, "receipt_no": s["receipt_no"],
            "next_check_at": s["next_check_at"]})
    if denied and d.review:
        w.alert(s, ReviewDeniedAlertRaised, "review_denied", now=now, case_no=None,
                reason=f"Invoice {s['number']} was denied in cross-region review by the tax bureau; it does not count.",
                next_action="Check the sale with the buyer; issue a corrected invoice if it stands.")
    if d.review_overdue:
        held = human_duration((now - (s["review_since"] or now)).total_seconds())
        w.alert(s, ReviewOverdueAlertRaised, "review_overdue", now=now, case_no=None,
                reason=f"Invoice {s['number']} has been held for cross-region review for {held}, longer than the "
                       f"agreed {human_duration(p.review_sla)}.",
                next_action="Ask the tax bureau about the review; the system keeps watching it.")


async def _escalate(rnd: _Round, s: dict[str, Any], d: Decision) -> None:
    """Stuck: a case (opened now unless one is open), the stuck alert and the finding."""
    w, now, p, case_no = rnd.writes, rnd.now, rnd.policy, s["case_no"]
    rnd.stats.stuck += 1
    if not case_no:
        case_no = await new_case(rnd.session, w, s, opened_by="system", note=None, now=now, timezone=rnd.timezone,
                                 message=f"Opened automatically: {d.stuck_reason}.")
    age = human_duration((now - (s["since"] or s["accepted_at"] or now)).total_seconds())
    reason = (f"Invoice {s['number']} is not confirmed at the tax authority {age} after "
              f"{'it vanished' if s['reopened'] else 'issue'}: {d.stuck_reason}. "
              f"Case {case_no}.")
    w.note(case_no, "stuck", f"Stuck: {d.stuck_reason}.", now)
    alert_id = w.alert(s, StuckAlertRaised, "stuck", reason=reason, case_no=case_no, now=now,
                       next_action=f"Follow case {case_no}; the system keeps checking and resubmitting. "
                                   "Void the invoice if it must not count.")
    w.note(case_no, "alert", "Stuck alert raised.", now, alert_id=alert_id)
    w.event(s, InvoiceStuck, {
        "case_no": case_no, "reason": d.stuck_reason, "accepted_at": s["accepted_at"], "since": s["since"],
        "stuck_at": now, "stuck_after_seconds": p.stuck_after, "resyncs": s["resyncs"],
        "max_resyncs": p.stuck_after_resyncs, "last_error": s["last_error"], "next_check_at": s["next_check_at"],
        "gap_kind": s["gap_kind"], "alert_id": alert_id})
