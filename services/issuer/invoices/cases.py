"""Cases about an invoice (owned by the reconciler): the seller opens one and follows it here; the issuer checks
that the invoice or case is the tenant's and records on the invoice what the tenant asked for."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.issuer import models as m
from services.issuer.backends import ReconcilerClient
from services.issuer.explain import case_opened_message
from services.issuer.invoices.outcomes import CaseOpened, CaseRefused, CaseShown
from services.issuer.invoices.reading import Schedule, get_invoice, get_invoice_view, get_row, view
from services.issuer.lifecycle import Status
from services.issuer.schemas import InvoiceRead, InvoiceView
from services.issuer.tenants import Tenant
from shared.contracts.cases import is_case_no
from shared.contracts.reconciler import CaseDetail
from shared.db import transaction
from shared.errors import NotFound

__all__ = ["case_evidence", "cases_on_timeline", "get_case", "open_case", "record_case", "tenants_case"]


async def open_case(*, sessions: async_sessionmaker[AsyncSession], tenant: Tenant, invoice_id: str,
                    note: str | None, reconciler: ReconcilerClient) -> CaseOpened | CaseRefused:
    """The seller reports "the tax system doesn't have it": open a case (or get the open one), shown on the
    invoice. No transaction is held across the call: the reconciler may take its full timeout."""
    async with transaction(sessions) as session:
        row = await get_row(session, tenant, invoice_id)
    if row.status == Status.VOIDED.value:
        return CaseRefused(Status(row.status))
    opened, case = await reconciler.open_case(invoice_id=row.id, tenant_id=tenant.id,
                                              seller_tax_id=row.seller_tax_id, number=row.number, note=note)
    async with transaction(sessions) as session:
        shown = await record_case(session=session, tenant=tenant, invoice_id=invoice_id, case_no=case.case_no,
                                  opened=opened, note=note)
    return CaseOpened(case, shown, opened)


async def tenants_case(tenant: Tenant, reconciler: ReconcilerClient, case_no: str) -> CaseDetail:
    """The case when it is the tenant's; NotFound otherwise (another tenant's case is no case at all)."""
    missing = NotFound(f"no case {case_no[:40]}")
    if not is_case_no(case_no):
        raise missing
    case = await reconciler.get_case(case_no)
    if case is None or case.tenant_id != tenant.id:
        raise missing
    return case


async def get_case(*, session: AsyncSession, tenant: Tenant, reconciler: ReconcilerClient, case_no: str,
                   schedule: Schedule | None = None) -> CaseShown:
    """A case's progress, with its invoice as it stands now."""
    case = await tenants_case(tenant, reconciler, case_no)
    try:
        invoice = await get_invoice_view(session=session, tenant=tenant, invoice_id=str(case.invoice_id),
                                         schedule=schedule)
    except NotFound:
        invoice = None
    return CaseShown(case, invoice)


async def case_evidence(*, session: AsyncSession, tenant: Tenant, reconciler: ReconcilerClient, case_no: str,
                        schedule: Schedule | None = None) -> tuple[CaseDetail, InvoiceRead | None]:
    """What a case's evidence pack holds: the case with its history, and its invoice with its whole timeline
    (None when the invoice is no longer here)."""
    case = await tenants_case(tenant, reconciler, case_no)
    try:
        invoice = await get_invoice(session=session, tenant=tenant, invoice_id=str(case.invoice_id), schedule=schedule)
    except NotFound:
        invoice = None
    return case, invoice


async def record_case(*, session: AsyncSession, tenant: Tenant, invoice_id: str, case_no: str, opened: bool,
                      note: str | None = None) -> InvoiceView:
    """Show the case on the invoice; `opened`: this request opened it, so the timeline says so (once).

    The reconciler announces the same opening on invoice.reconciliation.v1, possibly before this runs;
    whichever comes second finds the entry and adds none.
    """
    row = await get_row(session, tenant, invoice_id, for_update=True)
    now = datetime.now(UTC)
    if row.case_no != case_no:
        await session.execute(update(m.invoices).where(m.invoices.c.id == row.id).values(case_no=case_no,
                                                                                           updated_at=now))
    if opened and case_no not in await cases_on_timeline(session, [row.id]):
        detail: dict[str, Any] = {"case_no": case_no, "opened_by": "tenant"}
        if note:
            detail["note"] = note
        await session.execute(m.timeline.insert().values(
            invoice_id=row.id, kind="case_opened", at=now, detail=detail,
            message=case_opened_message(case_no, opened_by="tenant")))
    return view(await get_row(session, tenant, invoice_id))


async def cases_on_timeline(session: AsyncSession, ids: Sequence[uuid.UUID]) -> set[str]:
    """The case numbers whose opening these invoices' timelines already show."""
    rows = (await session.execute(
        select(m.timeline.c.detail["case_no"].astext)
        .where(m.timeline.c.invoice_id.in_(ids), m.timeline.c.kind == "case_opened")
    )).scalars().all()
    return {r for r in rows if r}
