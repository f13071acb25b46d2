"""Alerts in: each alert id is taken once, whether Kafka redelivered it or the reconciler re-sent it, and becomes
one waiting item per subscription of its tenant that wants its kind (muted ones are kept, marked muted). The end
of a problem stops its reminders and lifts its mutes. Callers own the transaction; nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import models as m
from services.notifier.mutes import is_muted
from services.notifier.schemas import AlertData
from shared.contracts.notifier import ENDINGS

__all__ = ["Intake", "fan_out", "intake_alerts", "take_alert"]


@dataclass
class Intake:
    new: dict[str, int] = field(default_factory=dict)  # by kind
    duplicates: int = 0
    items: int = 0
    muted: int = 0


async def take_alert(session: AsyncSession, event_type: str, a: AlertData, now: datetime) -> bool:
    """Keep the alert; False when its id was taken before (nothing is written then)."""
    inserted = (await session.execute(
        pg_insert(m.alerts).values(alert_id=a.alert_id, event_type=event_type, kind=a.kind, tenant_id=a.tenant_id,
                                   invoice_id=a.invoice_id, case_no=a.case_no, number=a.number,
                                   data=a.public(), received_at=now)
        .on_conflict_do_nothing().returning(m.alerts.c.alert_id)
    )).first()
    return inserted is not None


async def fan_out(session: AsyncSession, *, alert_id: str, kind: str, tenant_id: uuid.UUID,
                  invoice_id: uuid.UUID | None, muted: bool, stats: Intake) -> None:
    """One item per subscription of the tenant that wants this kind of alert."""
    subs = (await session.execute(
        select(m.subscriptions.c.id).where(
            m.subscriptions.c.tenant_id == tenant_id, m.subscriptions.c.deleted_at.is_(None),
            m.subscriptions.c.active.is_(True), m.subscriptions.c.kinds.any(kind))
    )).scalars().all()
    if not subs:
        return
    status = "muted" if muted else "pending"
    await session.execute(pg_insert(m.items).on_conflict_do_nothing(), [
        {"subscription_id": sid, "alert_id": alert_id, "tenant_id": tenant_id, "invoice_id": invoice_id,
         "status": status} for sid in subs])
    stats.items += len(subs)
    stats.muted += len(subs) if muted else 0


async def intake_alerts(*, session: AsyncSession, alerts: Sequence[tuple[str, AlertData]],
                        remind_after: float) -> Intake:
    """Take in alert events (event type, payload). An alert id seen before changes nothing, whether the event
    was redelivered by Kafka or re-sent by the reconciler: one notification per invoice per transition."""
    stats = Intake()
    now = datetime.now(UTC)
    for event_type, a in alerts:
        if not await take_alert(session, event_type, a, now):
            stats.duplicates += 1
            continue
        stats.new[a.kind] = stats.new.get(a.kind, 0) + 1
        if a.kind in ENDINGS:
            await _resolve(session, a, now)
            muted = False  # the end of the problem is always told, and it lifts the mute
        else:
            muted = await is_muted(session, a.tenant_id, a.invoice_id, a.case_no)
        if a.kind == "stuck" and a.invoice_id is not None:
            oc = m.open_cases
            stmt = pg_insert(oc).values(invoice_id=a.invoice_id, tenant_id=a.tenant_id, case_no=a.case_no,
                                        stuck_alert_id=a.alert_id, opened_at=now,
                                        remind_at=now + timedelta(seconds=remind_after))
            await session.execute(stmt.on_conflict_do_update(
                index_elements=[oc.c.invoice_id],
                set_={"case_no": stmt.excluded.case_no, "stuck_alert_id": stmt.excluded.stuck_alert_id,
                      "opened_at": stmt.excluded.opened_at, "remind_at": stmt.excluded.remind_at, "reminders": 0}))
        await fan_out(session, alert_id=a.alert_id, kind=a.kind, tenant_id=a.tenant_id, invoice_id=a.invoice_id,
                      muted=muted, stats=stats)
    return stats


async def _resolve(session: AsyncSession, a: AlertData, now: datetime) -> None:
    """The problem is over (recovered, resolved, closed or rejected for good): no more reminders, and mutes on
    the invoice or its case are lifted."""
    if a.invoice_id is not None:
        await session.execute(m.open_cases.delete().where(m.open_cases.c.invoice_id == a.invoice_id))
    conds = []
    if a.invoice_id is not None:
        conds.append(m.mutes.c.invoice_id == a.invoice_id)
    if a.case_no:
        conds.append(m.mutes.c.case_no == a.case_no)
    if conds:
        await session.execute(update(m.mutes).where(m.mutes.c.tenant_id == a.tenant_id,
                                                    m.mutes.c.lifted_at.is_(None), or_(*conds))
                              .values(lifted_at=now, lifted_by="resolution"))
