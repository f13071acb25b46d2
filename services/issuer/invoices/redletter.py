"""Red-letter credit notes (红冲): the seller asks for a confirmation form (红字发票信息确认单) on a blue invoice; the
request travels like an invoice (stored here with its event in one transaction, outbox -> Kafka -> sync ->
tax store, retried until the store answers); the sync service reports every change of the form
(`RedLetterFormUpdated`), and once the authority has issued the red invoice, it is recorded here as an invoice of
the seller's (negative amounts, `red_letter_of` the blue number) and issued like any other: the sync service
submits it (the store holds it already, or lost it: then it is stored again) and the reconciler checks it.

A blue invoice has at most one open form (requested or pending) at a time. What a form may still reverse is the
blue total less the confirmed forms; the store decides for good, this side refuses what it can see is too much.

When the buyer is a tenant here too, it sees the forms waiting for its confirmation and decides them with its own
key: the decision is a command (`RedLetterDecisionRequested`) on the same path, so an unreachable store delays
it but never loses it, and its outcome reaches both tenants as the form's next update.

Callers own the transaction; nothing here commits.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.explain import explain_form
from services.issuer.idempotency import KeyReused, Once, Replayed, at_most_once
from services.issuer.invoices.outcomes import FormAsked, FormDecided
from services.issuer.invoices.reading import get_row
from services.issuer.lifecycle import Status
from services.issuer.rules import content_hash
from services.issuer.schemas import RedLetterCreate, RedLetterFormList, RedLetterFormView, RedLetterStanding
from services.issuer.tenants import Tenant
from shared.envelope import Received, encode, new_envelope
from shared.errors import Conflict, FieldError, NotFound, ValidationFailed
from shared.events import (
    ISSUER_SOURCE,
    AlertRaised,
    FormAwaitingAlertRaised,
    FormEndedAlertRaised,
    FormExpiringAlertRaised,
    InvoiceIssued,
    RedLetterDecisionRequested,
    RedLetterFormUpdated,
    RedLetterLine,
    RedLetterRequested,
)
from shared.money import round_cents
from shared.outbox import notify_outbox

__all__ = ["FormAsked", "FormDecided", "apply_form_updates", "decide_form", "get_form", "list_forms",
           "request_red_letter", "standing"]

OPEN = frozenset({"requested", "pending"})
LIVE = frozenset({"requested", "pending", "confirmed"})
# Where the blue invoice must be: held by the authority (acknowledged, or seen there).
AT_AUTHORITY = frozenset({Status.SUBMITTED.value, Status.CONFIRMED.value})
_f = m.red_letter_forms


# --- asking ----------------------------------------------------------------------------------

async def request_red_letter(*, session: AsyncSession, tenant: Tenant, invoice_id: str, body: RedLetterCreate,
                             topic: str, once: Once | None = None) -> FormAsked | Replayed | KeyReused:
    """A form on the tenant's blue invoice, with its event. NotFound (not the tenant's), Conflict (not at the
    authority, a red invoice, a form already open, nothing left), ValidationFailed (more than is left)."""
    async def run() -> FormAsked:
        blue = await get_row(session, tenant, invoice_id, for_update=True)  # one request per invoice at a time
        if blue.red_letter_of is not None:
            raise _conflict(f"invoice {blue.number} is itself a red-letter invoice; name the blue original",
                            "red_invoice", blue)
        if blue.status == Status.RED_LETTERED.value:
            raise _conflict(f"invoice {blue.number} is red-lettered in full; nothing is left to reverse",
                            "nothing_left", blue)
        if blue.status not in AT_AUTHORITY:
            raise _conflict(f"invoice {blue.number} is '{blue.status}': only an invoice the tax authority holds "
                            "(submitted or confirmed) can be red-lettered", "not_at_authority", blue)
        forms = (await session.execute(select(_f).where(_f.c.invoice_id == blue.id))).all()
        if (open_form := next((f for f in forms if f.status in OPEN), None)) is not None:
            raise _conflict(f"invoice {blue.number} has a red-letter form open already ({open_form.status}); "
                            "wait for it to be decided", "form_open", blue, form_id=str(open_form.id))
        total = _check(blue, [f for f in forms if f.status == "confirmed"], body)
        now = datetime.now(UTC)
        form_id = uuid.uuid4()
        lines = [x.model_dump(exclude_none=True) for x in body.lines] if body.lines is not None else None
        row = (await session.execute(pg_insert(_f).values(
            id=form_id, tenant_id=tenant.id, invoice_id=blue.id, seller_tax_id=blue.seller_tax_id, number=blue.number,
            buyer_tax_id=blue.buyer_tax_id, reason_code=body.reason_code,
            scope="full" if body.lines is None else "partial", lines=lines, note=body.note, total=total,
            status="requested", created_at=now, updated_at=now).returning(*_f.c))).one()
        event = RedLetterRequested(
            form_id=form_id, invoice_id=blue.id, tenant_id=tenant.id, seller_tax_id=blue.seller_tax_id,
            number=blue.number, requested_by=tenant.tax_id, reason_code=body.reason_code,
            lines=[RedLetterLine(**x) for x in lines] if lines is not None else None, note=body.note)
        await _queue(session, topic, event, subject=blue.id, tenant_id=tenant.id)
        await _timeline(session, blue.id, "red_letter_requested",
                        f"Red-letter form asked for ({'all that is left' if lines is None else 'part'}: "
                        f"{total:.2f}, reason {body.reason_code}); on its way to the tax authority",
                        {"form_id": str(form_id)})
        return FormAsked(form_view(row, reader=tenant))

    return await at_most_once(session=session, tenant_id=tenant.id, once=once, run=run)


def _conflict(detail: str, code: str, blue: Any | None = None, **extra: Any) -> Conflict:
    """409 with a code of its own (the problem's `code`) and the invoice's status."""
    exc = Conflict(detail, extra={**({"invoice_status": blue.status} if blue is not None else {}), **extra})
    exc.code = code
    return exc


def _check(blue: Any, confirmed: Sequence[Any], body: RedLetterCreate) -> Decimal:
    """The (negative) total of the form asked for; ValidationFailed naming the line that asks too much."""
    blue_lines = blue.content.get("lines") or []
    reversed_amount: dict[int, Decimal] = {}
    for f in confirmed:
        for x in (f.store or {}).get("lines") or []:
            reversed_amount[int(x["line"])] = reversed_amount.get(int(x["line"]), Decimal(0)) - Decimal(x["amount"])
    left = blue.total + sum((f.total for f in confirmed), Decimal(0))
    if left <= 0:  # the forms confirmed already reverse all of it (the status follows when the red invoice is in)
        raise _conflict(f"invoice {blue.number} is reversed in full by forms already confirmed; nothing is left "
                        "to reverse", "nothing_left", blue)
    if body.lines is None:
        return -left
    errors: list[FieldError] = []
    total = Decimal(0)
    seen: set[int] = set()
    for k, part in enumerate(body.lines):
        p = f"lines[{k}]"
        if part.line >= len(blue_lines):
            errors.append(FieldError(f"{p}.line", f"the invoice has {len(blue_lines)} line(s); no line {part.line}"))
            continue
        if part.line in seen:
            errors.append(FieldError(f"{p}.line", f"line {part.line} is named twice"))
            continue
        seen.add(part.line)
        line = blue_lines[part.line]
        line_left = Decimal(line["amount"]) - reversed_amount.get(part.line, Decimal(0))
        amount = Decimal(part.amount)
        if -amount > line_left:
            errors.append(FieldError(f"{p}.amount", f"line {part.line} has {max(line_left, Decimal(0)):.2f} left to "
                                                    f"reverse, not {-amount:.2f}"))
            continue
        total += amount + round_cents(amount * Decimal(line["tax_rate"]))
    if errors:
        exc = ValidationFailed(errors, detail=f"more than what is left of invoice {blue.number} ({left:.2f})")
        exc.extra = {"remaining_total": f"{left:.2f}"}
        raise exc
    return max(total, -left)


# --- reading -----------------------------------------------------------------------------------

def _readable(tenant: Tenant) -> Any:
    return or_(_f.c.tenant_id == tenant.id, _f.c.buyer_tenant_id == tenant.id)


def form_view(row: Any, *, reader: Tenant, now: datetime | None = None) -> RedLetterFormView:
    """A form as `reader` (its seller or its buyer) sees it, explained."""
    store = row.store or {}
    seller = row.tenant_id == reader.id
    awaiting = store.get("awaiting_confirmation_from") if row.status == "pending" else None
    red = store.get("red_invoice") or {}
    reason, next_action, next_action_at = explain_form(
        status=row.status, form_no=row.form_no, expires_at=row.expires_at, awaiting=awaiting,
        reader_tax_id=reader.tax_id, red_number=red.get("number"), error=row.error, decision=row.decision,
        now=now or datetime.now(UTC))
    return RedLetterFormView(
        id=row.id, form_no=row.form_no, status=row.status, role="seller" if seller else "buyer",
        invoice_id=row.invoice_id if seller else None, seller_tax_id=row.seller_tax_id, number=row.number,
        buyer_tax_id=row.buyer_tax_id, reason_code=row.reason_code, scope=row.scope,
        lines=store.get("lines", row.lines), total=f"{row.total:.2f}", awaiting_confirmation_from=awaiting,
        expires_at=row.expires_at, red_invoice_id=row.red_invoice_id if seller else None,
        red_invoice_number=red.get("number"), decision=row.decision, error=row.error, reason=reason,
        next_action=next_action, next_action_at=next_action_at, created_at=row.created_at, updated_at=row.updated_at)


async def get_form(*, session: AsyncSession, tenant: Tenant, form_id: str) -> RedLetterFormView:
    return form_view(await _form_row(session, tenant, form_id), reader=tenant)


async def _form_row(session: AsyncSession, tenant: Tenant, form_id: str, *, for_update: bool = False) -> Any:
    try:
        fid = uuid.UUID(form_id)
    except ValueError:
        raise NotFound(f"no red-letter form {form_id}") from None
    stmt = select(_f).where(_f.c.id == fid, _readable(tenant))
    row = (await session.execute(stmt.with_for_update() if for_update else stmt)).first()
    if row is None:  # another tenant's form is indistinguishable from none at all
        raise NotFound(f"no red-letter form {form_id}")
    return row


async def list_forms(*, session: AsyncSession, tenant: Tenant, role: str | None, status: str | None,
                     awaiting: bool, invoice_id: uuid.UUID | None, cursor: str | None,
                     limit: int) -> RedLetterFormList:
    """The forms the tenant is a party to (as seller, or as the buyer), newest first."""
    conds: list[Any] = [_readable(tenant)]
    if role == "seller":
        conds.append(_f.c.tenant_id == tenant.id)
    elif role == "buyer":
        conds.append(_f.c.buyer_tenant_id == tenant.id)
    if awaiting:  # pending and the store waits for this tenant's decision
        conds += [_f.c.status == "pending",
                  _f.c.store["awaiting_confirmation_from"].astext == tenant.tax_id]
    if status is not None:
        conds.append(_f.c.status == status)
    if invoice_id is not None:
        conds.append(and_(_f.c.invoice_id == invoice_id, _f.c.tenant_id == tenant.id))
    if cursor is not None:
        try:
            conds.append(_f.c.seq < int(base64.urlsafe_b64decode(cursor.encode()).decode()))
        except (ValueError, UnicodeDecodeError):
            raise ValidationFailed([FieldError("cursor", "is not a cursor this list gave")]) from None
    rows = (await session.execute(select(_f).where(*conds).order_by(_f.c.seq.desc()).limit(limit + 1))).all()
    page = rows[:limit]
    nxt = base64.urlsafe_b64encode(str(page[-1].seq).encode()).decode() if len(rows) > limit else None
    now = datetime.now(UTC)
    return RedLetterFormList(items=[form_view(r, reader=tenant, now=now) for r in page], next_cursor=nxt)


async def standing(*, session: AsyncSession, row: Any) -> RedLetterStanding | None:
    """What red letters did to this invoice (None: nothing, and it is no red invoice)."""
    forms = (await session.execute(select(_f).where(_f.c.invoice_id == row.id).order_by(_f.c.seq))).all()
    if not forms and row.red_letter_of is None:
        return None
    reversed_total = -sum((f.total for f in forms if f.status == "confirmed"), Decimal(0))
    return RedLetterStanding(
        red_letter_of=row.red_letter_of, red_lettered_total=f"{reversed_total:.2f}",
        remaining_total=f"{max(row.total - reversed_total, Decimal(0)) if row.red_letter_of is None else 0:.2f}",
        forms=[{"id": str(f.id), "form_no": f.form_no, "status": f.status, "total": f"{f.total:.2f}",
                "red_invoice_id": str(f.red_invoice_id) if f.red_invoice_id else None} for f in forms])


# --- the buyer decides -------------------------------------------------------------------------

async def decide_form(*, session: AsyncSession, tenant: Tenant, form_id: str, confirm: bool, note: str | None,
                      topic: str) -> FormDecided:
    """The buyer tenant confirms or rejects a pending form waiting for it: the decision's command, queued."""
    row = await _form_row(session, tenant, form_id, for_update=True)
    awaiting = (row.store or {}).get("awaiting_confirmation_from")
    wanted = "confirm" if confirm else "reject"
    if row.decision is not None:
        if row.decision.get("decision") == wanted:
            return FormDecided(form_view(row, reader=tenant), False)
        raise _conflict(f"form {row.form_no} was asked to {row.decision.get('decision')} already",
                        "form_decided", form_status=row.status)
    if row.status != "pending":
        raise _conflict(f"form {row.form_no or row.id} is {row.status}; it cannot be {wanted}ed now",
                        f"form_{row.status}", form_status=row.status)
    if awaiting != tenant.tax_id:
        raise _conflict(f"form {row.form_no} waits for {awaiting}, not for this tenant: only the counterparty "
                        "confirms or rejects it", "own_form", form_status=row.status)
    decision_id = uuid.uuid4()
    decision = {"id": str(decision_id), "decision": wanted, "by": tenant.tax_id,
                "at": datetime.now(UTC).isoformat(), "note": note}
    saved = (await session.execute(update(_f).where(_f.c.id == row.id).values(
        decision=decision, updated_at=datetime.now(UTC)).returning(*_f.c))).one()
    event = RedLetterDecisionRequested(decision_id=decision_id, form_id=row.id, form_no=row.form_no,
                                       invoice_id=row.invoice_id, by=tenant.tax_id, confirm=confirm, note=note)
    await _queue(session, topic, event, subject=row.invoice_id, tenant_id=row.tenant_id)
    return FormDecided(form_view(saved, reader=tenant), True)


# --- the sync service's word on forms ----------------------------------------------------------

async def apply_form_updates(*, session: AsyncSession, events: Sequence[Received[RedLetterFormUpdated]],
                             topic: str, alerts_topic: str | None = None,
                             expiry_warning: float | None = None) -> int:
    """Record what the store said of each form (a late or redelivered update is skipped by its sequence); a
    confirmed form's red invoice becomes an invoice here, issued like any; a blue invoice reversed in full
    becomes red_lettered. In the caller's (all-tenants) transaction. Returns how many were applied."""
    applied = 0
    for r in sorted(events, key=lambda r: (str(r.event.form_id), r.envelope.sequence)):
        e = r.event
        row = (await session.execute(select(_f).where(_f.c.id == e.form_id).with_for_update())).first()
        if row is None or r.envelope.sequence <= row.sync_seq:
            continue
        if row.status not in OPEN and e.status in OPEN:
            continue  # a final word stays
        form = e.form or {}
        values: dict[str, Any] = {"sync_seq": r.envelope.sequence, "status": e.status, "updated_at": datetime.now(UTC)}
        if e.form is not None:
            values.update(store=form, form_no=e.form_no, total=Decimal(str(form.get("total", row.total))),
                          expires_at=_time(form.get("expires_at")))
        if e.status == "failed":
            values["error"] = e.error or "refused by the tax authority"
        if row.decision is not None and e.status in ("confirmed", "rejected", "voided"):
            values["decision"] = {**row.decision, "outcome": e.status}
        if row.buyer_tenant_id is None and row.buyer_tax_id:
            values["buyer_tenant_id"] = (await session.execute(
                select(m.tenants.c.id).where(m.tenants.c.tax_id == row.buyer_tax_id))).scalar_one_or_none()
        red = form.get("red_invoice")
        if e.status == "confirmed" and red and row.red_invoice_id is None:
            values["red_invoice_id"] = await _issue_red(session, row, red, topic)
        await session.execute(update(_f).where(_f.c.id == row.id).values(**values))
        await _timeline(session, row.invoice_id, f"red_letter_{e.status}", _form_message(e, form),
                        {"form_id": str(row.id), "form_no": e.form_no, "event_id": r.envelope.id})
        if e.status == "confirmed":
            await _settle_blue(session, row.invoice_id)
        if alerts_topic is not None and e.status != row.status:
            await _alert(session, alerts_topic, row, e, form, values.get("buyer_tenant_id") or row.buyer_tenant_id)
        applied += 1
    if alerts_topic is not None and expiry_warning is not None and applied:
        await alert_expiring(session=session, topic=alerts_topic, warning=expiry_warning)
    return applied


async def alert_expiring(*, session: AsyncSession, topic: str, warning: float) -> int:
    """"Expires in N hours": one alert for each pending form void within `warning` seconds that has not had it
    (to the buyer tenant that must decide it, or else to the seller). In the caller's all-tenants transaction."""
    now = datetime.now(UTC)
    rows = (await session.execute(select(_f).where(
        _f.c.status == "pending", _f.c.expiry_alerted_at.is_(None), _f.c.expires_at > now,
        _f.c.expires_at <= now + timedelta(seconds=warning)).order_by(_f.c.expires_at).limit(500)
        .with_for_update(skip_locked=True))).all()
    for row in rows:
        awaiting = (row.store or {}).get("awaiting_confirmation_from")
        to_buyer = row.buyer_tenant_id is not None and awaiting == row.buyer_tax_id
        hours = (row.expires_at - now).total_seconds() / 3600
        left = f"{hours:.0f} hours" if hours >= 1.5 else f"{max(hours * 60, 0):.0f} minutes"
        who = "your confirmation" if to_buyer else f"the confirmation of {awaiting}"
        await _send_alert(
            session, topic, FormExpiringAlertRaised, "form_expiring", row,
            tenant_id=row.buyer_tenant_id if to_buyer else row.tenant_id, total=f"{row.total:.2f}",
            reason=f"Red-letter form {row.form_no} on invoice {row.number} is void in {left} "
                   f"({row.expires_at.isoformat()}) unless confirmed; it waits for {who}.",
            next_action="Confirm or reject it now." if to_buyer else "Ask the buyer to confirm it, or let it lapse.")
        await session.execute(update(_f).where(_f.c.id == row.id).values(expiry_alerted_at=now))
    return len(rows)


_ALERT_NS = uuid.UUID("3b9e2c1a-7d4f-4e8b-9c21-5a6f0d2e8b47")


async def _alert(session: AsyncSession, topic: str, row: Any, e: RedLetterFormUpdated, form: dict[str, Any],
                 buyer_tenant_id: uuid.UUID | None) -> None:
    """One alert per transition that asks someone to act or tells them nothing was reversed: a form waiting for a
    buyer tenant (to it), a form rejected or void (to the seller). The id names the transition."""
    no = e.form_no or "(no number)"
    if e.status == "pending" and buyer_tenant_id is not None:
        model: type[AlertRaised] = FormAwaitingAlertRaised
        kind, tenant_id = "form_awaiting", buyer_tenant_id
        reason = (f"Red-letter form {no}: seller {row.seller_tax_id} asks to reverse {form.get('total')} of invoice "
                  f"{row.number}; it waits for your confirmation until {form.get('expires_at')}.")
        next_action = (f"Confirm or reject it (POST /v1/red-letter-forms/{row.id}/confirm or /reject) before it "
                       "is void.")
    elif e.status in ("rejected", "voided"):
        model, kind, tenant_id = FormEndedAlertRaised, f"form_{e.status}", row.tenant_id
        why = "was rejected by the buyer" if e.status == "rejected" else "is void: nobody confirmed it in time"
        reason = f"Red-letter form {no} on invoice {row.number} {why}; nothing was reversed."
        next_action = "Agree with the buyer, then ask for a new form if the invoice still needs reversing."
    else:
        return
    await _send_alert(session, topic, model, kind, row, tenant_id=tenant_id, total=form.get("total"),
                      reason=reason, next_action=next_action)


async def _send_alert(session: AsyncSession, topic: str, model: type[AlertRaised], kind: str, row: Any, *,
                      tenant_id: uuid.UUID, total: str | None, reason: str, next_action: str) -> None:
    """One form alert. `role` says which party it goes to: the notifier links a buyer to the form only (the
    invoice is the seller's, which the buyer cannot open), the seller to the form and its invoice."""
    alert_id = str(uuid.uuid5(_ALERT_NS, f"{kind}:{row.id}"))
    alert = model(alert_id=alert_id, kind=kind, tenant_id=tenant_id, seller_tax_id=row.seller_tax_id,
                  invoice_id=row.invoice_id, number=row.number, total=total, form_id=row.id,
                  role="seller" if tenant_id == row.tenant_id else "buyer",
                  buyer_tax_id=row.buyer_tax_id, reason=reason, next_action=next_action, at=datetime.now(UTC))
    await _queue(session, topic, alert, subject=row.invoice_id, tenant_id=tenant_id, event_id=alert_id)


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _form_message(e: RedLetterFormUpdated, form: dict[str, Any]) -> str:
    no = e.form_no or "(no number)"
    match e.status:
        case "pending":
            return (f"Red-letter form {no} made by the tax authority; waiting for "
                    f"{form.get('awaiting_confirmation_from')} to confirm it until {form.get('expires_at')}")
        case "confirmed":
            red = (form.get("red_invoice") or {}).get("number")
            return f"Red-letter form {no} confirmed; the tax authority issued red invoice {red} ({form.get('total')})"
        case "rejected":
            return f"Red-letter form {no} rejected by {form.get('decided_by')}; nothing was reversed"
        case "voided":
            return f"Red-letter form {no} void: nobody confirmed it by {form.get('expires_at')}; nothing was reversed"
    return f"Red-letter form refused by the tax authority: {e.error}"


async def _issue_red(session: AsyncSession, form: Any, red: dict[str, Any], topic: str) -> uuid.UUID:
    """The authority's red invoice as an invoice of the seller's, with its issued event (sync submits it: the
    store holds it, or stores it again; the reconciler checks it like any)."""
    doc = red["content"]
    buyer = doc.get("buyer") or {}
    now = datetime.now(UTC)
    digest = content_hash(doc)
    row = (await session.execute(pg_insert(m.invoices).values(
        id=uuid.uuid4(), tenant_id=form.tenant_id, seller_tax_id=form.seller_tax_id, number=red["number"],
        kind=doc["kind"], issue_date=datetime.fromisoformat(doc["issue_date"]).date(),
        buyer_tax_id=buyer.get("tax_id") or None, buyer_name=buyer.get("name", ""),
        total_amount=Decimal(doc["total_amount"]), total_tax=Decimal(doc["total_tax"]), total=Decimal(doc["total"]),
        currency=doc.get("currency", "CNY"), content=doc, content_hash=digest, source="red_letter",
        status=Status.ACCEPTED.value, event_seq=1, accepted_at=now, updated_at=now, status_since=now,
        red_letter_of=form.number,
    ).on_conflict_do_nothing(index_elements=["seller_tax_id", "number"]).returning(m.invoices.c.id))).first()
    if row is None:  # recorded already (the number is the authority's own: nobody else uses it)
        return (await session.execute(select(m.invoices.c.id).where(
            m.invoices.c.seller_tax_id == form.seller_tax_id, m.invoices.c.number == red["number"]))).scalar_one()
    event = InvoiceIssued(invoice_id=row.id, tenant_id=form.tenant_id, seller_tax_id=form.seller_tax_id,
                          number=red["number"], content_hash=digest, accepted_at=now, invoice=doc,
                          red_letter_of=form.number)
    event_id = await _queue(session, topic, event, subject=row.id, tenant_id=form.tenant_id)
    await _timeline(session, row.id, "accepted",
                    f"Issued by the tax authority for red-letter form {form.form_no or ''} on invoice {form.number}; "
                    f"event {event_id} queued for {topic}", {"event_id": event_id, "content_hash": digest})
    return row.id


async def _settle_blue(session: AsyncSession, invoice_id: uuid.UUID) -> None:
    """A blue invoice its confirmed forms reverse in full is red_lettered (final); otherwise it keeps its status
    and shows what is left (`standing`)."""
    blue = (await session.execute(select(m.invoices).where(m.invoices.c.id == invoice_id).with_for_update())).one()
    confirmed = (await session.execute(select(_f.c.total, _f.c.form_no).where(
        _f.c.invoice_id == invoice_id, _f.c.status == "confirmed"))).all()
    left = blue.total + sum((f.total for f in confirmed), Decimal(0))
    if left > 0 or blue.status == Status.RED_LETTERED.value:
        return
    now = datetime.now(UTC)
    forms = ", ".join(f.form_no for f in confirmed if f.form_no)
    await session.execute(update(m.invoices).where(m.invoices.c.id == invoice_id).values(
        status=Status.RED_LETTERED.value, reason=f"Cancelled in full by red-letter credit note(s) (form {forms}).",
        next_action=None, next_action_at=None, reason_source=None, updated_at=now, status_since=now))


async def _queue(session: AsyncSession, topic: str, event: Any, *, subject: uuid.UUID, tenant_id: uuid.UUID,
                 event_id: str | None = None) -> str:
    """`event` into the outbox (keyed by `subject`), the relay woken at commit; the envelope's id."""
    envelope = new_envelope(source=ISSUER_SOURCE, event=event, subject=str(subject), tenant=str(tenant_id),
                            sequence=1, id=event_id)
    await session.execute(m.outbox.insert().values(topic=topic, key=str(subject), event_id=envelope.id,
                                                   event_type=envelope.type, payload=encode(envelope)))
    await notify_outbox(session, m.outbox)
    return envelope.id


async def _timeline(session: AsyncSession, invoice_id: uuid.UUID, kind: str, message: str,
                    detail: dict[str, Any]) -> None:
    await session.execute(m.timeline.insert().values(invoice_id=invoice_id, kind=kind, message=message,
                                                     detail=detail, at=datetime.now(UTC)))
