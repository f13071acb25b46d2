"""The issuer's own figures for the operators' dashboard: invoices by status, the stuck ones with their reason
and case, and the tenants to filter by."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.explain import explain
from services.issuer.explain import parse_time as explain_time
from services.issuer.lifecycle import Status
from services.issuer.tenants import Tenant

__all__ = ["Figures", "StuckInvoice", "ops_figures"]


@dataclass(frozen=True)
class StuckInvoice:
    id: uuid.UUID
    number: str
    seller_tax_id: str
    tenant: str
    total: str
    age_seconds: float  # since it was accepted
    stuck_seconds: float
    case_no: str | None
    reason: str | None
    next_action: str | None


@dataclass(frozen=True)
class Figures:
    counts: dict[str, int]  # invoices by status
    stuck: list[StuckInvoice]  # issued earliest first, at most the limit asked for
    tenants: list[Tenant]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def stuck_total(self) -> int:
        return self.counts.get(Status.STUCK.value, 0)


async def ops_figures(*, session: AsyncSession, tenant_id: uuid.UUID | None, stuck_limit: int = 50,
                      with_tenants: bool = True) -> Figures:
    """The whole ledger's figures, or one tenant's."""
    inv, t = m.invoices, m.tenants
    conds = [inv.c.tenant_id == tenant_id] if tenant_id is not None else []
    counts = {r[0]: int(r[1]) for r in (await session.execute(
        select(inv.c.status, func.count()).where(*conds).group_by(inv.c.status))).all()}
    stuck_rows = [] if not stuck_limit else (await session.execute(
        select(inv.c.id, inv.c.number, inv.c.seller_tax_id, inv.c.total, inv.c.accepted_at, inv.c.updated_at,
               inv.c.status, inv.c.recon, inv.c.reason, inv.c.next_action, inv.c.next_action_at,
               inv.c.reason_source, inv.c.case_no, t.c.name.label("tenant"))
        .join(t, t.c.id == inv.c.tenant_id).where(inv.c.status == Status.STUCK.value, *conds)
        .order_by(inv.c.accepted_at).limit(stuck_limit)
    )).all()
    now = datetime.now(UTC)
    stuck = []
    for r in stuck_rows:
        reason, nxt, _ = explain(status=r.status, recon=r.recon, reason=r.reason, next_action=r.next_action,
                                 next_action_at=r.next_action_at, reason_source=r.reason_source, now=now)
        since = explain_time((r.recon or {}).get("stuck_at")) or r.updated_at
        stuck.append(StuckInvoice(
            id=r.id, number=r.number, seller_tax_id=r.seller_tax_id, tenant=r.tenant, total=f"{r.total:.2f}",
            age_seconds=round((now - r.accepted_at).total_seconds(), 1),
            stuck_seconds=round(max(0.0, (now - since).total_seconds()), 1),
            case_no=r.case_no, reason=reason, next_action=nxt))
    tenants = [Tenant(r.id, r.name, r.tax_id) for r in (await session.execute(
        select(t.c.id, t.c.name, t.c.tax_id).order_by(t.c.name).limit(500))).all()] if with_tenants else []
    return Figures(counts=counts, stuck=stuck, tenants=tenants)
