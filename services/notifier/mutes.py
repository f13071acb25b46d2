"""Mutes: a tenant silences an invoice or a case until it resolves; its resolution is still told, and lifts the
mute. Callers own the transaction; nothing here commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import models as m
from shared.contracts.notifier import ENDINGS

__all__ = ["Muted", "is_muted", "list_mutes", "mute", "unmute"]


@dataclass(frozen=True)
class Muted:
    mute: dict[str, Any]
    created: bool  # by this request; False: it was muted already


async def is_muted(session: AsyncSession, tenant_id: uuid.UUID, invoice_id: uuid.UUID | None,
                   case_no: str | None) -> bool:
    """Whether the tenant muted this invoice or its case."""
    mu = m.mutes
    conds = []
    if invoice_id is not None:
        conds.append(mu.c.invoice_id == invoice_id)
    if case_no:
        conds.append(mu.c.case_no == case_no)
    if not conds:
        return False
    row = (await session.execute(
        select(mu.c.id).where(mu.c.tenant_id == tenant_id, mu.c.lifted_at.is_(None), or_(*conds)).limit(1)
    )).first()
    return row is not None


def _target(invoice_id: uuid.UUID | None, case_no: str | None) -> ColumnElement[bool]:
    mu = m.mutes
    return mu.c.invoice_id == invoice_id if invoice_id is not None else mu.c.case_no == case_no


async def mute(*, session: AsyncSession, tenant_id: uuid.UUID, invoice_id: uuid.UUID | None = None,
               case_no: str | None = None) -> Muted:
    """Silence an invoice or a case until it resolves (its resolution is still told)."""
    mu = m.mutes
    where = _target(invoice_id, case_no)
    existing = (await session.execute(
        select(mu).where(mu.c.tenant_id == tenant_id, mu.c.lifted_at.is_(None), where))).first()
    if existing is not None:
        return Muted(_mute_view(existing), created=False)
    stmt = pg_insert(mu).values(tenant_id=tenant_id, invoice_id=invoice_id, case_no=case_no).on_conflict_do_nothing()
    row = (await session.execute(stmt.returning(mu))).first()
    if row is None:  # a concurrent request created it
        row = (await session.execute(select(mu).where(mu.c.tenant_id == tenant_id, mu.c.lifted_at.is_(None),
                                                      where))).one()
        return Muted(_mute_view(row), created=False)
    # What waits for its digest window is silenced too.
    it = m.items
    waiting = (select(it.c.id).join(m.alerts, m.alerts.c.alert_id == it.c.alert_id)
               .where(it.c.tenant_id == tenant_id, it.c.status == "pending", m.alerts.c.kind.notin_(ENDINGS),
                      m.alerts.c.invoice_id == invoice_id if invoice_id is not None
                      else m.alerts.c.case_no == case_no))
    await session.execute(update(it).where(it.c.id.in_(waiting.scalar_subquery())).values(status="muted"))
    return Muted(_mute_view(row), created=True)


async def unmute(*, session: AsyncSession, tenant_id: uuid.UUID, invoice_id: uuid.UUID | None = None,
                 case_no: str | None = None) -> bool:
    """Lift the mute; idempotent, as DELETE is: nothing muted afterwards either way. True when one was lifted."""
    mu = m.mutes
    done = (await session.execute(
        update(mu).where(mu.c.tenant_id == tenant_id, mu.c.lifted_at.is_(None), _target(invoice_id, case_no))
        .values(lifted_at=func.now(), lifted_by="tenant").returning(mu.c.id))).first()
    return done is not None


def _mute_view(row: Any) -> dict[str, Any]:
    return {"invoice_id": str(row.invoice_id) if row.invoice_id else None, "case_no": row.case_no,
            "muted_at": row.created_at.isoformat(), "until": "resolved"}


async def list_mutes(*, session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    mu = m.mutes
    rows = (await session.execute(select(mu).where(mu.c.tenant_id == tenant_id, mu.c.lifted_at.is_(None))
                                  .order_by(mu.c.id))).all()
    return [_mute_view(r) for r in rows]
