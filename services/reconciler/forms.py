"""Red-letter forms in the expected ledger: a form the authority confirmed (红字发票信息确认单) owes a red invoice,
which the issuer records from the form and issues like any invoice. The reconciler holds each confirmed form as
an expectation from the sync service's word on it; past FAPIAO_RED_INVOICE_GRACE without the red invoice's
issued event in the ledger, it is a gap (rules.decide_form: red_unrecorded or red_missing) with a case and an
alert, checked again every FAPIAO_STUCK_RECHECK until the red invoice arrives (then the case is resolved).
Once met, the red invoice is the ledger's like any other. Callers own the transaction; nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.reconciler import models as m
from services.reconciler.cases import close_case, new_case
from services.reconciler.rules import Policy, decide_form
from services.reconciler.writes import ALERT_NS, Topics, Writes, jsonable
from shared.envelope import Received
from shared.events import CaseResolvedAlertRaised, InvoiceIssued, RedInvoiceMissingAlertRaised, RedLetterFormUpdated

__all__ = ["FormChecked", "apply_form_checks", "claim_due_forms", "intake_forms", "red_issued", "red_numbers"]

_f = m.red_letter_forms


async def intake_forms(*, session: AsyncSession, updates: Sequence[Received[RedLetterFormUpdated]],
                       grace: float) -> int:
    """Hold each confirmed form as an expectation, due `grace` after its confirmation (a redelivered or later
    update changes nothing; the other statuses owe no red invoice). Returns how many were new."""
    values = []
    for r in updates:
        e = r.event
        if e.status != "confirmed":
            continue
        form = e.form or {}
        red = form.get("red_invoice") or {}
        at = e.at or datetime.now(UTC)
        invoice = form.get("invoice") or {}
        values.append({
            "form_id": e.form_id, "tenant_id": e.tenant_id, "invoice_id": e.invoice_id,
            "seller_tax_id": invoice.get("seller_tax_id"),
            "blue_number": invoice.get("number"), "form_no": e.form_no, "red_number": red.get("number"),
            "total": Decimal(str(form["total"])) if form.get("total") is not None else None,
            "confirmed_at": at, "state": "expected", "next_check_at": at + timedelta(seconds=grace)})
    values = [v for v in values if v["seller_tax_id"] and v["blue_number"]]
    if not values:
        return 0
    result = await session.execute(pg_insert(_f).on_conflict_do_nothing(index_elements=["form_id"])
                                   .returning(_f.c.form_id), values)
    return len(result.all())


def red_numbers(issued: Sequence[InvoiceIssued]) -> list[tuple[str, str]]:
    """(seller, number) of the red invoices among these issued events."""
    return [(e.seller_tax_id, e.number) for e in issued if e.red_letter_of]


async def red_issued(*, session: AsyncSession, keys: Sequence[tuple[str, str]]) -> None:
    """Red invoices reached the ledger: their forms (a gap, or still in their grace) are looked at now."""
    if keys:
        await session.execute(update(_f).where(
            tuple_(_f.c.seller_tax_id, _f.c.red_number).in_(keys), _f.c.state.in_(("expected", "gap")))
            .values(next_check_at=func.now(), updated_at=func.now()))


async def claim_due_forms(*, session: AsyncSession, limit: int, lease_seconds: float) -> list[Any]:
    """Up to `limit` forms due for a look, leased meanwhile, each with the ledger's red invoice (if it arrived)."""
    due = (select(_f.c.form_id).where(_f.c.next_check_at <= func.now()).order_by(_f.c.next_check_at)
           .limit(limit).with_for_update(skip_locked=True)).scalar_subquery()
    rows = (await session.execute(
        update(_f).where(_f.c.form_id.in_(due)).values(next_check_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(_f.c.form_id, _f.c.seller_tax_id, _f.c.red_number))).all()
    return list(rows)


@dataclass
class FormChecked:
    met: int = 0
    gaps: dict[str, int] | None = None


async def apply_form_checks(*, session: AsyncSession, at_authority: dict[uuid.UUID, bool | None],
                            store_errors: dict[uuid.UUID, str], policy: Policy, topics: Topics,
                            timezone: str = "Asia/Shanghai") -> FormChecked:
    """Decide each claimed form (`at_authority`: form id -> whether the store holds its red invoice, None when
    it could not be asked) and record it: met (a gap's case resolved, the seller told), or a gap with its case
    (the blue invoice's open case if it has one) and one alert per case."""
    ids = sorted(at_authority)
    rows = (await session.execute(select(_f).where(_f.c.form_id.in_(ids)).order_by(_f.c.form_id)
                                  .with_for_update())).all()
    led = m.ledger
    reds = {(r.seller_tax_id, r.number): r.invoice_id for r in (await session.execute(
        select(led.c.seller_tax_id, led.c.number, led.c.invoice_id).where(
            tuple_(led.c.seller_tax_id, led.c.number).in_(
                [(f.seller_tax_id, f.red_number) for f in rows if f.red_number]),
            led.c.content_hash.is_not(None)))).all()} if any(f.red_number for f in rows) else {}
    now = datetime.now(UTC)
    w = Writes(topics)
    out = FormChecked(gaps={})
    for f in rows:
        if f.state == "met":
            continue
        d = decide_form(f, red_invoice_id=reds.get((f.seller_tax_id, f.red_number)),
                        at_authority=at_authority[f.form_id], store_error=store_errors.get(f.form_id), now=now,
                        policy=policy)
        changes = dict(d.changes)
        case = {"invoice_id": f.invoice_id, "tenant_id": f.tenant_id, "seller_tax_id": f.seller_tax_id,
                "number": f.blue_number, "case_no": f.case_no, "recon_seq": 0}
        if d.met:
            out.met += 1
            if f.case_no:
                w.note(f.case_no, "check", d.reason, now, trigger="schedule", result="visible")
                if f.case_own:
                    await close_case(session, w, case, "resolved", f"red invoice {f.red_number} of form "
                                     f"{f.form_no} is recorded", now, emit=False)
                    _alert(w, f, CaseResolvedAlertRaised, "resolved", now,
                           reason=f"Case {f.case_no} is resolved: {d.reason}", next_action=None)
                changes["case_no"] = None
        elif d.gap:
            assert out.gaps is not None
            out.gaps[str(changes["gap_kind"])] = out.gaps.get(str(changes["gap_kind"]), 0) + 1
            case_no = f.case_no
            if case_no is None:
                case_no = (await session.execute(select(m.cases.c.case_no).where(
                    m.cases.c.invoice_id == f.invoice_id, m.cases.c.status == "open"))).scalar_one_or_none()
                changes["case_own"] = case_no is None
                if case_no is None:
                    case_no = await new_case(session, w, case, opened_by="system", note=None, now=now,
                                             timezone=timezone, message=f"Opened automatically: {d.reason}")
                changes["case_no"] = case_no
            w.note(case_no, "gap", f"Gap ({changes['gap_kind']}): {d.reason}", now, form_id=f.form_id,
                   form_no=f.form_no, red_number=f.red_number)
            alert_id = _alert(w, f, RedInvoiceMissingAlertRaised, "red_missing", now, reason=d.reason,
                              next_action=f"{d.next_action} Case {case_no}.", case_no=case_no)
            w.note(case_no, "alert", "Red invoice missing alert raised.", now, alert_id=alert_id)
        await session.execute(update(_f).where(_f.c.form_id == f.form_id).values(**changes, updated_at=now))
    await w.flush(session)
    return out


def _alert(w: Writes, f: Any, model: Any, kind: str, now: datetime, *, reason: str, next_action: str | None,
           case_no: str | None = None) -> str:
    """One alert to the seller about the form; its id names (kind, form, case): re-sent, it is the same one."""
    alert_id = str(uuid.uuid5(ALERT_NS, f"{kind}:{f.form_id}:{case_no or f.case_no or ''}"))
    w.raw_alert(model, alert_id, subject=str(f.invoice_id), tenant=str(f.tenant_id), data=jsonable({
        "kind": kind, "tenant_id": f.tenant_id, "seller_tax_id": f.seller_tax_id, "invoice_id": f.invoice_id,
        "number": f.blue_number, "total": f.total, "reason": reason, "next_action": next_action,
        "case_no": case_no or f.case_no, "form_id": f.form_id, "role": "seller", "at": now}))
    return alert_id

