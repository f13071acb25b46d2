"""The history tenants (through the issuer) and operators read: notifications page by page, one with its attempts
and alerts, the latest alerts and what became of them; and trying an exhausted notification again. Callers own
the transaction; nothing here commits."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import models as m
from services.notifier.deliveries import msg_id
from shared.errors import Conflict, FieldError, NotFound, ValidationFailed

__all__ = ["get_delivery", "list_deliveries", "recent_alerts", "requeue_delivery"]


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no {what} {value[:40]}") from None


def _delivery_view(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id), "webhook_id": msg_id(row.id) if row.channel == "webhook" else None,
        "subscription_id": str(row.subscription_id), "channel": row.channel, "kind": row.kind,
        "alert_count": row.alert_count, "status": row.status, "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.status == "pending" and row.next_attempt_at
        else None, "last_error": row.last_error, "created_at": row.created_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }


def _cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at']}|{row['id']}".encode()).decode().rstrip("=")


def _after_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, _, did = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
        return datetime.fromisoformat(at), uuid.UUID(did)
    except ValueError:
        raise ValidationFailed([FieldError("cursor", "not a cursor this API returned")]) from None


async def list_deliveries(*, session: AsyncSession, tenant_id: uuid.UUID, invoice_id: uuid.UUID | None = None,
                          status: str | None = None, limit: int = 50,
                          cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """This tenant's notifications, newest first, and the cursor of the next page; with `invoice_id`, those that
    named that invoice. Paging is by (created_at, id), so deliveries created together are never skipped."""
    d = m.deliveries
    conds = [d.c.tenant_id == tenant_id]
    if invoice_id is not None:
        conds.append(d.c.id.in_(select(m.items.c.delivery_id).where(
            m.items.c.tenant_id == tenant_id, m.items.c.invoice_id == invoice_id, m.items.c.delivery_id.is_not(None))))
    if status is not None:
        conds.append(d.c.status == status)
    if cursor is not None:
        conds.append(tuple_(d.c.created_at, d.c.id) < tuple_(*_after_cursor(cursor)))
    rows = (await session.execute(select(d).where(and_(*conds)).order_by(d.c.created_at.desc(), d.c.id.desc())
                                  .limit(limit + 1))).all()
    items = [_delivery_view(r) for r in rows[:limit]]
    return items, _cursor(items[-1]) if len(rows) > limit else None


def _one(delivery_id: str, tenant_id: uuid.UUID | None) -> tuple[uuid.UUID, list[Any]]:
    """The delivery's id, and the conditions that find it (among the tenant's, when one is named)."""
    did = _uuid(delivery_id, "notification")
    conds = [m.deliveries.c.id == did]
    if tenant_id is not None:
        conds.append(m.deliveries.c.tenant_id == tenant_id)
    return did, conds


async def get_delivery(*, session: AsyncSession, tenant_id: uuid.UUID | None, delivery_id: str) -> dict[str, Any]:
    """One notification: its state, every attempt (status, latency, error) and the alerts it carried."""
    did, conds = _one(delivery_id, tenant_id)
    row = (await session.execute(select(m.deliveries).where(*conds))).first()
    if row is None:
        raise NotFound(f"no notification {delivery_id[:40]}")
    out = _delivery_view(row)
    out["attempt_log"] = [
        {"n": a.n, "at": a.at.isoformat(), "outcome": a.outcome, "status_code": a.status_code,
         "latency_ms": a.latency_ms, "error": a.error}
        for a in (await session.execute(select(m.attempts).where(m.attempts.c.delivery_id == did)
                                        .order_by(m.attempts.c.n, m.attempts.c.id))).all()]
    out["alerts"] = [
        {"alert_id": a.alert_id, "kind": a.kind, "invoice_id": str(a.invoice_id) if a.invoice_id else None,
         "number": a.number, "case_no": a.case_no}
        for a in (await session.execute(
            select(m.alerts).join(m.items, m.items.c.alert_id == m.alerts.c.alert_id)
            .where(m.items.c.delivery_id == did).order_by(m.items.c.id))).all()]
    return out


async def requeue_delivery(*, session: AsyncSession, tenant_id: uuid.UUID | None, delivery_id: str) -> dict[str, Any]:
    """Try an exhausted delivery again from now on: a fresh budget of attempts (numbered on from the last one),
    the same webhook-id."""
    did, conds = _one(delivery_id, tenant_id)
    row = (await session.execute(select(m.deliveries.c.status).where(*conds).with_for_update())).first()
    if row is None:
        raise NotFound(f"no notification {delivery_id[:40]}")
    if row.status != "exhausted":
        raise Conflict(f"only an exhausted notification can be retried; this one is {row.status}")
    await session.execute(update(m.deliveries).where(m.deliveries.c.id == did).values(
        status="pending", retried_from=m.deliveries.c.attempts, next_attempt_at=func.now(), finished_at=None))
    return await get_delivery(session=session, tenant_id=tenant_id, delivery_id=delivery_id)


async def recent_alerts(*, session: AsyncSession, tenant_id: uuid.UUID | None, limit: int) -> list[dict[str, Any]]:
    """The latest alerts taken in (newest first) and what became of them per channel: for operators."""
    a = m.alerts
    conds = [a.c.tenant_id == tenant_id] if tenant_id is not None else []
    rows = (await session.execute(select(a).where(*conds).order_by(a.c.received_at.desc(), a.c.alert_id)
                                  .limit(limit))).all()
    fates: dict[str, list[dict[str, Any]]] = {}
    if rows:
        for r in (await session.execute(
            # An item still waiting for its digest has no delivery yet: its channel is its subscription's.
            select(m.items.c.alert_id, m.items.c.status.label("item_status"),
                   func.coalesce(m.deliveries.c.channel, m.subscriptions.c.channel).label("channel"),
                   m.deliveries.c.status, m.deliveries.c.attempts)
            .select_from(m.items.outerjoin(m.deliveries, m.deliveries.c.id == m.items.c.delivery_id)
                         .join(m.subscriptions, m.subscriptions.c.id == m.items.c.subscription_id))
            .where(m.items.c.alert_id.in_([r.alert_id for r in rows]))
        )).all():
            fates.setdefault(r.alert_id, []).append(
                {"channel": r.channel, "status": r.status or r.item_status, "attempts": r.attempts or 0})
    return [{"alert_id": r.alert_id, "kind": r.kind, "tenant_id": str(r.tenant_id),
             "invoice_id": str(r.invoice_id) if r.invoice_id else None, "number": r.number, "case_no": r.case_no,
             "received_at": r.received_at.isoformat(), "reason": r.data.get("reason"),
             "deliveries": fates.get(r.alert_id, [])} for r in rows]
