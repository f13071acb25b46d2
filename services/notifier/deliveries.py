"""The delivery schedule: due deliveries claimed under a lease, each attempt recorded with the delivery's next
state (delivered, retried after a backoff, exhausted), and once a delivery is over, one event per invoice for the
issuer's timeline in the same transaction. Also the test delivery (ping) and the queue as operators see it.
Callers own the transaction; nothing here commits; the channels (channels.py) do the sending."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import models as m
from services.notifier.signing import SecretBox
from services.notifier.subscriptions import signing_secrets, subscription
from shared.backoff import backoff
from shared.contracts.notifier import KINDS
from shared.envelope import encode, new_envelope
from shared.errors import TooManyRequests
from shared.events import NOTIFIER_SOURCE, NotificationFailed, NotificationSent
from shared.metrics import RATE_LIMITED
from shared.outbox import notify_outbox

__all__ = ["Attempted", "Claimed", "cancel", "claim_deliveries", "mask_email", "msg_id", "queue_report",
           "record_attempt", "send_ping"]

Attempted = Literal["delivered", "failed", "exhausted", "stale"]
"""What became of an attempt: `failed` is tried again later; `stale`, recorded by another sender already."""


def msg_id(delivery_id: uuid.UUID) -> str:
    """The webhook-id of a delivery: the same on every attempt."""
    return f"msg_{delivery_id.hex}"


def mask_email(address: str) -> str:
    """finance@example.com -> f******@example.com (history and events never show whole addresses)."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}{'*' * max(len(local) - 1, 1)}@{domain}"


PING_WINDOW = timedelta(seconds=60)


async def send_ping(*, session: AsyncSession, tenant_id: uuid.UUID, subscription_id: str,
                    per_minute: int) -> dict[str, Any]:
    """A test delivery to this subscription now (signed like any other; no invoice involved). At most
    `per_minute` in any 60 seconds per subscription, counted in the database (so across notifier replicas and
    restarts): pings must not become a way to aim traffic at someone else's URL. TooManyRequests beyond."""
    row = await subscription(session, tenant_id, subscription_id, for_update=True)  # one ping at a time here
    d = m.deliveries
    # The per_minute-th most recent ping: while it is younger than the window, the window is full.
    full_until = (await session.execute(
        select(func.extract("epoch", d.c.created_at + PING_WINDOW - func.now()))
        .where(d.c.tenant_id == tenant_id, d.c.subscription_id == row.id, d.c.kind == "ping",
               d.c.created_at > func.now() - PING_WINDOW)
        .order_by(d.c.created_at.desc()).offset(per_minute - 1).limit(1))).scalar()
    if full_until is not None:
        retry_after = max(1, math.ceil(float(full_until)))
        RATE_LIMITED.labels("notifier", "ping", "rate").inc()
        raise TooManyRequests(
            f"this subscription was pinged {per_minute} times in the last minute, the most it may be; retry after "
            f"{retry_after}s", retry_after=retry_after,
            extra={"budget": "ping", "limit": per_minute, "window_seconds": 60, "retry_after_seconds": retry_after})
    did = uuid.uuid4()
    await session.execute(m.deliveries.insert().values(
        id=did, tenant_id=tenant_id, subscription_id=row.id, channel=row.channel, kind="ping", alert_count=0,
        status="pending", next_attempt_at=func.now()))
    return {"delivery_id": str(did), "webhook_id": msg_id(did) if row.channel == "webhook" else None,
            "status": "pending"}


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    tenant_id: uuid.UUID
    subscription_id: uuid.UUID
    channel: str
    kind: str
    attempts: int
    retried_from: int
    created_at: datetime
    url: str | None
    emails: list[str]
    usable: bool  # the subscription still exists and is active
    alerts: list[dict[str, Any]]
    secrets: list[str]


async def claim_deliveries(*, session: AsyncSession, limit: int, lease_seconds: float,
                           box: SecretBox) -> list[Claimed]:
    """Due deliveries, leased: no other sender takes them until the lease ends (a crash then means a retry
    with the same webhook-id, never a lost delivery)."""
    d = m.deliveries
    due = (select(d.c.id).where(d.c.status == "pending", d.c.next_attempt_at <= func.now())
           .order_by(d.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True)).scalar_subquery()
    rows = (await session.execute(
        update(d).where(d.c.id.in_(due)).values(next_attempt_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(d.c.id, d.c.tenant_id, d.c.subscription_id, d.c.channel, d.c.kind, d.c.attempts,
                   d.c.retried_from, d.c.created_at)
    )).all()
    if not rows:
        return []
    subs = {r.id: r for r in (await session.execute(
        select(m.subscriptions).where(m.subscriptions.c.id.in_({r.subscription_id for r in rows}))
    )).all()}
    alerts: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for item in (await session.execute(
        select(m.items.c.delivery_id, m.alerts.c.data).join(m.alerts, m.alerts.c.alert_id == m.items.c.alert_id)
        .where(m.items.c.delivery_id.in_([r.id for r in rows])).order_by(m.items.c.id)
    )).all():
        alerts.setdefault(item.delivery_id, []).append(dict(item.data))
    out = []
    for r in rows:
        sub = subs[r.subscription_id]
        usable = sub.active and sub.deleted_at is None
        secrets = await signing_secrets(session, sub.id, box) if usable and sub.channel == "webhook" else []
        out.append(Claimed(r.id, r.tenant_id, r.subscription_id, r.channel, r.kind, r.attempts, r.retried_from,
                           r.created_at, sub.url, list(sub.emails or []), usable, alerts.get(r.id, []), secrets))
    return out


async def record_attempt(*, session: AsyncSession, delivery: Claimed, ok: bool, status_code: int | None,
                         latency_ms: int | None, error: str | None, permanent: bool, max_attempts: int,
                         retry_base: float, retry_cap: float, notifications_topic: str) -> Attempted:
    """The attempt's row and the delivery's new state; when it is over (delivered or exhausted), one event per
    invoice for the issuer's timeline, in the same transaction."""
    d = m.deliveries
    n = delivery.attempts + 1
    now = datetime.now(UTC)
    outcome: Attempted
    if ok:
        outcome = "delivered"
        values: dict[str, Any] = {"status": "delivered", "finished_at": now, "next_attempt_at": None,
                                  "last_error": None}
    elif permanent or n - delivery.retried_from >= max_attempts:
        outcome = "exhausted"
        values = {"status": "exhausted", "finished_at": now, "next_attempt_at": None, "last_error": error}
    else:
        outcome = "failed"
        # After the n-th failed attempt: doubling from base up to cap, never less than half the step.
        wait = backoff(n - 1, base=retry_base, cap=retry_cap, jitter="equal")
        values = {"next_attempt_at": now + timedelta(seconds=wait), "last_error": error}
    changed = (await session.execute(
        update(d).where(d.c.id == delivery.id, d.c.status == "pending", d.c.attempts == delivery.attempts)
        .values(attempts=n, **values).returning(d.c.id)
    )).first()
    if changed is None:
        return "stale"  # cancelled meanwhile, or the lease ran out and another sender recorded this attempt
    await session.execute(m.attempts.insert().values(delivery_id=delivery.id, n=n, at=now, outcome=outcome,
                                                     status_code=status_code, latency_ms=latency_ms, error=error))
    if outcome != "failed" and delivery.kind != "ping":
        await _announce(session, delivery, outcome, n, now, error, notifications_topic)
    return outcome


def _target(delivery: Claimed) -> str:
    if delivery.channel == "webhook":
        return urlsplit(delivery.url or "").hostname or ""
    return ", ".join(mask_email(e) for e in delivery.emails)


async def _announce(session: AsyncSession, delivery: Claimed, outcome: str, attempts: int, now: datetime,
                    error: str | None, topic: str) -> None:
    rows = []
    for a in delivery.alerts:
        if not a.get("invoice_id"):
            continue  # orphans are about no invoice of ours
        model = NotificationSent if outcome == "delivered" else NotificationFailed
        event = model(invoice_id=a["invoice_id"], delivery_id=delivery.id, channel=delivery.channel,
                      alert_kind=a["kind"], alert_id=a["alert_id"], case_no=a.get("case_no"),
                      digest=delivery.kind == "digest", alert_count=len(delivery.alerts), attempts=attempts, at=now,
                      target=_target(delivery), error=error)
        env = new_envelope(source=NOTIFIER_SOURCE, event=event, subject=a["invoice_id"],
                           tenant=str(delivery.tenant_id), sequence=1,
                           id=str(uuid.uuid5(delivery.id, a["invoice_id"] + ":" + a["alert_id"])))
        rows.append({"topic": topic, "key": a["invoice_id"], "event_id": env.id, "event_type": env.type,
                     "payload": encode(env)})
    if rows:
        await session.execute(m.outbox.insert(), rows)
        await notify_outbox(session, m.outbox)


async def cancel(*, session: AsyncSession, delivery: Claimed, reason: str) -> None:
    await session.execute(update(m.deliveries).where(m.deliveries.c.id == delivery.id,
                                                     m.deliveries.c.status == "pending")
                          .values(status="cancelled", finished_at=func.now(), next_attempt_at=None, last_error=reason))


async def queue_report(*, session: AsyncSession) -> dict[str, Any]:
    """Pending deliveries by channel (and how many are retries), the oldest one's age, outcomes so far; all
    read through the partial index of pending deliveries except the outcome counts."""
    d = m.deliveries
    pending = (await session.execute(
        select(d.c.channel, func.count(), func.count().filter(d.c.attempts > 0),
               func.extract("epoch", func.now() - func.min(d.c.created_at)))
        .where(d.c.status == "pending").group_by(d.c.channel)
    )).all()
    waiting = (await session.execute(
        select(func.count(), func.extract("epoch", func.now() - func.min(m.items.c.created_at)))
        .where(m.items.c.status == "pending"))).one()
    return {
        "pending": {r[0]: int(r[1]) for r in pending},
        "retrying": {r[0]: int(r[2]) for r in pending},
        "oldest_pending_seconds": max((float(r[3]) for r in pending), default=0.0),
        "waiting_for_digest": int(waiting[0]),
        "oldest_waiting_seconds": float(waiting[1] or 0.0),
        "kinds": list(KINDS),
    }
