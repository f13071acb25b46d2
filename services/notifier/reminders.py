"""Reminders: a stuck invoice whose case is still open after FAPIAO_REMIND_AFTER gets a reminder alert, unless
muted, and the clock starts again. Callers own the transaction; nothing here commits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import models as m
from services.notifier.intake import Intake, fan_out, take_alert
from services.notifier.mutes import is_muted
from services.notifier.schemas import AlertData

__all__ = ["due_reminders"]

_REMINDER_NS = uuid.UUID("1b0f3c52-8a4e-4f7e-9d55-62c0f1a7b3e4")


async def due_reminders(*, session: AsyncSession, remind_after: float, limit: int) -> Intake:
    """Stuck invoices whose case is still open after `remind_after` (since the alert or the last reminder):
    one reminder alert each, unless muted, then the clock starts again."""
    oc = m.open_cases
    rows = (await session.execute(
        select(oc, m.alerts.c.data).join(m.alerts, m.alerts.c.alert_id == oc.c.stuck_alert_id)
        .where(oc.c.remind_at <= func.now()).order_by(oc.c.remind_at).limit(limit).with_for_update(of=oc,
                                                                                                  skip_locked=True)
    )).all()
    stats = Intake()
    now = datetime.now(UTC)
    for r in rows:
        muted = await is_muted(session, r.tenant_id, r.invoice_id, r.case_no)
        await session.execute(update(oc).where(oc.c.invoice_id == r.invoice_id).values(
            remind_at=now + timedelta(seconds=remind_after), reminders=oc.c.reminders + (0 if muted else 1)))
        if muted:
            continue  # checked again after another interval
        n = r.reminders + 1
        alert_id = str(uuid.uuid5(_REMINDER_NS, f"{r.invoice_id}:{r.case_no}:{n}"))
        hours = (now - r.opened_at).total_seconds() / 3600
        data = dict(r.data)
        data.update(alert_id=alert_id, kind="reminder", at=now.isoformat(),
                    reason=(f"Still not confirmed at the tax authority: case {r.case_no or '—'} has been open for "
                            f"{hours:.1f} h (reminder {n}). First reported: {data.get('reason', '')}")[:2000])
        reminder = AlertData.model_validate({**data, "tenant_id": r.tenant_id})
        if not await take_alert(session, "reminder", reminder, now):
            continue
        stats.new["reminder"] = stats.new.get("reminder", 0) + 1
        await fan_out(session, alert_id=alert_id, kind="reminder", tenant_id=r.tenant_id, invoice_id=r.invoice_id,
                      muted=False, stats=stats)
    return stats
