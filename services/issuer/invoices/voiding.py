"""Voiding (废弃): the seller discards an invoice the authority has not accepted (rejected or stuck)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.invoices.outcomes import NotVoidable, Voided
from services.issuer.invoices.reading import get_invoice, get_row
from services.issuer.lifecycle import VOIDABLE, Status
from services.issuer.tenants import Tenant
from shared.envelope import encode, new_envelope
from shared.events import INVOICE_VOIDED, ISSUER_SOURCE, InvoiceVoided
from shared.outbox import notify_outbox

__all__ = ["void_invoice"]


async def void_invoice(*, session: AsyncSession, tenant: Tenant, invoice_id: str, reason: str,
                       topic: str) -> Voided | NotVoidable:
    """The invoice voided, with its `voided` event queued for `topic`; NotVoidable once the authority has it."""
    row = await get_row(session, tenant, invoice_id, for_update=True)
    status = Status(row.status)
    if status not in VOIDABLE:
        return NotVoidable(status)
    now = datetime.now(UTC)
    seq = row.event_seq + 1
    event = InvoiceVoided(invoice_id=row.id, tenant_id=tenant.id, seller_tax_id=row.seller_tax_id, number=row.number,
                          reason=reason, voided_at=now)
    envelope = new_envelope(source=ISSUER_SOURCE, event=event, subject=str(row.id), tenant=str(tenant.id),
                            sequence=seq)
    await session.execute(
        update(m.invoices).where(m.invoices.c.id == row.id)
        .values(status=Status.VOIDED.value, reason=f"Voided by the seller: {reason}", next_action=None,
                next_action_at=None, reason_source=None, event_seq=seq, updated_at=now, status_since=now)
    )
    await session.execute(m.timeline.insert().values(
        invoice_id=row.id, kind="voided", at=now, message=f"Voided by the seller: {reason}",
        detail={"event_id": envelope.id, "previous_status": status.value}))
    await session.execute(m.outbox.insert().values(
        topic=topic, key=str(row.id), event_id=envelope.id,
        event_type=INVOICE_VOIDED, payload=encode(envelope)))
    await notify_outbox(session, m.outbox)
    return Voided(await get_invoice(session=session, tenant=tenant, invoice_id=invoice_id))
