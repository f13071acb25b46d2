"""The reconciler's use cases on its ledger: take in what was issued and what the sync service learned,
apply what a check of the tax store showed, open and resolve cases, sweep confirmed invoices, summarise a
month. The Kafka loop, the check round and the sweeper (worker.py) and the HTTP API are the doors.

Every state change and the events announcing it (to the issuer, to the sync service as a resync command,
to the notifier as an alert) are written in the caller's transaction, through the outbox: a crash either
keeps all of it or none. Alert ids are derived from (invoice, transition, case), so even a re-sent alert is
recognisably the same one. Callers own the transaction; nothing here commits.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import ColumnElement, CursorResult, and_, bindparam, case, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.reconciler import models as m
from services.reconciler.rules import Decision, Policy, Seen, after_sync_result, decide, human_duration
from shared.contracts.cases import case_no_of
from shared.envelope import Envelope, Received, encode, new_envelope
from shared.errors import Conflict, NotFound
from shared.events import (
    RECONCILER_SOURCE,
    AlertRaised,
    CaseClosedAlertRaised,
    CaseResolvedAlertRaised,
    CaseUpdated,
    Event,
    InvoiceAwaitingVisibility,
    InvoiceConfirmed,
    InvoiceGapFound,
    InvoiceIssued,
    InvoiceRejected,
    InvoiceStuck,
    InvoiceSubmitted,
    OrphanAlertRaised,
    ReconciliationEvent,
    RecoveredAlertRaised,
    RejectedAlertRaised,
    ResyncRequested,
    StuckAlertRaised,
    SyncResult,
)
from shared.outbox import notify_outbox
from shared.topics import ALERTS, RECONCILIATION, RESYNC_REQUESTS

__all__ = [
    "CheckStats", "Topics", "apply_checks", "apply_sweep", "apply_sync_results", "apply_voided",
    "claim_due", "claim_sweep_windows", "gap_report", "get_case", "get_invoice", "intake_issued", "list_cases",
    "ledger_lookup", "list_unconfirmed", "month_summary", "open_case", "open_rows", "request_check", "request_resync",
    "restate", "status_counts", "sweep_now",
]

log = logging.getLogger(__name__)

_ALERT_NS = uuid.UUID("6f1c1f7e-5d0b-4c35-9a57-2f3f0c6a9b11")
_MUTABLE = (
    "state", "gap_kind", "reopened", "since", "acked_at", "receipt_no", "confirmed_at", "checks", "announced_ack_at",
    "resyncs", "last_resync_at", "held", "duplicate_acks", "sync_state", "last_error", "next_check_at",
    "check_requested_by", "last_checked_at", "stuck_at", "case_no", "sync_seq", "recon_seq",
)


@dataclass(frozen=True)
class Topics:
    reconciliation: str
    resync: str
    alerts: str

    @classmethod
    def of(cls, prefix: str) -> Topics:
        return cls(RECONCILIATION.qualified(prefix), RESYNC_REQUESTS.qualified(prefix), ALERTS.qualified(prefix))


class _Writes:
    """Everything one transaction will add besides the ledger updates: outbox rows and case history."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.outbox: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []

    def event(self, state: dict[str, Any], model: type[ReconciliationEvent], data: dict[str, Any]) -> None:
        """An event about one invoice for the issuer, numbered by the invoice's own reconciler sequence."""
        state["recon_seq"] += 1
        payload = _jsonable({
            "invoice_id": state["invoice_id"], "seller_tax_id": state["seller_tax_id"], "number": state["number"],
            **data,
            # What the issuer derives its status from: the finding as of this event, and the sync results it
            # already took into account.
            "ledger_state": state["state"], "sync_seq": state["sync_seq"]})
        env = _envelope(model, payload, subject=str(state["invoice_id"]), tenant=str(state["tenant_id"]),
                        sequence=state["recon_seq"])
        self._add(self.topics.reconciliation, str(state["invoice_id"]), env)

    def resync(self, state: dict[str, Any], reason: str, *,
               by: Literal["reconciler", "operator"] = "reconciler") -> None:
        event = ResyncRequested(invoice_id=state["invoice_id"], seller_tax_id=state["seller_tax_id"],
                                number=state["number"], reason=reason, requested_by=by, resync=state["resyncs"])
        env = new_envelope(source=RECONCILER_SOURCE, event=event, subject=str(state["invoice_id"]),
                           tenant=str(state["tenant_id"]), sequence=max(1, state["resyncs"]))
        self._add(self.topics.resync, str(state["invoice_id"]), env)

    def alert(self, state: dict[str, Any], model: type[AlertRaised], kind: str, *, reason: str,
              next_action: str | None, case_no: str | None, now: datetime) -> str:
        """One alert for the notifier; its id names the transition, so it is the same id if ever re-sent."""
        alert_id = str(uuid.uuid5(_ALERT_NS, f"{kind}:{state['invoice_id']}:{case_no or ''}"))
        data = {"alert_id": alert_id, "kind": kind, "tenant_id": str(state["tenant_id"]),
                "seller_tax_id": state["seller_tax_id"], "invoice_id": str(state["invoice_id"]),
                "number": state["number"], "issue_date": state.get("issue_date"), "total": state.get("total"),
                "buyer_name": state.get("buyer_name"), "buyer_tax_id": state.get("buyer_tax_id"),
                "reason": reason, "next_action": next_action, "case_no": case_no, "at": now}
        env = _envelope(model, _jsonable(data), id=alert_id, subject=str(state["invoice_id"]),
                        tenant=str(state["tenant_id"]), sequence=1)
        self._add(self.topics.alerts, str(state["invoice_id"]), env)
        return alert_id

    def note(self, case_no: str | None, kind: str, message: str, at: datetime, **detail: Any) -> None:
        if case_no:
            self.history.append({"case_no": case_no, "kind": kind, "message": message, "at": at,
                                 "detail": _jsonable(detail) or None})

    def _add(self, topic: str, key: str, env: Envelope) -> None:
        self.outbox.append({"topic": topic, "key": key, "event_id": env.id, "event_type": env.type,
                            "payload": encode(env)})

    async def flush(self, session: AsyncSession) -> None:
        if self.history:
            await session.execute(m.case_history.insert(), self.history)
        if self.outbox:
            await session.execute(m.outbox.insert(), self.outbox)
            await notify_outbox(session, m.outbox)


def _envelope(model: type[Event], data: dict[str, Any], **envelope: Any) -> Envelope:
    """The event as `model`. Text from outside (the store's errors, the invoice's words) that the consumers would
    refuse is sent as it is all the same, for them to dead-letter: it must not hold up this transaction."""
    try:
        return new_envelope(source=RECONCILER_SOURCE, event=model.model_validate(data), **envelope)
    except ValidationError as exc:
        log.error("sending a %s payload its consumers will refuse: %s", model.TYPE, exc.errors()[0])
        return new_envelope(source=RECONCILER_SOURCE, type=model.TYPE, data=data, **envelope)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def _lock(session: AsyncSession, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """The ledger rows, locked, as mutable dicts (always in id order: no deadlocks between the doors)."""
    ids = sorted(set(ids))
    if not ids:
        return {}
    rows = (await session.execute(
        select(m.ledger).where(m.ledger.c.invoice_id.in_(ids)).order_by(m.ledger.c.invoice_id).with_for_update()
    )).all()
    return {r.invoice_id: dict(r._mapping) for r in rows}


_SAVE = update(m.ledger).where(m.ledger.c.invoice_id == bindparam("b_invoice_id")).values(
    {c: bindparam(f"b_{c}") for c in _MUTABLE} | {"updated_at": func.now()})


async def _save(session: AsyncSession, states: Iterable[dict[str, Any]]) -> None:
    params = [{f"b_{c}": s[c] for c in ("invoice_id", *_MUTABLE)} for s in states]
    if params:
        await session.execute(_SAVE, params)


class _Row:
    """Attribute access over a ledger dict, for the pure rules."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


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
    states = await _lock(session, invoice_ids)
    now = datetime.now(UTC)
    w = _Writes(topics)
    for s in states.values():
        if s["state"] == "voided":
            continue
        s.update(state="voided", next_check_at=None, check_requested_by=None)
        if s["case_no"]:
            # Tell the notifier the case is over, so that reminders about it stop.
            w.alert(s, CaseClosedAlertRaised, "closed", now=now, case_no=s["case_no"], next_action=None,
                    reason=f"Case {s['case_no']} is closed: the seller voided invoice {s['number']}.")
            await _close_case(session, w, s, "closed", "voided by the seller", now)
    await _save(session, states.values())
    await w.flush(session)
    return len(states)


async def apply_sync_results(*, session: AsyncSession, results: Sequence[Received[SyncResult]], policy: Policy,
                             topics: Topics) -> Counter[str]:
    """What the sync service learned, in order per invoice; stale or redelivered results are skipped.
    Returns the applied results by kind: submitted, duplicate (the store already held it), failed, rejected."""
    results = sorted(results, key=lambda r: (r.envelope.subject, r.envelope.sequence))
    ids = {uuid.UUID(r.envelope.subject) for r in results}
    states = await _lock(session, ids)
    missing = [r for r in results if uuid.UUID(r.envelope.subject) not in states]
    if missing:
        # Results can overtake the issued event (another topic): keep a placeholder to fill in later.
        placeholders = {}
        for r in missing:
            placeholders[uuid.UUID(r.envelope.subject)] = {
                "invoice_id": uuid.UUID(r.envelope.subject), "tenant_id": uuid.UUID(r.envelope.tenant),
                "seller_tax_id": r.event.seller_tax_id, "number": r.event.number, "state": "pending"}
        await session.execute(pg_insert(m.ledger).on_conflict_do_nothing(), list(placeholders.values()))
        states.update(await _lock(session, placeholders))
    now = datetime.now(UTC)
    w = _Writes(topics)
    changed: dict[uuid.UUID, dict[str, Any]] = {}
    applied: Counter[str] = Counter()
    for r in results:
        s = states.get(uuid.UUID(r.envelope.subject))
        if s is None or r.envelope.sequence <= s["sync_seq"]:
            continue
        s["sync_seq"] = r.envelope.sequence
        changes, rejected = after_sync_result(_Row(s), r.event, now, policy)
        s.update(changes)
        changed[s["invoice_id"]] = s
        applied[_result_kind(r.event)] += 1
        if rejected:
            reason = s["last_error"]
            w.alert(s, RejectedAlertRaised, "rejected", reason=f"Rejected by the tax authority: {reason}",
                    next_action="Correct the invoice and issue it under a new number, or void this one.",
                    case_no=None, now=now)
            if s["case_no"]:
                await _close_case(session, w, s, "closed", f"rejected by the tax authority: {reason}", now)
    await _save(session, changed.values())
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


async def apply_checks(*, session: AsyncSession, seen: dict[uuid.UUID, Seen], policy: Policy, topics: Topics,
                       timezone: str = "Asia/Shanghai", rng: random.Random | None = None,
                       hot_sweep: tuple[float, float] | None = None) -> CheckStats:
    """Decide and record what each check showed: confirm, wait, resync, escalate — with their events.
    `hot_sweep` (after, for): the windows of the invoices confirmed here are swept again within `after` seconds,
    and every `after` seconds for `for` seconds (claim_sweep_windows)."""
    states = await _lock(session, seen)
    now = datetime.now(UTC)
    w = _Writes(topics)
    stats = CheckStats()
    confirmed_in: set[tuple[str, date]] = set()
    for iid, s in states.items():
        if s["state"] in ("rejected", "voided"):
            s.update(next_check_at=None, check_requested_by=None)
            continue
        observed = seen[iid]
        stats.results[observed.kind] = stats.results.get(observed.kind, 0) + 1
        requested_by = s["check_requested_by"]
        before = s["state"]
        d = decide(_Row(s), observed, now, policy, rng)
        s.update(d.changes)
        await _record_decision(session, w, s, d, before, requested_by, now, policy, timezone, stats)
        if d.confirm:
            confirmed_in.add((s["seller_tax_id"], s["issue_date"]))
    await _save(session, states.values())
    if hot_sweep is not None and confirmed_in:
        await _heat(session, sorted(confirmed_in), now, *hot_sweep)
    await w.flush(session)
    return stats


async def _heat(session: AsyncSession, windows: list[tuple[str, date]], now: datetime, after: float,
                hot_for: float) -> None:
    """A confirmation makes its window hot: swept within `after`, and every `after` until `hot_for` from now."""
    sw = m.sweep_windows
    soon, until = now + timedelta(seconds=after), now + timedelta(seconds=hot_for)
    await session.execute(
        update(sw).where(tuple_(sw.c.seller_tax_id, sw.c.issue_date).in_(windows))
        .values(hot_until=func.greatest(func.coalesce(sw.c.hot_until, until), until),
                next_sweep_at=func.least(sw.c.next_sweep_at, soon)))


async def _record_decision(session: AsyncSession, w: _Writes, s: dict[str, Any], d: Decision, before: str,
                           requested_by: str | None, now: datetime, p: Policy, timezone: str,
                           stats: CheckStats) -> None:
    case_no = s["case_no"]
    if d.confirm:
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
            await _close_case(session, w, s, "resolved",
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
        return

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
        stats.stuck += 1
        if not case_no:
            case_no = await _new_case(session, w, s, opened_by="system", note=None, now=now, timezone=timezone,
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


# --- cases ------------------------------------------------------------------------------------

async def _new_case(session: AsyncSession, w: _Writes, s: dict[str, Any], *, opened_by: str, note: str | None,
                    now: datetime, timezone: str, message: str) -> str:
    day = now.astimezone(ZoneInfo(timezone)).date()
    n = (await session.execute(
        pg_insert(m.case_counters).values(day=day, n=1)
        .on_conflict_do_update(index_elements=["day"], set_={"n": m.case_counters.c.n + 1})
        .returning(m.case_counters.c.n)
    )).scalar_one()
    case_no = case_no_of(day, n)
    await session.execute(m.cases.insert().values(
        case_no=case_no, invoice_id=s["invoice_id"], tenant_id=s["tenant_id"], seller_tax_id=s["seller_tax_id"],
        number=s["number"], status="open", opened_by=opened_by, note=note, opened_at=now))
    s["case_no"] = case_no
    w.note(case_no, "opened", message, now)
    if opened_by == "tenant":
        w.event(s, CaseUpdated, {"case_no": case_no, "status": "open", "opened_by": opened_by, "at": now,
                                  "resolution": None})
    return case_no


async def _close_case(session: AsyncSession, w: _Writes, s: dict[str, Any], status: str, resolution: str,
                      now: datetime, *, emit: bool = True) -> None:
    case_no = s["case_no"]
    row = (await session.execute(
        update(m.cases).where(m.cases.c.case_no == case_no, m.cases.c.status == "open")
        .values(status=status, resolved_at=now, resolution=resolution).returning(m.cases.c.opened_by)
    )).first()
    s["case_no"] = None
    if row is None:
        return
    w.note(case_no, status, f"Case {status}: {resolution}.", now)
    if emit:
        w.event(s, CaseUpdated, {"case_no": case_no, "status": status, "opened_by": row.opened_by, "at": now,
                                  "resolution": resolution})


async def open_case(*, session: AsyncSession, invoice_id: uuid.UUID, tenant_id: uuid.UUID, seller_tax_id: str,
                    number: str, note: str | None, topics: Topics,
                    timezone: str = "Asia/Shanghai") -> tuple[dict[str, Any], bool]:
    """The tenant says the authority does not have this invoice: open a case (or return the open one) and
    check the authority now. Returns (case, created)."""
    await session.execute(pg_insert(m.ledger).values(
        invoice_id=invoice_id, tenant_id=tenant_id, seller_tax_id=seller_tax_id, number=number, state="pending",
    ).on_conflict_do_nothing())
    s = (await _lock(session, [invoice_id]))[invoice_id]
    if s["tenant_id"] != tenant_id or s["seller_tax_id"] != seller_tax_id or s["number"] != number:
        raise NotFound(f"no invoice {invoice_id}")
    if s["state"] in ("voided", "rejected"):
        raise Conflict(f"the invoice is {s['state']}" + (f": {s['last_error']}" if s["state"] == "rejected" else "")
                       + "; there is nothing to look for at the authority", extra={"invoice_state": s["state"]})
    now = datetime.now(UTC)
    w = _Writes(topics)
    created = False
    if s["case_no"] is None:
        await _new_case(session, w, s, opened_by="tenant", note=note, now=now, timezone=timezone,
                        message="Opened at the seller's request: the tax system does not show this invoice."
                                + (f" Note: {note}" if note else ""))
        created = True
    # Check now, whatever the schedule said (a confirmed invoice too: it may have vanished since).
    s.update(next_check_at=now, check_requested_by="case")
    w.note(s["case_no"], "check", "Immediate check of the tax authority requested.", now, trigger="case")
    await _save(session, [s])
    await w.flush(session)
    return await get_case(session=session, case_no=s["case_no"]), created


async def get_case(*, session: AsyncSession, case_no: str, history: bool = True) -> dict[str, Any]:
    c, led = m.cases, m.ledger
    row = (await session.execute(
        select(c, led.c.state.label("invoice_state"), led.c.gap_kind, led.c.receipt_no, led.c.resyncs,
               led.c.next_check_at, led.c.last_error)
        .join(led, led.c.invoice_id == c.c.invoice_id).where(c.c.case_no == case_no)
    )).first()
    if row is None:
        raise NotFound(f"no case {case_no}")
    out = _case_view(row)
    if history:
        entries = (await session.execute(
            select(m.case_history).where(m.case_history.c.case_no == case_no).order_by(m.case_history.c.id)
        )).all()
        out["history"] = [{"at": e.at.isoformat(), "kind": e.kind, "message": e.message, "detail": e.detail}
                          for e in entries]
    return out


def _case_view(row: Any) -> dict[str, Any]:
    return {
        "case_no": row.case_no, "status": row.status, "opened_by": row.opened_by, "opened_at": _iso(row.opened_at),
        "resolved_at": _iso(row.resolved_at), "resolution": row.resolution, "note": row.note,
        "invoice_id": str(row.invoice_id), "tenant_id": str(row.tenant_id), "seller_tax_id": row.seller_tax_id,
        "number": row.number, "invoice_state": row.invoice_state, "gap_kind": row.gap_kind,
        "receipt_no": row.receipt_no, "resyncs": row.resyncs, "next_check_at": _iso(row.next_check_at),
        "last_error": row.last_error,
    }


async def list_cases(*, session: AsyncSession, tenant_id: uuid.UUID | None, status: str | None,
                     limit: int) -> list[dict[str, Any]]:
    c, led = m.cases, m.ledger
    conds = []
    if tenant_id is not None:
        conds.append(c.c.tenant_id == tenant_id)
    if status is not None:
        conds.append(c.c.status == status)
    rows = (await session.execute(
        select(c, led.c.state.label("invoice_state"), led.c.gap_kind, led.c.receipt_no, led.c.resyncs,
               led.c.next_check_at, led.c.last_error)
        .join(led, led.c.invoice_id == c.c.invoice_id).where(and_(*conds))
        .order_by(c.c.opened_at.desc()).limit(limit)
    )).all()
    return [_case_view(r) for r in rows]


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
    states = await _lock(session, [invoice_id])
    s = states.get(invoice_id)
    if s is None or s["content_hash"] is None:
        raise NotFound(f"no invoice {invoice_id}")
    if s["state"] in ("rejected", "voided"):
        raise Conflict(f"the invoice is {s['state']}; there is nothing to resubmit", extra={"state": s["state"]})
    now = datetime.now(UTC)
    w = _Writes(topics)
    w.resync(s, "requested by an operator", by="operator")
    w.note(s["case_no"], "resync", "Resync requested by an operator.", now)
    s.update(last_resync_at=now, next_check_at=now + timedelta(seconds=policy.first_check_after),
             check_requested_by="admin")
    await _save(session, [s])
    await w.flush(session)
    return {"invoice_id": str(invoice_id), "state": s["state"], "resync": "requested",
            "next_check_at": s["next_check_at"].isoformat()}


async def get_invoice(*, session: AsyncSession, invoice_id: uuid.UUID) -> dict[str, Any]:
    row = (await session.execute(select(m.ledger).where(m.ledger.c.invoice_id == invoice_id))).first()
    if row is None:
        raise NotFound(f"no invoice {invoice_id}")
    return _jsonable(dict(row._mapping))


# --- sweeps -----------------------------------------------------------------------------------

async def claim_sweep_windows(*, session: AsyncSession, limit: int, interval: float,
                              hot_interval: float | None = None) -> list[Any]:
    """The (seller, issue date) windows due for a sweep, pushed to their next turn: `hot_interval` away while the
    window is hot (a recent confirmation), else `interval`."""
    sw = m.sweep_windows
    due = (select(sw.c.seller_tax_id, sw.c.issue_date).where(sw.c.next_sweep_at <= func.now())
           .order_by(sw.c.next_sweep_at).limit(limit).with_for_update(skip_locked=True)).subquery()
    step: ColumnElement[Any] = func.make_interval(0, 0, 0, 0, 0, 0, interval)
    if hot_interval is not None:
        step = case((sw.c.hot_until > func.now(), func.make_interval(0, 0, 0, 0, 0, 0, hot_interval)), else_=step)
    return list((await session.execute(
        update(sw).where(sw.c.seller_tax_id == due.c.seller_tax_id, sw.c.issue_date == due.c.issue_date)
        .values(next_sweep_at=func.now() + step)
        .returning(sw.c.seller_tax_id, sw.c.issue_date, sw.c.tenant_id)
    )).all())


async def apply_sweep(*, session: AsyncSession, seller_tax_id: str, issue_date: date, tenant_id: uuid.UUID,
                      store: dict[str, Any], orphan_grace: float, topics: Topics) -> dict[str, int]:
    """Compare one window's ledger with the store's listing of it (number -> StoreView).

    Confirmed invoices that are gone or changed, and unconfirmed ones the listing shows, are checked at once
    (the check decides and acts); numbers the store holds that were never issued here are orphans, alerted
    once when still unknown after the grace period.
    """
    led = m.ledger
    rows = (await session.execute(
        select(led.c.invoice_id, led.c.number, led.c.state, led.c.content_hash)
        .where(led.c.seller_tax_id == seller_tax_id, led.c.issue_date == issue_date)
    )).all()
    now = datetime.now(UTC)
    ours = {r.number: r for r in rows}
    recheck: list[uuid.UUID] = []
    result = {"listed": len(store), "ours": len(rows), "vanished": 0, "changed": 0, "seen_unconfirmed": 0,
              "orphans": 0}
    for r in rows:
        v = store.get(r.number)
        if r.state == "confirmed":
            if v is None:
                result["vanished"] += 1
                recheck.append(r.invoice_id)
            elif v.content_hash != r.content_hash:
                result["changed"] += 1
                recheck.append(r.invoice_id)
        elif r.state in ("pending", "awaiting", "gap", "stuck") and v is not None:
            result["seen_unconfirmed"] += 1
            recheck.append(r.invoice_id)
    if recheck:
        await session.execute(
            update(led).where(led.c.invoice_id.in_(recheck))
            .values(next_check_at=func.now(), check_requested_by="sweep"))
    unknown = [n for n in store if n not in ours]
    if unknown:
        # Issued here under another date (or not yet seen by this service)? Then it is not an orphan.
        known = set((await session.execute(
            select(led.c.number).where(led.c.seller_tax_id == seller_tax_id, led.c.number.in_(unknown))
        )).scalars())
        unknown = [n for n in unknown if n not in known]
    if unknown:
        result["orphans"] = len(unknown)
        await _record_orphans(session, seller_tax_id, tenant_id, [store[n] for n in unknown], now, orphan_grace,
                              topics)
    await session.execute(
        update(m.sweep_windows).where(m.sweep_windows.c.seller_tax_id == seller_tax_id,
                                      m.sweep_windows.c.issue_date == issue_date)
        .values(last_swept_at=now, last_result=result))
    return result


async def _record_orphans(session: AsyncSession, seller_tax_id: str, tenant_id: uuid.UUID, views: list[Any],
                          now: datetime, grace: float, topics: Topics) -> None:
    o = m.orphans
    stmt = pg_insert(o)
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[o.c.seller_tax_id, o.c.number], set_={"last_seen_at": stmt.excluded.last_seen_at}), [
        {"seller_tax_id": seller_tax_id, "number": v.number, "tenant_id": tenant_id, "issue_date": v.issue_date,
         "total": v.total, "receipt_no": v.receipt_no, "first_seen_at": now, "last_seen_at": now} for v in views])
    due = (await session.execute(
        update(o).where(o.c.seller_tax_id == seller_tax_id, o.c.number.in_([v.number for v in views]),
                        o.c.alerted_at.is_(None), o.c.first_seen_at <= now - timedelta(seconds=grace))
        .values(alerted_at=now).returning(o)
    )).all()
    w = _Writes(topics)
    for r in due:
        alert_id = str(uuid.uuid5(_ALERT_NS, f"orphan:{r.seller_tax_id}:{r.number}"))
        subject = f"orphan:{r.seller_tax_id}:{r.number}"
        data = {"alert_id": alert_id, "kind": "orphan", "tenant_id": str(r.tenant_id), "seller_tax_id": r.seller_tax_id,
                "invoice_id": None, "number": r.number, "issue_date": r.issue_date, "total": r.total,
                "buyer_name": None, "buyer_tax_id": None, "receipt_no": r.receipt_no,
                "reason": f"The tax authority holds invoice {r.number} under your tax id (receipt {r.receipt_no}), "
                          "but it was never issued through Fapiao Sync.",
                "next_action": "Check whether it was issued outside this system; red-letter it if it is not yours.",
                "case_no": None, "at": now}
        env = _envelope(OrphanAlertRaised, _jsonable(data), id=alert_id, subject=subject, tenant=str(r.tenant_id),
                        sequence=1)
        w._add(topics.alerts, subject, env)
    await w.flush(session)


# --- reporting --------------------------------------------------------------------------------

_AGE_BUCKETS = ((60, "lt_1m"), (600, "1m_10m"), (3600, "10m_1h"), (86400, "1h_1d"))


def age_bucket(seconds: float) -> str:
    for limit, name in _AGE_BUCKETS:
        if seconds < limit:
            return name
    return "gt_1d"


async def gap_report(*, session: AsyncSession) -> dict[str, Any]:
    """Unconfirmed invoices by kind and age bucket, counted in SQL over the partial index (unconfirmed
    rows only, whatever the size of the ledger)."""
    led = m.ledger
    age = func.extract("epoch", func.now() - func.coalesce(led.c.since, led.c.created_at))
    kind = case((led.c.state == "stuck", "stuck"), (led.c.state == "pending", "unacknowledged"),
                (led.c.state == "awaiting", "awaiting"), else_=func.coalesce(led.c.gap_kind, "missing"))
    bucket = case(*((age < limit, name) for limit, name in _AGE_BUCKETS), else_="gt_1d")
    rows = (await session.execute(
        select(kind.label("kind"), bucket.label("age"), func.count().label("n"), func.max(age).label("oldest"))
        .where(led.c.next_check_at.is_not(None), led.c.state.in_(("pending", "awaiting", "gap", "stuck")))
        .group_by(kind, bucket)
    )).all()
    by = {(r.kind, r.age): int(r.n) for r in rows}
    return {"by_kind_age": by, "stuck": sum(n for (k, _), n in by.items() if k == "stuck"),
            "unconfirmed": sum(by.values()), "oldest_unconfirmed_seconds": max((float(r.oldest) for r in rows),
                                                                                default=0.0)}


async def status_counts(*, session: AsyncSession) -> dict[str, Any]:
    led, c = m.ledger, m.cases
    states = {r[0]: int(r[1]) for r in (await session.execute(
        select(led.c.state, func.count()).group_by(led.c.state))).all()}
    cases = {r[0]: int(r[1]) for r in (await session.execute(
        select(c.c.status, func.count()).group_by(c.c.status))).all()}
    orphans = int((await session.execute(select(func.count()).select_from(m.orphans))).scalar_one())
    return {"ledger": states, "cases": cases, "orphans": orphans}


def _sums() -> dict[str, Any]:
    return {"count": 0, "total": Decimal("0.00")}


async def month_summary(*, session: AsyncSession, seller_tax_id: str, month: date, store: Sequence[Any],
                        max_differences: int = 1000) -> dict[str, Any]:
    """发票汇总确认: one seller's month, counts and sums (blue / red) here vs. at the authority, and every
    difference. `store` is the authority's listing of the month."""
    led = m.ledger
    last = (month.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    rows = (await session.execute(
        select(led.c.invoice_id, led.c.number, led.c.state, led.c.content_hash, led.c.total_amount,
               led.c.total_tax, led.c.total, led.c.receipt_no)
        .where(led.c.seller_tax_id == seller_tax_id, led.c.issue_date >= month, led.c.issue_date <= last)
    )).all()
    ours_sums = {"blue": _sums() | {"total_amount": Decimal("0.00"), "total_tax": Decimal("0.00")},
                 "red": _sums() | {"total_amount": Decimal("0.00"), "total_tax": Decimal("0.00")}}
    theirs_sums = {"blue": _sums(), "red": _sums()}
    not_expected = {"voided": 0, "rejected": 0}
    expected: dict[str, Any] = {}
    others: dict[str, Any] = {}
    for r in rows:
        if r.state in ("voided", "rejected"):
            not_expected[r.state] += 1
            others[r.number] = r
            continue
        expected[r.number] = r
        colour = "red" if r.total < 0 else "blue"
        bucket = ours_sums[colour]
        bucket["count"] += 1
        bucket["total"] += r.total
        bucket["total_amount"] += r.total_amount
        bucket["total_tax"] += r.total_tax
    differences: list[dict[str, Any]] = []
    seen_numbers = set()
    for v in store:
        seen_numbers.add(v.number)
        colour = "red" if v.total < 0 or v.red_letter_of else "blue"
        theirs_sums[colour]["count"] += 1
        theirs_sums[colour]["total"] += v.total
        authority = {"total": f"{v.total:.2f}", "receipt_no": v.receipt_no}
        ours = expected.get(v.number)
        if ours is None:
            other = others.get(v.number)
            kind = f"{other.state}_here" if other is not None else "unknown_here"
            differences.append({"number": v.number, "kind": kind, "authority": authority,
                                "ours": None if other is None else {"invoice_id": str(other.invoice_id),
                                                                    "state": other.state,
                                                                    "total": f"{other.total:.2f}"}})
        elif ours.total != v.total or ours.content_hash != v.content_hash:
            differences.append({"number": v.number, "kind": "total_differs" if ours.total != v.total else
                                "content_differs", "authority": authority,
                                "ours": {"invoice_id": str(ours.invoice_id), "state": ours.state,
                                         "total": f"{ours.total:.2f}"}})
    for number, r in expected.items():
        if number not in seen_numbers:
            differences.append({"number": number, "kind": "missing_at_authority", "authority": None,
                                "ours": {"invoice_id": str(r.invoice_id), "state": r.state, "total": f"{r.total:.2f}"}})
    differences.sort(key=lambda x: (x["kind"], x["number"]))
    kinds: dict[str, int] = {}
    for x in differences:
        kinds[x["kind"]] = kinds.get(x["kind"], 0) + 1
    return _jsonable({
        "seller_tax_id": seller_tax_id, "month": f"{month:%Y-%m}", "period": {"from": month, "to": last},
        "ours": ours_sums, "authority": theirs_sums, "not_expected_at_authority": not_expected,
        "matches": not differences, "difference_counts": kinds, "differences": differences[:max_differences],
        "differences_truncated": len(differences) > max_differences,
    })


async def list_unconfirmed(*, session: AsyncSession, limit: int) -> list[dict[str, Any]]:
    """The oldest unconfirmed invoices, with why and what next (unconfirmed rows only)."""
    led = m.ledger
    rows = (await session.execute(
        select(led.c.invoice_id, led.c.tenant_id, led.c.seller_tax_id, led.c.number, led.c.state, led.c.gap_kind,
               led.c.since, led.c.acked_at, led.c.resyncs, led.c.held, led.c.case_no, led.c.last_error,
               led.c.next_check_at)
        .where(led.c.next_check_at.is_not(None), led.c.state.in_(("pending", "awaiting", "gap", "stuck")))
        .order_by(led.c.since.asc().nulls_last()).limit(limit)
    )).all()
    return [_jsonable(dict(r._mapping)) for r in rows]


async def sweep_now(*, session: AsyncSession, seller_tax_id: str | None) -> int:
    """Make every window (of one seller) due for a sweep now."""
    sw = m.sweep_windows
    stmt = update(sw).values(next_sweep_at=func.now())
    if seller_tax_id:
        stmt = stmt.where(sw.c.seller_tax_id == seller_tax_id)
    return int(cast("CursorResult[Any]", await session.execute(stmt)).rowcount or 0)


# --- the status self-check (the issuer compares its statuses with this ledger) -----------------

def _ledger_entry(r: Any) -> dict[str, Any]:
    return {"invoice_id": str(r.invoice_id), "state": r.state, "recon_seq": r.recon_seq, "sync_seq": r.sync_seq,
            "next_check_at": _iso(r.next_check_at), "last_resync_at": _iso(r.last_resync_at),
            "case_no": r.case_no}


_ENTRY_COLUMNS = ("invoice_id", "state", "recon_seq", "sync_seq", "next_check_at", "last_resync_at", "case_no")


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
    states = await _lock(session, invoice_ids)
    w = _Writes(topics)
    out: Counter[str] = Counter()
    for s in states.values():
        if s["content_hash"] is None or s["state"] in ("rejected", "voided"):
            continue
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
        out[state] += 1
    await _save(session, states.values())
    await w.flush(session)
    return dict(out)
