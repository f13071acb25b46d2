"""The tax store's use cases: what the authority does with a submission, a read, and the admin's
interventions. Fault *decisions* come in from faults.py; what a decision means for the data
(a drop stores nothing, a corruption stores a changed total) happens here.

Callers own the transaction (`async with transaction(sessions) as session:`); nothing here commits.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ARRAY,
    Float,
    Text,
    and_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.taxstore import models as m
from services.taxstore import rules
from services.taxstore.faults import ItemFaults
from services.taxstore.policy import Policy, review_plan
from services.taxstore.rules import Reason, Submission
from shared.content import content_hash
from shared.errors import Conflict, FapiaoError, FieldError, NotFound, ValidationFailed
from shared.uscc import uscc_error

__all__ = [
    "FORM_LIVE", "LIST_COLUMNS", "REVIEW_NOW", "Incoming", "ItemResult", "NumberConflict", "Rejected", "StateConflict",
    "count_invoices", "get_invoice", "get_seller", "insert_invoices", "invoice_view", "list_invoices",
    "lose_invoices", "next_receipts", "red_letter_fields", "register_seller", "state_of", "submit_invoices",
]

AUTHORITY_TZ = ZoneInfo("Asia/Shanghai")  # whose calendar dates a receipt number


class Rejected(FapiaoError):
    """The authority refused the document: permanent, resending it unchanged cannot help."""

    status, title, code = 422, "Rejected by the tax authority", "rejected"


class NumberConflict(Conflict):
    code = "number_conflict"


class StateConflict(Conflict):
    """The request cannot apply to the invoice or form as it stands now; `code` says why."""

    def __init__(self, detail: str, *, code: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail, extra=extra)
        self.code = code


# --- submitting -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Incoming:
    index: int  # position in the request
    raw: Any  # the submission as parsed from JSON
    faults: ItemFaults


@dataclass
class ItemResult:
    index: int
    status: int  # 201 stored, 200 identical resubmission, 409 number holds other content, 422 rejected
    outcome: str  # stored | duplicates | repaired | conflicts | rejected | dropped (the stats counter)
    seller_tax_id: str | None = None
    number: str | None = None
    receipt_no: str | None = None
    content_hash: str | None = None
    stored_at: datetime | None = None
    corrupted: bool = False
    reasons: list[Reason] = field(default_factory=list)
    detail: str | None = None

    def receipt(self) -> dict[str, Any]:
        """The answer to a stored (201) or identical (200) submission."""
        return {
            "receipt_no": self.receipt_no, "seller_tax_id": self.seller_tax_id, "number": self.number,
            "content_hash": self.content_hash, "stored_at": self.stored_at.isoformat() if self.stored_at else None,
            "duplicate": self.outcome in ("duplicates", "repaired"), "repaired": self.outcome == "repaired",
        }

    def error(self) -> FapiaoError:
        """The problem a single-submission request answers with (409 or 422)."""
        assert self.detail is not None
        if self.status == 409:
            return NumberConflict(self.detail, extra={"receipt_no": self.receipt_no,
                                                      "content_hash": self.content_hash})
        return Rejected(self.detail, extra={"reason_code": self.reasons[0].code,
                                            "reasons": [r.as_dict() for r in self.reasons]})

    def as_dict(self) -> dict[str, Any]:
        """One entry of a batch answer."""
        out: dict[str, Any] = {"index": self.index, "status": self.status}
        if self.status in (200, 201):
            out.update(self.receipt())
            return out
        if self.seller_tax_id is not None:
            out.update(seller_tax_id=self.seller_tax_id, number=self.number)
        error = self.error()
        out.update(code=error.code, detail=error.detail, **error.extra)
        return out


@dataclass
class _Held:
    """What the store holds, or pretends to hold, under one seller + number within this request."""

    receipt_no: str
    submitted_hash: str
    content_hash: str
    stored_at: datetime


@dataclass(frozen=True)
class _Original:
    kind: str
    total: Decimal


def _rejected(index: int, reasons: list[Reason], sub: Submission | None = None,
              raw: Any = None) -> ItemResult:
    seller, number = (sub.seller_tax_id, sub.number) if sub else _names(raw)
    return ItemResult(index, 422, "rejected", seller_tax_id=seller, number=number, reasons=reasons,
                      detail=f"rejected: {reasons[0].code} at {reasons[0].path}: {reasons[0].message}")


def _names(raw: Any) -> tuple[str | None, str | None]:
    """Seller and number of a malformed submission, when they are at least plain strings."""
    inv = raw.get("invoice") if isinstance(raw, dict) else None
    seller = inv.get("seller") if isinstance(inv, dict) else None
    tax_id = seller.get("tax_id") if isinstance(seller, dict) else None
    number = inv.get("number") if isinstance(inv, dict) else None
    ok = lambda v: isinstance(v, str) and v.isascii() and v.isalnum() and len(v) <= 20  # noqa: E731
    return (tax_id if ok(tax_id) else None), (number if ok(number) else None)


async def submit_invoices(*, session: AsyncSession, items: Sequence[Incoming], visibility_delay_ms: int,
                          require_registration: bool, policy: Policy | None = None) -> list[ItemResult]:
    """Re-validate and store submissions in bulk, one result per item in input order.

    Per item, as if processed one after another: new seller + number → stored (201); the same content
    again → 200 with the original receipt (repairing a corrupted copy); other content → 409. The drop
    and corrupt decisions in `items[i].faults` apply to items that would be newly stored; a new invoice the
    `policy` holds for cross-region review is stored held.
    A fixed handful of statements per call, however many items.
    """
    results: dict[int, ItemResult] = {}
    valid: list[tuple[Incoming, Submission]] = []
    for it in items:
        parsed = rules.parse_submission(it.raw)
        if isinstance(parsed, list):
            results[it.index] = _rejected(it.index, parsed, raw=it.raw)
        else:
            valid.append((it, parsed))

    registered: set[str] = set()
    if require_registration and valid:
        wanted = {s.seller_tax_id for _, s in valid}
        registered = set((await session.execute(
            select(m.sellers.c.tax_id).where(m.sellers.c.tax_id.in_(wanted)))).scalars())
    reds = [s for _, s in valid if s.red_letter_of]
    originals, red_rows, forms = await _red_letter_context(session, reds) if reds else ({}, {}, {})

    # Registry checks in input order: an original or a red letter earlier in the batch counts, when it
    # will really be stored (a dropped one will not).
    primaries: dict[tuple[str, str], tuple[Incoming, Submission]] = {}
    pending_blue: dict[str, dict[str, _Original]] = {}
    pending_red: dict[tuple[str, str], dict[tuple[str, str], Decimal]] = {}
    accepted: list[tuple[Incoming, Submission]] = []
    for it, s in valid:
        if require_registration and s.seller_tax_id not in registered:
            reasons = [Reason(rules.SELLER_NOT_REGISTERED, "invoice.seller.tax_id",
                              f"seller {s.seller_tax_id} is not registered with the tax authority")]
        elif s.red_letter_of:
            reasons = _check_red_letter(s, originals, red_rows, pending_blue, pending_red, forms)
        else:
            reasons = []
        if reasons:
            results[it.index] = _rejected(it.index, reasons, s)
            continue
        accepted.append((it, s))
        if s.key in primaries:
            continue  # a resubmission of an earlier item: resolved against it below
        primaries[s.key] = (it, s)
        if it.faults.drop:
            continue
        if s.red_letter_of:
            pending_red.setdefault((s.seller_tax_id, s.red_letter_of), {})[s.key] = abs(s.total)
        else:
            pending_blue.setdefault(s.number, {})[s.seller_tax_id] = _Original("blue", s.total)

    receipts = dict(zip(primaries, await next_receipts(session, len(primaries)), strict=True)) if primaries else {}
    fresh = [(it, s, receipts[s.key]) for it, s in primaries.values() if not it.faults.drop]
    inserted = await insert_invoices(session, fresh, visibility_delay_ms, policy)
    missing = [key for key in primaries if key not in inserted]
    existing: dict[tuple[str, str], Any] = {}
    if missing:
        existing = {(r.seller_tax_id, r.number): r for r in (await session.execute(
            select(m.invoices.c.seller_tax_id, m.invoices.c.number, m.invoices.c.receipt_no,
                   m.invoices.c.content_hash, m.invoices.c.submitted_hash, m.invoices.c.stored_at)
            .where(tuple_(m.invoices.c.seller_tax_id, m.invoices.c.number).in_(missing))
        )).all()}

    held: dict[tuple[str, str], _Held] = {}
    repairs: dict[tuple[str, str], Submission] = {}
    now = datetime.now(UTC)
    for it, s in accepted:
        key, i = s.key, it.index
        named: dict[str, Any] = {"seller_tax_id": s.seller_tax_id, "number": s.number}
        if key not in held:
            if key in inserted:
                row = inserted[key]
                held[key] = _Held(row.receipt_no, s.digest, row.content_hash, row.stored_at)
                # A corruption is silent: the answer carries the hash of what was sent, as for any 201.
                results[i] = ItemResult(i, 201, "stored", **named, receipt_no=row.receipt_no, content_hash=s.digest,
                                        stored_at=row.stored_at, corrupted=row.content_hash != s.digest)
                continue
            if key in existing:
                row = existing[key]
                held[key] = _Held(row.receipt_no, row.submitted_hash, row.content_hash, row.stored_at)
            elif it.faults.drop:
                held[key] = _Held(receipts[key], s.digest, s.digest, now)
                results[i] = ItemResult(i, 201, "dropped", **named, receipt_no=receipts[key], content_hash=s.digest,
                                        stored_at=now)
                continue
            else:  # inserted by a concurrent request and deleted again before we looked: let the client retry
                raise RuntimeError(f"invoice {s.seller_tax_id}/{s.number} vanished while being stored")
        h = held[key]
        if s.digest != h.submitted_hash:
            results[i] = ItemResult(i, 409, "conflicts", **named, receipt_no=h.receipt_no, content_hash=h.content_hash,
                                    detail=f"invoice number {s.number} of seller {s.seller_tax_id} is already "
                                           f"stored with other content (receipt {h.receipt_no})")
        elif h.content_hash != h.submitted_hash:
            repairs[key] = s
            h.content_hash = h.submitted_hash
            results[i] = ItemResult(i, 200, "repaired", **named, receipt_no=h.receipt_no, content_hash=s.digest,
                                    stored_at=h.stored_at)
        else:
            results[i] = ItemResult(i, 200, "duplicates", **named, receipt_no=h.receipt_no, content_hash=s.digest,
                                    stored_at=h.stored_at)

    if repairs:
        await _repair(session, list(repairs.values()))
    return [results[it.index] for it in items]


_FormHolds = dict[tuple[str, str], list[tuple[str | None, Decimal]]]


async def _red_letter_context(session: AsyncSession, reds: list[Submission]) -> tuple[
        dict[str, dict[str, _Original]], dict[tuple[str, str], dict[tuple[str, str], Decimal]], _FormHolds]:
    """The originals the red letters name (seller → kind, total, by number), the red letters already
    stored against them (by seller + original number), and the live red-letter forms on them (each with the
    number of its red invoice, once issued, and the amount it reverses)."""
    inv = m.invoices
    numbers = sorted({s.red_letter_of for s in reds if s.red_letter_of})
    # Lock the originals first, then read their red letters in a new statement: a concurrent red letter
    # against the same original waits here and then sees ours, so the sum cannot be exceeded by racing.
    originals: dict[str, dict[str, _Original]] = {}
    for r in (await session.execute(
        select(inv.c.seller_tax_id, inv.c.number, inv.c.kind, inv.c.total).where(inv.c.number.in_(numbers))
        .order_by(inv.c.seller_tax_id, inv.c.number).with_for_update()
    )).all():
        originals.setdefault(r.number, {})[r.seller_tax_id] = _Original(r.kind, r.total)
    red_rows: dict[tuple[str, str], dict[tuple[str, str], Decimal]] = {}
    for r in (await session.execute(
        select(inv.c.seller_tax_id, inv.c.number, inv.c.red_letter_of, inv.c.total)
        .where(inv.c.red_letter_of.in_(numbers))
    )).all():
        red_rows.setdefault((r.seller_tax_id, r.red_letter_of), {})[(r.seller_tax_id, r.number)] = abs(r.total)
    f = m.red_letter_forms
    forms: _FormHolds = {}
    for r in (await session.execute(
        select(f.c.seller_tax_id, f.c.blue_number, f.c.red_number, f.c.total)
        .where(f.c.blue_number.in_(numbers), FORM_LIVE)
    )).all():
        forms.setdefault((r.seller_tax_id, r.blue_number), []).append((r.red_number, abs(r.total)))
    return originals, red_rows, forms


FORM_LIVE = or_(m.red_letter_forms.c.status == "confirmed",
                and_(m.red_letter_forms.c.status == "pending", m.red_letter_forms.c.expires_at > func.now()))
"""A form that holds part of its blue invoice: confirmed (its red invoice issued), or pending within its window."""


def _check_red_letter(s: Submission, originals: dict[str, dict[str, _Original]],
                      red_rows: dict[tuple[str, str], dict[tuple[str, str], Decimal]],
                      pending_blue: dict[str, dict[str, _Original]],
                      pending_red: dict[tuple[str, str], dict[tuple[str, str], Decimal]],
                      forms: _FormHolds) -> list[Reason]:
    number = s.red_letter_of
    assert number is not None
    if number == s.number:
        return [Reason(rules.RED_LETTER_ORIGINAL_NOT_FOUND, "red_letter_of",
                       "a red-letter invoice cannot reverse itself")]
    candidates = {**pending_blue.get(number, {}), **originals.get(number, {})}  # what is stored wins
    if not candidates:
        return [Reason(rules.RED_LETTER_ORIGINAL_NOT_FOUND, "red_letter_of", f"no invoice {number} is on record")]
    original = candidates.get(s.seller_tax_id)
    if original is None:
        return [Reason(rules.RED_LETTER_SELLER_MISMATCH, "red_letter_of",
                       f"invoice {number} was issued by another seller, not {s.seller_tax_id}")]
    if original.kind != "blue":
        return [Reason(rules.RED_LETTER_ORIGINAL_NOT_FOUND, "red_letter_of",
                       f"invoice {number} is itself a red-letter invoice; name the blue original")]
    group = (s.seller_tax_id, number)
    stored = red_rows.get(group, {})
    already = sum((v for k, v in stored.items() if k != s.key), Decimal(0))
    already += sum((v for k, v in pending_red.get(group, {}).items() if k != s.key and k not in stored), Decimal(0))
    # A form's amount counts once: through its red invoice when that is stored (or is this very submission,
    # a resync of a red invoice the store lost), through the form otherwise.
    already += sum((v for red_number, v in forms.get(group, ())
                    if red_number is None or ((s.seller_tax_id, red_number) not in stored and red_number != s.number)),
                   Decimal(0))
    if already + abs(s.total) > original.total:
        left = max(original.total - already, Decimal(0))
        return [Reason(rules.RED_LETTER_EXCEEDS_ORIGINAL, "invoice.total",
                       f"red letters against {number} would reverse {already + abs(s.total):.2f} of its "
                       f"{original.total:.2f}; at most {left:.2f} is left")]
    return []


async def next_receipts(session: AsyncSession, n: int) -> list[str]:
    seqs = (await session.execute(
        select(m.receipt_seq.next_value()).select_from(func.generate_series(1, n)))).scalars().all()
    day = datetime.now(AUTHORITY_TZ).strftime("%Y%m%d")
    return [f"TS{day}{seq:010d}" for seq in seqs]


async def insert_invoices(session: AsyncSession, rows: list[tuple[Incoming, Submission, str]],
                  visibility_delay_ms: int, policy: Policy | None = None) -> dict[tuple[str, str], Any]:
    """One INSERT … ON CONFLICT DO NOTHING for the lot; the rows that were new."""
    if not rows:
        return {}
    params = []
    for it, s, receipt_no in rows:
        content = rules.corrupt(s.doc) if it.faults.corrupt else s.doc
        plan = review_plan(policy, seller_tax_id=s.seller_tax_id, buyer_tax_id=s.buyer_tax_id, number=s.number,
                           kind=s.kind, total=s.total) if policy is not None else None
        params.append({
            "review_status": "under_review" if plan else None, "review_auto": plan.auto_outcome if plan else None,
            "k_review_s": plan.due_in.total_seconds() if plan else None,
            "seller_tax_id": s.seller_tax_id, "number": s.number, "receipt_no": receipt_no, "kind": s.kind,
            "invoice_type": s.invoice_type, "issue_date": s.issue_date, "buyer_tax_id": s.buyer_tax_id,
            "total": Decimal(content["total"]), "content": content,
            "content_hash": content_hash(content) if content is not s.doc else s.digest,
            "submitted_hash": s.digest, "red_letter_of": s.red_letter_of,
        })
    params.sort(key=lambda p: (p["seller_tax_id"], p["number"]))  # one lock order for concurrent batches
    inv = m.invoices
    stmt = (
        pg_insert(inv)
        .values(stored_at=func.now(), visible_at=func.now() + timedelta(milliseconds=visibility_delay_ms),
                # NULL seconds (not held) make a NULL due time.
                review_due_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("k_review_s", type_=Float)))
        .on_conflict_do_nothing(index_elements=["seller_tax_id", "number"])
        .returning(inv.c.seller_tax_id, inv.c.number, inv.c.receipt_no, inv.c.content_hash, inv.c.stored_at)
    )
    return {(r.seller_tax_id, r.number): r for r in (await session.execute(stmt, params)).all()}


async def _repair(session: AsyncSession, subs: list[Submission]) -> None:
    """Put back what was submitted where the corrupt fault stored something else."""
    inv = m.invoices
    stmt = (
        update(inv)
        .where(inv.c.seller_tax_id == bindparam("k_seller"), inv.c.number == bindparam("k_number"))
        .values(content=bindparam("k_content", type_=JSONB), content_hash=bindparam("k_hash"),
                total=bindparam("k_total"))
    )
    await session.execute(stmt, [
        {"k_seller": s.seller_tax_id, "k_number": s.number, "k_content": s.doc, "k_hash": s.digest, "k_total": s.total}
        for s in sorted(subs, key=lambda s: s.key)
    ])


# --- reading ----------------------------------------------------------------------------------

_inv = m.invoices
_red = m.invoices.alias("red")
_PAST_DUE = and_(_inv.c.review_status == "under_review", _inv.c.review_due_at <= func.now())
# The review's word now: the bureau's automatic outcome once the due time of an undecided review has passed.
REVIEW_NOW = case((_PAST_DUE, _inv.c.review_auto), else_=_inv.c.review_status)
REVIEWED_AT_NOW = case((_PAST_DUE, _inv.c.review_due_at), else_=_inv.c.reviewed_at)
# What the visible red invoices against a blue one reverse (its own seller's; a number is unique per seller).
RED_LETTERED = case((_inv.c.kind == "blue", select(func.coalesce(func.sum(-_red.c.total), 0)).where(
    _red.c.seller_tax_id == _inv.c.seller_tax_id, _red.c.red_letter_of == _inv.c.number,
    _red.c.visible_at <= func.now()).correlate(_inv).scalar_subquery()), else_=None)

LIST_COLUMNS = [
    m.invoices.c.receipt_no, m.invoices.c.seller_tax_id, m.invoices.c.number, m.invoices.c.kind,
    m.invoices.c.invoice_type, m.invoices.c.issue_date, m.invoices.c.total, m.invoices.c.content_hash,
    m.invoices.c.red_letter_of, m.invoices.c.stored_at, m.invoices.c.visible_at, m.invoices.c.buyer_tax_id,
    m.invoices.c.review_due_at, m.invoices.c.review_note, REVIEW_NOW.label("review_now"),
    REVIEWED_AT_NOW.label("reviewed_at_now"), RED_LETTERED.label("red_lettered"),
]


def state_of(row: Any) -> str:
    """The invoice's standing at the authority, as verification (查验) words it (shared.contracts VERIFY_RESULTS)."""
    if row.review_now == "denied":
        return "voided"
    if row.review_now == "under_review":
        return "under_review"
    if row.kind == "blue" and row.red_lettered:
        return "red_lettered" if row.red_lettered >= row.total else "partly_red_lettered"
    return "normal"


def red_letter_fields(row: Any) -> dict[str, Any]:
    if row.kind != "blue":
        return {"red_letter_state": None, "red_lettered_total": None, "remaining_total": None}
    done = row.red_lettered or Decimal(0)
    return {"red_letter_state": "none" if not done else "fully" if done >= row.total else "partly",
            "red_lettered_total": f"{done:.2f}", "remaining_total": f"{max(row.total - done, Decimal(0)):.2f}"}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def invoice_view(row: Any, *, content: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "receipt_no": row.receipt_no, "seller_tax_id": row.seller_tax_id, "number": row.number, "kind": row.kind,
        "invoice_type": row.invoice_type, "issue_date": row.issue_date.isoformat(), "total": f"{row.total:.2f}",
    }
    if content:
        out["content"] = row.content
    out.update(content_hash=row.content_hash, red_letter_of=row.red_letter_of,
               stored_at=row.stored_at.isoformat(), visible_at=row.visible_at.isoformat())
    # Added for red letters and review; the fields above are what the sync service and the reconciler read.
    out.update(state=state_of(row), **red_letter_fields(row), review_status=row.review_now,
               review_due_at=_iso(row.review_due_at) if row.review_now is not None else None,
               reviewed_at=_iso(row.reviewed_at_now), review_note=row.review_note)
    return out


async def get_invoice(*, session: AsyncSession, seller_tax_id: str, number: str) -> dict[str, Any]:
    """The invoice as stored, once visible; NotFound before (replication lag) and when never stored."""
    inv = m.invoices
    row = (await session.execute(
        select(*LIST_COLUMNS, inv.c.content)
        .where(inv.c.seller_tax_id == seller_tax_id, inv.c.number == number, inv.c.visible_at <= func.now())
    )).first()
    if row is None:
        raise NotFound(f"the tax authority has no invoice {number} of seller {seller_tax_id}")
    return invoice_view(row, content=True)


_CURSOR = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})\|([0-9A-Za-z]{1,20})", re.ASCII)


def encode_cursor(issue_date: date, number: str) -> str:
    return base64.urlsafe_b64encode(f"{issue_date.isoformat()}|{number}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[date, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        match = _CURSOR.fullmatch(raw)
        if match is None:
            raise ValueError
        return date.fromisoformat(match[1]), match[2]
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed([FieldError("cursor", "is not a cursor this API returned")]) from None


async def list_invoices(*, session: AsyncSession, seller_tax_id: str, issued_from: date | None,
                        issued_to: date | None, cursor: str | None, limit: int,
                        include_content: bool, numbers: Sequence[str] | None = None) -> dict[str, Any]:
    """A seller's visible invoices by (issue_date, number); `next_cursor` continues after this page."""
    inv = m.invoices
    conds = [inv.c.seller_tax_id == seller_tax_id, inv.c.visible_at <= func.now()]
    if numbers:
        conds.append(inv.c.number.in_(list(numbers)))
    if issued_from is not None:
        conds.append(inv.c.issue_date >= issued_from)
    if issued_to is not None:
        conds.append(inv.c.issue_date <= issued_to)
    if cursor:
        conds.append(tuple_(inv.c.issue_date, inv.c.number) > tuple_(*decode_cursor(cursor)))
    columns = [*LIST_COLUMNS, inv.c.content] if include_content else LIST_COLUMNS
    rows = (await session.execute(
        select(*columns).where(*conds).order_by(inv.c.issue_date, inv.c.number).limit(limit + 1)
    )).all()
    page = rows[:limit]
    return {
        "items": [invoice_view(r, content=include_content) for r in page],
        "next_cursor": encode_cursor(page[-1].issue_date, page[-1].number) if len(rows) > limit else None,
    }


async def count_invoices(*, session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(m.invoices))).scalar_one())


# --- admin ------------------------------------------------------------------------------------

async def lose_invoices(*, session: AsyncSession, count: int | None = None, seller_tax_id: str | None = None,
                        keys: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """Delete stored invoices, as an authority that later loses data would: `count` random ones
    (of one seller if given) or exactly `keys`. Unknown keys are ignored."""
    inv = m.invoices
    pk = tuple_(inv.c.seller_tax_id, inv.c.number)
    if count is not None:
        victims = select(inv.c.seller_tax_id, inv.c.number).order_by(func.random()).limit(count)
        if seller_tax_id is not None:
            victims = victims.where(inv.c.seller_tax_id == seller_tax_id)
        where = pk.in_(victims)
    else:
        if not keys:
            return []
        # Two arrays, not a list of 10,000 (seller, number) pairs: PostgreSQL's parser recurses per pair.
        pairs = select(func.unnest(literal([k[0] for k in keys], ARRAY(Text))).label("s"),
                       func.unnest(literal([k[1] for k in keys], ARRAY(Text))).label("n")).subquery()
        where = pk.in_(select(pairs.c.s, pairs.c.n))
    rows = (await session.execute(
        inv.delete().where(where).returning(inv.c.seller_tax_id, inv.c.number, inv.c.receipt_no)
    )).all()
    return sorted(({"seller_tax_id": r.seller_tax_id, "number": r.number, "receipt_no": r.receipt_no} for r in rows),
                  key=lambda d: (d["seller_tax_id"], d["number"]))


def _tax_id_or_raise(tax_id: str) -> str:
    if (why := uscc_error(tax_id)) is not None:
        raise ValidationFailed([FieldError("tax_id", why)])
    return tax_id


async def register_seller(*, session: AsyncSession, tax_id: str, name: str) -> tuple[bool, dict[str, Any]]:
    """Register (or rename) a seller; True when it was new."""
    tax_id = _tax_id_or_raise(tax_id)
    s = m.sellers
    stmt = pg_insert(s).values(tax_id=tax_id, name=name)
    row = (await session.execute(
        stmt.on_conflict_do_update(index_elements=[s.c.tax_id], set_={"name": stmt.excluded.name})
        # xmax is 0 on a freshly inserted row version and set on one the upsert updated.
        .returning(s.c.tax_id, s.c.name, s.c.registered_at, literal_column("xmax = 0").label("created"))
    )).one()
    return bool(row.created), _seller_view(row)


async def get_seller(*, session: AsyncSession, tax_id: str) -> dict[str, Any]:
    row = (await session.execute(select(m.sellers).where(m.sellers.c.tax_id == tax_id))).first()
    if row is None:
        raise NotFound(f"seller {tax_id} is not registered")
    return _seller_view(row)


def _seller_view(row: Any) -> dict[str, Any]:
    return {"tax_id": row.tax_id, "name": row.name, "registered_at": row.registered_at.isoformat()}
