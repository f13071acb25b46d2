"""The notifier's deliveries -> "alert sent via webhook at ..." (or "could not be delivered") on the timeline."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.explain import describe_notification
from shared.db import mark_processed
from shared.envelope import Received
from shared.events import NotificationFailed, NotificationSent

__all__ = ["apply_notifications"]


async def apply_notifications(*, session: AsyncSession,
                              events: Sequence[Received[NotificationSent | NotificationFailed]], group: str) -> int:
    """Each delivery on its invoice's timeline, once per event id; notices about invoices of another tenant or
    unknown here are dropped. Returns how many were recorded."""
    ids = {uuid.UUID(r.envelope.subject) for r in events}
    owners = dict((await session.execute(
        select(m.invoices.c.id, m.invoices.c.tenant_id).where(m.invoices.c.id.in_(ids))
    )).all())
    rows = []
    for r in events:
        e = r.envelope
        iid = uuid.UUID(e.subject)
        if str(owners.get(iid)) != e.tenant:
            continue
        kind, message = describe_notification(e.type, r.event.model_dump(mode="json"))
        if not await mark_processed(session, m.processed_events, group=group, event_id=e.id):
            continue  # redelivered
        rows.append({"invoice_id": iid, "at": datetime.now(UTC), "kind": kind, "message": message,
                     "detail": {"event_id": e.id, **e.data}})
    if rows:
        await session.execute(m.timeline.insert(), rows)
    return len(rows)
