"""Red-letter confirmation forms (红字发票信息确认单) and the red invoices the authority issues for them.

A form is asked for by the blue invoice's seller or its buyer, with a reason code, for all that is left of
the invoice or for parts of its lines. A form needs the counterparty's confirmation when the buyer asked for
it (the seller issues the red invoice, so it must agree) or when the buyer has already used the invoice
(policy.py's seeded coin); otherwise, or once confirmed, the authority issues the red invoice at once: negative
amounts, `red_letter_of` the blue number, a number of the authority's own. A pending form that nobody decides
within the confirmation window is void. Live forms (pending within the window, or confirmed) hold their amount:
what a new form may reverse is the blue total less every live form and every red invoice stored without one.

Creating is idempotent on the requester's `request_id`, as a submission is on seller + number: the same id with
the same request answers the form made the first time (200), with another request 409. Confirming a confirmed
form or rejecting a rejected one answers the form again, so a client may retry any call after a timeout.

Callers own the transaction; nothing here commits. The blue invoice's row is locked first, then the form's, in
every use case, so two requests about one invoice are decided one after the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.taxstore import models as m
from services.taxstore import rules
from services.taxstore.faults import ItemFaults
from services.taxstore.policy import Policy
from services.taxstore.service import (
    AUTHORITY_TZ,
    FORM_LIVE,
    REVIEW_NOW,
    Incoming,
    Rejected,
    StateConflict,
    insert_invoices,
    next_receipts,
)
from shared.content import content_hash
from shared.contracts.taxstore import REASON_CODES, FormCreate
from shared.errors import FieldError, NotFound, ValidationFailed
from shared.money import TOLERANCE, round_cents

__all__ = ["FORM_STATUS_NOW", "FormOutcome", "create_form", "decide_form", "get_form", "list_forms"]

_f = m.red_letter_forms
_inv = m.invoices
_EXPIRED = and_(_f.c.status == "pending", _f.c.expires_at <= func.now())
FORM_STATUS_NOW = case((_EXPIRED, "voided"), else_=_f.c.status)
"""A form's status now: a pending form past its window is void (the store has no background work)."""


@dataclass(frozen=True)
class FormOutcome:
    status: int  # 201 made, 200 answered again (or decided now, for confirm and reject)
    form: dict[str, Any]
    changed: bool  # whether this request changed anything
    red: str | None = None  # issued | dropped, when this request issued the red invoice
    corrupted: bool = False


def _no_invoice(seller_tax_id: str, number: str) -> NotFound:
    return NotFound(f"the tax authority has no invoice {number} of seller {seller_tax_id}")


def _no_form(form_no: str) -> NotFound:
    return NotFound(f"the tax authority has no red-letter form {form_no}")


# --- creating ---------------------------------------------------------------------------------

def request_hash(body: FormCreate) -> str:
    """The request's fingerprint, whatever its key order or how it spells an absent field."""
    return content_hash(body.model_dump(mode="json", exclude_none=True))


async def create_form(*, session: AsyncSession, body: FormCreate, policy: Policy, faults: ItemFaults,
                      visibility_delay_ms: int) -> FormOutcome:
    """Make a form on a blue invoice (issuing its red invoice when no confirmation is needed), or answer the
    form an earlier request with the same `request_id` made."""
    digest = request_hash(body)
    if (earlier := await _replay(session, body, digest)) is not None:
        return earlier
    seller, number = body.invoice.seller_tax_id, body.invoice.number
    blue = (await session.execute(
        select(_inv.c.seller_tax_id, _inv.c.number, _inv.c.kind, _inv.c.buyer_tax_id, _inv.c.total, _inv.c.content,
               REVIEW_NOW.label("review_now"))
        .where(_inv.c.seller_tax_id == seller, _inv.c.number == number, _inv.c.visible_at <= func.now())
        .with_for_update(of=_inv)
    )).first()
    if blue is None or body.requested_by not in (blue.seller_tax_id, blue.buyer_tax_id):
        raise _no_invoice(seller, number)  # a stranger learns nothing of the invoice either
    if (earlier := await _replay(session, body, digest)) is not None:  # a twin request got the lock first
        return earlier
    if blue.kind != "blue":
        raise ValidationFailed([FieldError("invoice.number", "is a red-letter invoice; name the blue original")])
    if blue.review_now == "under_review":
        raise StateConflict(f"invoice {number} is held for cross-region review; ask again once it is approved",
                           code="invoice_under_review")
    if blue.review_now == "denied":
        raise StateConflict(f"invoice {number} was denied in cross-region review and does not count",
                           code="invoice_voided")

    left, reversed_lines = await _what_is_left(session, seller, number, blue.total)
    lines = _red_lines(blue.content["lines"], reversed_lines, body)
    total_amount = sum((Decimal(x["amount"]) for x in lines), Decimal(0))
    total_tax = sum((Decimal(x["tax_amount"]) for x in lines), Decimal(0))
    total = total_amount + total_tax
    if -total > left:
        where = "lines" if body.lines is not None else "invoice"
        exc = ValidationFailed([FieldError(where, f"would reverse {-total:.2f} of invoice {number}; "
                                                  f"{left:.2f} of its {blue.total:.2f} is left")],
                               detail=f"more than what is left of invoice {number} ({left:.2f})")
        exc.extra = {"remaining_total": f"{left:.2f}"}
        raise exc

    role = "seller" if body.requested_by == blue.seller_tax_id else "buyer"
    needs = role == "buyer" or (blue.buyer_tax_id is not None and policy.buyer_has_used(seller, number))
    [form_no] = await _next_form_numbers(session)
    content = blue.content
    template = {
        "kind": content["kind"], "seller": content["seller"], "buyer": content["buyer"],
        "lines": [{k: v for k, v in x.items() if k != "line"} for x in lines],
        "total_amount": f"{total_amount:.2f}", "total_tax": f"{total_tax:.2f}", "total": f"{total:.2f}",
        "currency": content.get("currency", "CNY"),
    }
    probe = rules.parse_submission({"invoice": _red_doc(template, seq=0, form_no=form_no, blue_number=number,
                                                        reason_code=body.reason_code), "red_letter_of": number})
    if isinstance(probe, list):  # e.g. a discount too small to carry any tax where the rate says it must
        raise ValidationFailed([FieldError("lines", f"the red invoice would break a rule: {r.path}: {r.message}")
                                for r in probe], detail="the red invoice this form would issue breaks the rules")
    row = (await session.execute(
        pg_insert(_f).values(
            form_no=form_no, seller_tax_id=seller, blue_number=number, buyer_tax_id=blue.buyer_tax_id,
            requested_by=body.requested_by, requested_role=role, request_id=body.request_id, request_hash=digest,
            reason_code=body.reason_code, scope="full" if body.lines is None else "partial", lines=lines,
            template=template, total_amount=total_amount, total_tax=total_tax, total=total,
            confirmation_required=needs, status="pending" if needs else "confirmed", note=body.note,
            expires_at=func.now() + policy.confirm_window if needs else None,
            decided_at=None if needs else func.now(),
        ).on_conflict_do_nothing(index_elements=["requested_by", "request_id"]).returning(_f.c.form_no)
    )).first()
    if row is None:  # made by a concurrent twin between our look and our write
        earlier = await _replay(session, body, digest)
        assert earlier is not None
        return earlier
    red, corrupted = (None, False) if needs else await _issue_red(session, form_no, faults, visibility_delay_ms)
    return FormOutcome(201, await get_form(session=session, form_no=form_no), True, red, corrupted)


async def _replay(session: AsyncSession, body: FormCreate, digest: str) -> FormOutcome | None:
    row = (await session.execute(
        select(_f.c.form_no, _f.c.request_hash)
        .where(_f.c.requested_by == body.requested_by, _f.c.request_id == body.request_id)
    )).first()
    if row is None:
        return None
    if row.request_hash != digest:
        raise StateConflict(f"request {body.request_id} of {body.requested_by} already made form {row.form_no} "
                           "from another request; use a new request_id", code="request_conflict",
                           extra={"form_no": row.form_no})
    return FormOutcome(200, await get_form(session=session, form_no=row.form_no), False)


async def _what_is_left(session: AsyncSession, seller: str, number: str,
                        blue_total: Decimal) -> tuple[Decimal, dict[int, tuple[Decimal, Decimal]]]:
    """The total a new form may still reverse, and per line (by index) the amount and tax live forms reverse."""
    forms = (await session.execute(
        select(_f.c.lines, _f.c.total, _f.c.red_number)
        .where(_f.c.seller_tax_id == seller, _f.c.blue_number == number, FORM_LIVE)
    )).all()
    from_forms = {f.red_number for f in forms if f.red_number}
    reds = (await session.execute(
        select(_inv.c.number, _inv.c.total).where(_inv.c.seller_tax_id == seller, _inv.c.red_letter_of == number)
    )).all()
    held = sum((-f.total for f in forms), Decimal(0)) + sum((-r.total for r in reds if r.number not in from_forms),
                                                              Decimal(0))
    per_line: dict[int, tuple[Decimal, Decimal]] = {}
    for f in forms:
        for x in f.lines:
            amount, tax = per_line.get(x["line"], (Decimal(0), Decimal(0)))
            per_line[x["line"]] = (amount - Decimal(x["amount"]), tax - Decimal(x["tax_amount"]))
    return max(blue_total - held, Decimal(0)), per_line


def _red_lines(blue_lines: list[dict[str, Any]], reversed_lines: dict[int, tuple[Decimal, Decimal]],
               body: FormCreate) -> list[dict[str, Any]]:
    """The red invoice's lines (negative), each with the index of the blue line it reverses; 422 for a part that
    names no line of the invoice or more than is left of its line."""
    def left_of(i: int) -> tuple[Decimal, Decimal]:
        amount, tax = reversed_lines.get(i, (Decimal(0), Decimal(0)))
        return Decimal(blue_lines[i]["amount"]) - amount, Decimal(blue_lines[i]["tax_amount"]) - tax

    out: list[dict[str, Any]] = []
    if body.lines is None:
        for i, blue in enumerate(blue_lines):
            amount_left, tax_left = left_of(i)
            if amount_left <= 0:
                continue
            untouched = i not in reversed_lines
            out.append(_line(i, blue, amount=-amount_left, tax=_tax(-amount_left, amount_left, tax_left, blue),
                             quantity=f"-{blue['quantity']}" if untouched else None))
        if not out:
            raise ValidationFailed([FieldError("invoice", "nothing is left to reverse on this invoice")])
        return out

    errors: list[FieldError] = []
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
        blue = blue_lines[part.line]
        amount = Decimal(part.amount)
        amount_left, tax_left = left_of(part.line)
        if -amount > amount_left:
            errors.append(FieldError(f"{p}.amount", f"line {part.line} has {max(amount_left, Decimal(0)):.2f} left "
                                                    f"to reverse, not {-amount:.2f}"))
            continue
        if part.quantity is not None:
            expected = round_cents(Decimal(part.quantity) * Decimal(blue["unit_price"]))
            if abs(expected - amount) > TOLERANCE:
                errors.append(FieldError(f"{p}.amount", f"must equal quantity x unit_price = {expected:.2f}"))
                continue
        out.append(_line(part.line, blue, amount=amount, tax=_tax(amount, amount_left, tax_left, blue),
                         quantity=part.quantity))
    if errors:
        raise ValidationFailed(errors)
    return out


def _tax(amount: Decimal, amount_left: Decimal, tax_left: Decimal, blue: dict[str, Any]) -> Decimal:
    """The (negative) tax of a red line: amount x rate, except that the part that ends a line takes the tax
    left on it (so the parts' tax adds up to the line's) when that is within the rounding tolerance."""
    rated = round_cents(amount * Decimal(blue["tax_rate"]))
    if -amount == amount_left and abs(-tax_left - rated) <= TOLERANCE and tax_left >= 0:
        return -tax_left
    return rated


def _line(i: int, blue: dict[str, Any], *, amount: Decimal, tax: Decimal, quantity: str | None) -> dict[str, Any]:
    """One red line. Without a quantity (a discount, or what is left of a line), it is one unit of the amount."""
    if quantity is None:
        quantity, unit_price = "-1", f"{-amount:.2f}"
    else:
        unit_price = blue["unit_price"]
    return {"line": i, "description": blue["description"], "tax_code": blue["tax_code"], "quantity": quantity,
            "unit_price": unit_price, "amount": f"{amount:.2f}", "tax_rate": blue["tax_rate"],
            "tax_amount": f"{tax:.2f}"}


async def _next_form_numbers(session: AsyncSession, n: int = 1) -> list[str]:
    seqs = (await session.execute(
        select(m.form_seq.next_value()).select_from(func.generate_series(1, n)))).scalars().all()
    day = datetime.now(AUTHORITY_TZ).strftime("%Y%m%d")
    return [f"HZ{day}{seq:010d}" for seq in seqs]


def _red_doc(template: dict[str, Any], *, seq: int, form_no: str, blue_number: str,
             reason_code: str) -> dict[str, Any]:
    """The red invoice's document, issued today (the authority's calendar) under the authority's number `seq`."""
    today = datetime.now(AUTHORITY_TZ).date()
    reason = REASON_CODES[reason_code]
    remarks = f"红字发票信息确认单 {form_no}; 对应蓝字发票 {blue_number}; 原因 {reason_code} {reason}"
    return {"number": f"{today.year % 100:02d}{seq:018d}", "issue_date": today.isoformat(), **template,
            "remarks": remarks}


async def _issue_red(session: AsyncSession, form_no: str, faults: ItemFaults,
                     visibility_delay_ms: int) -> tuple[str, bool]:
    """Issue the confirmed form's red invoice (the drop and corrupt faults apply as to a submission); return
    issued or dropped, and whether the stored copy was corrupted."""
    form = (await session.execute(select(_f).where(_f.c.form_no == form_no))).one()
    seq = (await session.execute(select(m.red_number_seq.next_value()))).scalar_one()
    doc = _red_doc(form.template, seq=seq, form_no=form_no, blue_number=form.blue_number,
                   reason_code=form.reason_code)
    number = doc["number"]
    parsed = rules.parse_submission({"invoice": doc, "red_letter_of": form.blue_number})
    if isinstance(parsed, list):  # built to pass; if it does not, say so rather than store a bad invoice
        raise Rejected(f"the red invoice of form {form_no} fails the authority's rules: {parsed[0].message}",
                       extra={"reason_code": parsed[0].code, "reasons": [r.as_dict() for r in parsed]})
    [receipt_no] = await next_receipts(session, 1)
    corrupted = False
    if not faults.drop:
        inserted = await insert_invoices(session, [(Incoming(0, None, faults), parsed, receipt_no)],
                                         visibility_delay_ms)
        corrupted = inserted[parsed.key].content_hash != parsed.digest
    await session.execute(update(_f).where(_f.c.form_no == form_no).values(
        status="confirmed", red_number=number, red_receipt_no=receipt_no, red_content=doc, red_issued_at=func.now()))
    return ("dropped" if faults.drop else "issued"), corrupted


# --- deciding ---------------------------------------------------------------------------------

async def decide_form(*, session: AsyncSession, form_no: str, by: str, confirm: bool, note: str | None,
                      faults: ItemFaults, visibility_delay_ms: int) -> FormOutcome:
    """The counterparty confirms (the red invoice is issued) or rejects a pending form. Deciding it the same way
    again answers the form; the other way, or a void form, is 409; the requester deciding its own form is 409."""
    head = (await session.execute(
        select(_f.c.seller_tax_id, _f.c.blue_number, _f.c.buyer_tax_id).where(_f.c.form_no == form_no))).first()
    if head is None or by not in (head.seller_tax_id, head.buyer_tax_id):
        raise _no_form(form_no)
    await session.execute(select(_inv.c.number).where(  # lock order: the blue invoice, then the form
        _inv.c.seller_tax_id == head.seller_tax_id, _inv.c.number == head.blue_number).with_for_update())
    form = (await session.execute(
        select(_f.c.requested_by, _f.c.status, FORM_STATUS_NOW.label("status_now"))
        .where(_f.c.form_no == form_no).with_for_update(of=_f))).one()
    if by == form.requested_by:
        raise StateConflict(f"form {form_no} was asked for by {by}; only the counterparty confirms or rejects it",
                           code="own_form")
    wanted = "confirmed" if confirm else "rejected"
    if form.status_now == wanted:
        return FormOutcome(200, await get_form(session=session, form_no=form_no), False)
    if form.status_now != "pending":
        raise StateConflict(f"form {form_no} is {form.status_now}; it cannot be {wanted} now",
                           code=f"form_{form.status_now}")
    await session.execute(update(_f).where(_f.c.form_no == form_no).values(
        status=wanted, decided_at=func.now(), decided_by=by, note=note if note is not None else _f.c.note))
    red, corrupted = await _issue_red(session, form_no, faults, visibility_delay_ms) if confirm else (None, False)
    return FormOutcome(200, await get_form(session=session, form_no=form_no), True, red, corrupted)


# --- reading ----------------------------------------------------------------------------------

async def get_form(*, session: AsyncSession, form_no: str, party_tax_id: str | None = None) -> dict[str, Any]:
    """The form; NotFound as well when `party_tax_id` (if given) is neither its seller nor its buyer."""
    row = (await session.execute(
        select(_f, FORM_STATUS_NOW.label("status_now")).where(_f.c.form_no == form_no))).first()
    if row is None or (party_tax_id is not None and party_tax_id not in (row.seller_tax_id, row.buyer_tax_id)):
        raise _no_form(form_no)
    return _view(row)


async def list_forms(*, session: AsyncSession, party_tax_id: str, role: str | None, status: str | None,
                     awaiting: bool, blue_number: str | None, after: str | None, limit: int) -> dict[str, Any]:
    """Forms `party_tax_id` is a party to, oldest first; `awaiting`: only pending ones it is to decide."""
    conds = []
    if role == "seller":
        conds.append(_f.c.seller_tax_id == party_tax_id)
    elif role == "buyer":
        conds.append(_f.c.buyer_tax_id == party_tax_id)
    else:
        conds.append((_f.c.seller_tax_id == party_tax_id) | (_f.c.buyer_tax_id == party_tax_id))
    if awaiting:
        conds += [FORM_STATUS_NOW == "pending", _f.c.requested_by != party_tax_id]
    if status is not None:
        conds.append(FORM_STATUS_NOW == status)
    if blue_number is not None:
        conds.append(_f.c.blue_number == blue_number)
    if after is not None:
        conds.append(_f.c.form_no > after)
    rows = (await session.execute(
        select(_f, FORM_STATUS_NOW.label("status_now")).where(*conds).order_by(_f.c.form_no).limit(limit + 1)
    )).all()
    page = rows[:limit]
    return {"items": [_view(r) for r in page], "next_cursor": page[-1].form_no if len(rows) > limit else None}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _view(row: Any) -> dict[str, Any]:
    counterparty = row.buyer_tax_id if row.requested_role == "seller" else row.seller_tax_id
    status = row.status_now
    red = None
    if row.red_number is not None:
        red = {"number": row.red_number, "receipt_no": row.red_receipt_no, "issued_at": _iso(row.red_issued_at),
               "content": row.red_content}
    return {
        "form_no": row.form_no, "status": status,
        "invoice": {"seller_tax_id": row.seller_tax_id, "number": row.blue_number},
        "buyer_tax_id": row.buyer_tax_id, "requested_by": row.requested_by, "requested_role": row.requested_role,
        "counterparty_tax_id": counterparty, "request_id": row.request_id,
        "reason_code": row.reason_code, "reason_text": REASON_CODES[row.reason_code], "scope": row.scope,
        "lines": row.lines, "total_amount": f"{row.total_amount:.2f}", "total_tax": f"{row.total_tax:.2f}",
        "total": f"{row.total:.2f}", "confirmation_required": row.confirmation_required,
        "awaiting_confirmation_from": counterparty if status == "pending" else None,
        "created_at": _iso(row.created_at), "expires_at": _iso(row.expires_at),
        "decided_at": _iso(row.expires_at if status == "voided" else row.decided_at),
        "decided_by": row.decided_by, "note": row.note, "red_invoice": red,
    }
