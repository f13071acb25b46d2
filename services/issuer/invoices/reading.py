"""Reading invoices: one with its timeline, one's standing, a tenant's list. Explanations are rendered at read
time (explain.py), quoting the reconciler's live schedule when it can be had."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, select, text
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.explain import explain
from services.issuer.lifecycle import SETTLED, Status
from services.issuer.schemas import InvoiceList, InvoiceRead, InvoiceView, TimelineEntry
from services.issuer.tenants import Tenant
from shared.errors import FieldError, NotFound, ValidationFailed

__all__ = ["ListFilters", "Schedule", "get_invoice", "get_invoice_view", "get_row", "list_invoices", "view"]

Schedule = Callable[[Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, Mapping[str, Any]]]]
"""The reconciler's live schedule (next_check_at, resync_at) of these invoices; whatever it could get."""


async def _live(rows: Sequence[Any], schedule: Schedule | None) -> Mapping[uuid.UUID, Mapping[str, Any]]:
    """The live schedule of the rows whose explanation quotes the reconciler's times."""
    ids = [r.id for r in rows if r.reason_source == "reconciler" and Status(r.status) not in SETTLED]
    return await schedule(ids) if schedule is not None and ids else {}


def _standing(row: Any, *, now: datetime | None = None, live: Mapping[str, Any] | None = None) -> dict[str, Any]:
    reason, next_action, next_action_at = explain(
        status=row.status, recon=row.recon, reason=row.reason, next_action=row.next_action,
        next_action_at=row.next_action_at, reason_source=row.reason_source, now=now or datetime.now(UTC), live=live)
    return dict(
        id=row.id, number=row.number, kind=row.kind, issue_date=row.issue_date, seller_tax_id=row.seller_tax_id,
        buyer_tax_id=row.buyer_tax_id, buyer_name=row.buyer_name, total_amount=f"{row.total_amount:.2f}",
        total_tax=f"{row.total_tax:.2f}", total=f"{row.total:.2f}", currency=row.currency, status=row.status,
        reason=reason, next_action=next_action, next_action_at=next_action_at, case_no=row.case_no,
        receipt_no=row.receipt_no, accepted_at=row.accepted_at, updated_at=row.updated_at,
        red_letter_of=row.red_letter_of,
    )


def view(row: Any, *, now: datetime | None = None, live: Mapping[str, Any] | None = None) -> InvoiceView:
    """An invoice row as its tenant sees it: where it stands and why."""
    return InvoiceView(**_standing(row, now=now, live=live))


async def get_row(session: AsyncSession, tenant: Tenant, invoice_id: str, *, for_update: bool = False,
                  extra: Sequence[Any] = ()) -> Any:
    """The tenant's invoice row; NotFound for a malformed id, an unknown one or another tenant's."""
    try:
        iid = uuid.UUID(invoice_id)
    except ValueError:
        raise NotFound(f"no invoice {invoice_id}") from None
    stmt = select(m.invoices, *extra).where(m.invoices.c.id == iid, m.invoices.c.tenant_id == tenant.id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    if row is None:  # another tenant's invoice is indistinguishable from none at all
        raise NotFound(f"no invoice {invoice_id}")
    return row


async def get_invoice(*, session: AsyncSession, tenant: Tenant, invoice_id: str,
                      schedule: Schedule | None = None) -> InvoiceRead:
    """Where the invoice stands, why, what happens next, its content and every step so far."""
    # One statement, so one snapshot: under READ COMMITTED a second query could show a timeline entry
    # (say "stuck") whose status change the row read just before did not include yet.
    t = m.timeline
    entry = func.jsonb_build_object("at", t.c.at, "kind", t.c.kind, "message", t.c.message, "detail", t.c.detail)
    timeline = (select(func.coalesce(func.jsonb_agg(aggregate_order_by(entry, t.c.id)), text("'[]'::jsonb")))
                .where(t.c.invoice_id == m.invoices.c.id).scalar_subquery().label("timeline"))
    row = await get_row(session, tenant, invoice_id, extra=[timeline])
    live = await _live([row], schedule)
    from services.issuer.invoices.redletter import standing
    return InvoiceRead(**_standing(row, live=live.get(row.id)), invoice=row.content,
                       timeline=[TimelineEntry.model_validate(e) for e in row.timeline],
                       red_letter=await standing(session=session, row=row))


async def get_invoice_view(*, session: AsyncSession, tenant: Tenant, invoice_id: str,
                           schedule: Schedule | None = None) -> InvoiceView:
    """Where the invoice stands and why, without its content and timeline."""
    row = await get_row(session, tenant, invoice_id)
    return view(row, live=(await _live([row], schedule)).get(row.id))


@dataclass(frozen=True)
class ListFilters:
    status: Status | None = None
    number: str | None = None
    buyer_tax_id: str | None = None
    issued_from: date | None = None
    issued_to: date | None = None
    min_total: Decimal | None = None
    max_total: Decimal | None = None
    cursor: str | None = None
    limit: int = 50


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s") or not raw[1:].isdigit() or len(raw) > 20:
            raise ValueError
        return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed([FieldError("cursor", "is not a cursor this API returned")]) from None


def list_conditions(tenant: Tenant, f: ListFilters) -> list[Any]:
    """The tenant's invoices that pass the list's filters (its cursor aside): the list and the exports share them."""
    inv = m.invoices
    conds: list[Any] = [inv.c.tenant_id == tenant.id]
    if f.status is not None:
        conds.append(inv.c.status == f.status.value)
    if f.number:
        conds.append(inv.c.number == f.number)
    if f.buyer_tax_id:
        conds.append(inv.c.buyer_tax_id == f.buyer_tax_id.upper())
    if f.issued_from:
        conds.append(inv.c.issue_date >= f.issued_from)
    if f.issued_to:
        conds.append(inv.c.issue_date <= f.issued_to)
    if f.min_total is not None:
        conds.append(inv.c.total >= f.min_total)
    if f.max_total is not None:
        conds.append(inv.c.total <= f.max_total)
    return conds


async def list_invoices(*, session: AsyncSession, tenant: Tenant, filters: ListFilters,
                        schedule: Schedule | None = None) -> InvoiceList:
    """Newest first; `next_cursor` continues where this page ended, stable under concurrent inserts."""
    inv = m.invoices
    f = filters
    conds = list_conditions(tenant, f)
    if f.cursor:
        conds.append(inv.c.seq < decode_cursor(f.cursor))
    rows = (await session.execute(
        select(inv).where(and_(*conds)).order_by(inv.c.seq.desc()).limit(f.limit + 1)
    )).all()
    page = rows[: f.limit]
    live = await _live(page, schedule)
    return InvoiceList(items=[view(r, live=live.get(r.id)) for r in page],
                       next_cursor=encode_cursor(page[-1].seq) if len(rows) > f.limit else None)
