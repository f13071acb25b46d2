"""Grouping: a subscription's waiting items become one delivery once the oldest of them is a digest window old
(a digest when there are several), so a burst of alerts is one message, not many. Callers own the transaction;
nothing here commits."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import models as m

__all__ = ["batch_due"]


async def batch_due(*, session: AsyncSession, window: float, limit: int = 100) -> int:
    """Subscriptions whose oldest waiting item is `window` old: all their waiting items become one delivery
    (a digest when there are several). Returns the number of deliveries created."""
    it = m.items
    due = (await session.execute(
        select(it.c.subscription_id).where(it.c.status == "pending").group_by(it.c.subscription_id)
        .having(func.min(it.c.created_at) <= func.now() - timedelta(seconds=window)).limit(limit)
    )).scalars().all()
    created = 0
    for sid in due:
        rows = (await session.execute(
            select(it.c.id, it.c.alert_id, it.c.tenant_id).where(it.c.subscription_id == sid, it.c.status == "pending")
            .order_by(it.c.id).with_for_update(skip_locked=True)
        )).all()
        if not rows:
            continue  # another batcher has them
        sub = (await session.execute(select(m.subscriptions.c.channel).where(m.subscriptions.c.id == sid))).one()
        did = uuid.uuid4()
        await session.execute(m.deliveries.insert().values(
            id=did, tenant_id=rows[0].tenant_id, subscription_id=sid, channel=sub.channel,
            kind="digest" if len(rows) > 1 else "single", alert_count=len(rows), status="pending",
            next_attempt_at=func.now()))
        await session.execute(update(it).where(it.c.id.in_([r.id for r in rows]))
                              .values(status="batched", delivery_id=did))
        created += 1
    return created
