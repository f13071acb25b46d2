"""An operator's look-ups across tenants: invoices by number, and one invoice whoever issued it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.invoices.reading import Schedule, get_invoice
from services.issuer.schemas import InvoiceRead
from services.issuer.tenants import Tenant
from shared.errors import NotFound

__all__ = ["FoundInvoice", "OwnedInvoice", "find_invoices", "get_invoice_any_tenant"]


@dataclass(frozen=True)
class FoundInvoice:
    id: uuid.UUID
    number: str
    seller_tax_id: str
    status: str
    issue_date: date
    tenant: str  # its name


@dataclass(frozen=True)
class OwnedInvoice:
    invoice: InvoiceRead
    tenant: Tenant


async def find_invoices(*, session: AsyncSession, number: str, seller_tax_id: str | None = None,
                        limit: int = 20) -> list[FoundInvoice]:
    """Invoices with this number, any tenant (numbers are unique per seller only); the seller narrows it to one."""
    inv, t = m.invoices, m.tenants
    conds = [inv.c.number == number]
    if seller_tax_id:
        conds.append(inv.c.seller_tax_id == seller_tax_id)
    rows = (await session.execute(
        select(inv.c.id, inv.c.number, inv.c.seller_tax_id, inv.c.status, inv.c.issue_date, t.c.name.label("tenant"))
        .join(t, t.c.id == inv.c.tenant_id).where(*conds).order_by(inv.c.seq).limit(limit)
    )).all()
    return [FoundInvoice(r.id, r.number, r.seller_tax_id, r.status, r.issue_date, r.tenant) for r in rows]


async def get_invoice_any_tenant(*, session: AsyncSession, invoice_id: str,
                                 schedule: Schedule | None = None) -> OwnedInvoice:
    """get_invoice for an operator: whichever tenant the invoice belongs to, named in the answer."""
    try:
        iid = uuid.UUID(invoice_id)
    except ValueError:
        raise NotFound(f"no invoice {invoice_id[:40]}") from None
    owner = (await session.execute(
        select(m.tenants.c.id, m.tenants.c.name, m.tenants.c.tax_id)
        .join(m.invoices, m.invoices.c.tenant_id == m.tenants.c.id).where(m.invoices.c.id == iid)
    )).first()
    if owner is None:
        raise NotFound(f"no invoice {invoice_id[:40]}")
    tenant = Tenant(owner.id, owner.name, owner.tax_id)
    return OwnedInvoice(await get_invoice(session=session, tenant=tenant, invoice_id=invoice_id, schedule=schedule),
                        tenant)
