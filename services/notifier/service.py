"""The notifier's use cases: subscriptions and their secrets, taking in alerts (once each), grouping them into
deliveries per subscription and digest window, the delivery schedule and its attempts, mutes, reminders and
the history tenants read. Callers own the transaction; nothing here commits. HTTP and Kafka are the doors
(api.py, worker.py); the channels (channels.py) do the sending.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import models as m
from services.notifier.guard import Refused, TargetPolicy
from services.notifier.schemas import AlertData
from services.notifier.signing import SecretBox, new_secret
from shared.backoff import backoff
from shared.contracts.notifier import ENDINGS, KINDS, SubscriptionCreate, SubscriptionPatch
from shared.envelope import encode, new_envelope
from shared.errors import Conflict, FieldError, NotFound, ValidationFailed
from shared.events import NOTIFIER_SOURCE, NotificationFailed, NotificationSent
from shared.outbox import notify_outbox

__all__ = [
    "Claimed", "Intake", "batch_due", "claim_deliveries", "create_subscription", "delete_subscription",
    "due_reminders", "get_delivery", "get_subscription", "intake_alerts", "list_deliveries", "list_mutes",
    "list_subscriptions", "mask_email", "mute", "queue_report", "recent_alerts", "record_attempt",
    "requeue_delivery",
    "rotate_secret", "send_ping", "unmute", "update_subscription",
]

log = logging.getLogger(__name__)

_REMINDER_NS = uuid.UUID("1b0f3c52-8a4e-4f7e-9d55-62c0f1a7b3e4")


def _now() -> datetime:
    return datetime.now(UTC)


def msg_id(delivery_id: uuid.UUID) -> str:
    """The webhook-id of a delivery: the same on every attempt."""
    return f"msg_{delivery_id.hex}"


def mask_email(address: str) -> str:
    """finance@example.com -> f******@example.com (history and events never show whole addresses)."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}{'*' * max(len(local) - 1, 1)}@{domain}"


# --- subscriptions ---------------------------------------------------------------------------

def _view(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(row.id), "channel": row.channel, "kinds": list(row.kinds), "description": row.description,
        "active": row.active, "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat(),
    }
    if row.channel == "webhook":
        out["url"] = row.url
    else:
        out["emails"] = list(row.emails or [])
    return out


async def _check_url(policy: TargetPolicy, url: str) -> None:
    try:
        await policy.check(url)
    except Refused as exc:
        raise ValidationFailed([FieldError("url", str(exc))]) from None


async def create_subscription(*, session: AsyncSession, tenant_id: uuid.UUID, body: SubscriptionCreate,
                              policy: TargetPolicy, box: SecretBox) -> dict[str, Any]:
    """A new subscription; for a webhook, its signing secret is in the answer, this once only."""
    if problems := body.field_problems():
        raise ValidationFailed(problems)
    sid = uuid.uuid4()
    values: dict[str, Any] = {"id": sid, "tenant_id": tenant_id, "channel": body.channel, "kinds": body.kinds,
                              "description": body.description}
    secret = None
    if body.url is not None:
        await _check_url(policy, body.url)
        values["url"] = body.url
        secret = new_secret()
    else:
        values["emails"] = body.emails
    row = (await session.execute(m.subscriptions.insert().values(**values).returning(m.subscriptions))).one()
    if secret is not None:
        await session.execute(m.signing_secrets.insert().values(subscription_id=sid, sealed=box.seal(secret)))
    view = _view(row)
    if secret is not None:
        view["secret"] = secret
        view["secret_shown_once"] = True  # store it now: it signs every webhook (Standard Webhooks, v1)
    return view


async def _subscription(session: AsyncSession, tenant_id: uuid.UUID, subscription_id: str, *,
                        for_update: bool = False) -> Any:
    try:
        sid = uuid.UUID(subscription_id)
    except ValueError:
        raise NotFound(f"no subscription {subscription_id[:40]}") from None
    stmt = select(m.subscriptions).where(m.subscriptions.c.id == sid, m.subscriptions.c.tenant_id == tenant_id,
                                         m.subscriptions.c.deleted_at.is_(None))
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    if row is None:  # another tenant's subscription is no subscription at all
        raise NotFound(f"no subscription {subscription_id[:40]}")
    return row


async def list_subscriptions(*, session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = (await session.execute(
        select(m.subscriptions).where(m.subscriptions.c.tenant_id == tenant_id, m.subscriptions.c.deleted_at.is_(None))
        .order_by(m.subscriptions.c.created_at)
    )).all()
    return [_view(r) for r in rows]


async def get_subscription(*, session: AsyncSession, tenant_id: uuid.UUID, subscription_id: str) -> dict[str, Any]:
    return _view(await _subscription(session, tenant_id, subscription_id))


async def update_subscription(*, session: AsyncSession, tenant_id: uuid.UUID, subscription_id: str,
                              patch: SubscriptionPatch, policy: TargetPolicy) -> dict[str, Any]:
    row = await _subscription(session, tenant_id, subscription_id, for_update=True)
    changes = patch.model_dump(exclude_unset=True)
    if "url" in changes and row.channel != "webhook":
        raise ValidationFailed([FieldError("url", "only a webhook subscription has a url")])
    if "emails" in changes and row.channel != "email":
        raise ValidationFailed([FieldError("emails", "only an e-mail subscription has addresses")])
    if changes.get("url") is not None:
        await _check_url(policy, changes["url"])
    for key in ("url", "emails", "kinds", "active"):
        if key in changes and changes[key] is None:
            raise ValidationFailed([FieldError(key, "may not be null")])
    if not changes:
        return _view(row)
    new = (await session.execute(
        update(m.subscriptions).where(m.subscriptions.c.id == row.id)
        .values(**changes, updated_at=func.now()).returning(m.subscriptions)
    )).one()
    return _view(new)


async def delete_subscription(*, session: AsyncSession, tenant_id: uuid.UUID, subscription_id: str) -> None:
    """Soft delete (the history keeps naming it); waiting items are dropped and pending deliveries cancelled."""
    row = await _subscription(session, tenant_id, subscription_id, for_update=True)
    await session.execute(update(m.subscriptions).where(m.subscriptions.c.id == row.id)
                          .values(deleted_at=func.now(), active=False, updated_at=func.now()))
    await session.execute(update(m.items).where(m.items.c.subscription_id == row.id, m.items.c.status == "pending")
                          .values(status="dropped"))
    await session.execute(
        update(m.deliveries).where(m.deliveries.c.subscription_id == row.id, m.deliveries.c.status == "pending")
        .values(status="cancelled", finished_at=func.now(), next_attempt_at=None,
                last_error="the subscription was deleted"))


async def rotate_secret(*, session: AsyncSession, tenant_id: uuid.UUID, subscription_id: str, overlap_seconds: int,
                        box: SecretBox) -> dict[str, Any]:
    """A new signing secret; the current one keeps signing beside it for `overlap_seconds`, then expires."""
    row = await _subscription(session, tenant_id, subscription_id, for_update=True)
    if row.channel != "webhook":
        raise Conflict("only webhook subscriptions have a signing secret")
    now = _now()
    until = now + timedelta(seconds=overlap_seconds)
    s = m.signing_secrets
    # Older secrets still in their overlap keep their own expiry (never extended); the current one gets one.
    await session.execute(update(s).where(s.c.subscription_id == row.id, s.c.expires_at.is_(None))
                          .values(expires_at=until))
    secret = new_secret()
    await session.execute(s.insert().values(subscription_id=row.id, sealed=box.seal(secret), created_at=now))
    return {"id": str(row.id), "secret": secret, "previous_secret_expires_at": until.isoformat(),
            "secret_shown_once": True}  # until previous_secret_expires_at both secrets sign each webhook


async def signing_secrets(session: AsyncSession, subscription_id: uuid.UUID, box: SecretBox) -> list[str]:
    """The secrets that sign now: the current one first, then any still in their overlap window."""
    s = m.signing_secrets
    rows = (await session.execute(
        select(s.c.sealed).where(s.c.subscription_id == subscription_id,
                                 or_(s.c.expires_at.is_(None), s.c.expires_at > func.now()))
        .order_by(s.c.expires_at.desc().nulls_first(), s.c.id.desc())
    )).scalars().all()
    readable = []
    for sealed in rows:
        try:
            readable.append(box.open(sealed))
        except ValueError:
            # Sealed under another FAPIAO_SECRETS_KEY: skip it (the others still sign); if none is left the
            # delivery fails on its own, never the whole batch. The tenant's way out is to rotate the secret.
            log.error("a signing secret of subscription %s cannot be decrypted (FAPIAO_SECRETS_KEY changed?)",
                      subscription_id)
    return readable


# --- alerts in -------------------------------------------------------------------------------

@dataclass
class Intake:
    new: dict[str, int] = field(default_factory=dict)  # by kind
    duplicates: int = 0
    items: int = 0
    muted: int = 0


async def _muted(session: AsyncSession, tenant_id: uuid.UUID, invoice_id: uuid.UUID | None,
                 case_no: str | None) -> bool:
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


async def _fan_out(session: AsyncSession, *, alert_id: str, kind: str, tenant_id: uuid.UUID,
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
    now = _now()
    for event_type, a in alerts:
        inserted = (await session.execute(
            pg_insert(m.alerts).values(alert_id=a.alert_id, event_type=event_type, kind=a.kind, tenant_id=a.tenant_id,
                                       invoice_id=a.invoice_id, case_no=a.case_no, number=a.number,
                                       data=a.public(), received_at=now)
            .on_conflict_do_nothing().returning(m.alerts.c.alert_id)
        )).first()
        if inserted is None:
            stats.duplicates += 1
            continue
        stats.new[a.kind] = stats.new.get(a.kind, 0) + 1
        if a.kind in ENDINGS:
            await _resolve(session, a, now)
            muted = False  # the end of the problem is always told, and it lifts the mute
        else:
            muted = await _muted(session, a.tenant_id, a.invoice_id, a.case_no)
        if a.kind == "stuck" and a.invoice_id is not None:
            oc = m.open_cases
            stmt = pg_insert(oc).values(invoice_id=a.invoice_id, tenant_id=a.tenant_id, case_no=a.case_no,
                                        stuck_alert_id=a.alert_id, opened_at=now,
                                        remind_at=now + timedelta(seconds=remind_after))
            await session.execute(stmt.on_conflict_do_update(
                index_elements=[oc.c.invoice_id],
                set_={"case_no": stmt.excluded.case_no, "stuck_alert_id": stmt.excluded.stuck_alert_id,
                      "opened_at": stmt.excluded.opened_at, "remind_at": stmt.excluded.remind_at, "reminders": 0}))
        await _fan_out(session, alert_id=a.alert_id, kind=a.kind, tenant_id=a.tenant_id, invoice_id=a.invoice_id,
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
    now = _now()
    for r in rows:
        muted = await _muted(session, r.tenant_id, r.invoice_id, r.case_no)
        await session.execute(update(oc).where(oc.c.invoice_id == r.invoice_id).values(
            remind_at=now + timedelta(seconds=remind_after), reminders=oc.c.reminders + (0 if muted else 1)))
        if muted:
            continue  # checked again after another interval
        n = r.reminders + 1
        alert_id = str(uuid.uuid5(_REMINDER_NS, f"{r.invoice_id}:{r.case_no}:{n}"))
        age = now - r.opened_at
        hours = age.total_seconds() / 3600
        data = dict(r.data)
        data.update(alert_id=alert_id, kind="reminder", at=now.isoformat(),
                    reason=(f"Still not confirmed at the tax authority: case {r.case_no or '—'} has been open for "
                            f"{hours:.1f} h (reminder {n}). First reported: {data.get('reason', '')}")[:2000])
        reminder = AlertData.model_validate({**data, "tenant_id": r.tenant_id})
        inserted = (await session.execute(
            pg_insert(m.alerts).values(alert_id=alert_id, event_type="reminder", kind="reminder",
                                       tenant_id=r.tenant_id, invoice_id=r.invoice_id, case_no=r.case_no,
                                       number=reminder.number, data=reminder.public(), received_at=now)
            .on_conflict_do_nothing().returning(m.alerts.c.alert_id)
        )).first()
        if inserted is None:
            continue
        stats.new["reminder"] = stats.new.get("reminder", 0) + 1
        await _fan_out(session, alert_id=alert_id, kind="reminder", tenant_id=r.tenant_id, invoice_id=r.invoice_id,
                       muted=False, stats=stats)
    return stats


# --- grouping into deliveries -----------------------------------------------------------------

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


async def send_ping(*, session: AsyncSession, tenant_id: uuid.UUID, subscription_id: str) -> dict[str, Any]:
    """A test delivery to this subscription now (signed like any other; no invoice involved)."""
    row = await _subscription(session, tenant_id, subscription_id)
    did = uuid.uuid4()
    await session.execute(m.deliveries.insert().values(
        id=did, tenant_id=tenant_id, subscription_id=row.id, channel=row.channel, kind="ping", alert_count=0,
        status="pending", next_attempt_at=func.now()))
    return {"delivery_id": str(did), "webhook_id": msg_id(did) if row.channel == "webhook" else None,
            "status": "pending"}


# --- sending ------------------------------------------------------------------------------------

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
                         retry_base: float, retry_cap: float, notifications_topic: str) -> str:
    """The attempt's row and the delivery's new state; when it is over (delivered or exhausted), one event per
    invoice for the issuer's timeline, in the same transaction. Returns delivered | failed | exhausted."""
    d = m.deliveries
    n = delivery.attempts + 1
    now = _now()
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
        from urllib.parse import urlsplit

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


async def requeue_delivery(*, session: AsyncSession, tenant_id: uuid.UUID | None, delivery_id: str) -> dict[str, Any]:
    """Try an exhausted delivery again from now on: a fresh budget of attempts (numbered on from the last one),
    the same webhook-id."""
    did = _uuid(delivery_id, "notification")
    conds = [m.deliveries.c.id == did]
    if tenant_id is not None:
        conds.append(m.deliveries.c.tenant_id == tenant_id)
    row = (await session.execute(select(m.deliveries.c.status).where(*conds).with_for_update())).first()
    if row is None:
        raise NotFound(f"no notification {delivery_id[:40]}")
    if row.status != "exhausted":
        raise Conflict(f"only an exhausted notification can be retried; this one is {row.status}")
    await session.execute(update(m.deliveries).where(m.deliveries.c.id == did).values(
        status="pending", retried_from=m.deliveries.c.attempts, next_attempt_at=func.now(), finished_at=None))
    return await get_delivery(session=session, tenant_id=tenant_id, delivery_id=delivery_id)


# --- mutes ----------------------------------------------------------------------------------------

async def mute(*, session: AsyncSession, tenant_id: uuid.UUID, invoice_id: uuid.UUID | None = None,
               case_no: str | None = None) -> tuple[dict[str, Any], bool]:
    """Silence an invoice or a case until it resolves (its resolution is still told). Returns (mute, created)."""
    mu = m.mutes
    where = mu.c.invoice_id == invoice_id if invoice_id is not None else mu.c.case_no == case_no
    existing = (await session.execute(
        select(mu).where(mu.c.tenant_id == tenant_id, mu.c.lifted_at.is_(None), where))).first()
    if existing is not None:
        return _mute_view(existing), False
    stmt = pg_insert(mu).values(tenant_id=tenant_id, invoice_id=invoice_id, case_no=case_no).on_conflict_do_nothing()
    row = (await session.execute(stmt.returning(mu))).first()
    if row is None:  # a concurrent request created it
        row = (await session.execute(select(mu).where(mu.c.tenant_id == tenant_id, mu.c.lifted_at.is_(None),
                                                      where))).one()
        return _mute_view(row), False
    # What waits for its digest window is silenced too.
    it = m.items
    waiting = (select(it.c.id).join(m.alerts, m.alerts.c.alert_id == it.c.alert_id)
               .where(it.c.tenant_id == tenant_id, it.c.status == "pending", m.alerts.c.kind.notin_(ENDINGS),
                      m.alerts.c.invoice_id == invoice_id if invoice_id is not None
                      else m.alerts.c.case_no == case_no))
    await session.execute(update(it).where(it.c.id.in_(waiting.scalar_subquery())).values(status="muted"))
    return _mute_view(row), True


async def unmute(*, session: AsyncSession, tenant_id: uuid.UUID, invoice_id: uuid.UUID | None = None,
                 case_no: str | None = None) -> None:
    mu = m.mutes
    where = mu.c.invoice_id == invoice_id if invoice_id is not None else mu.c.case_no == case_no
    done = (await session.execute(update(mu).where(mu.c.tenant_id == tenant_id, mu.c.lifted_at.is_(None), where)
                                  .values(lifted_at=func.now(), lifted_by="tenant").returning(mu.c.id))).first()
    if done is None:
        raise NotFound("nothing is muted here")


def _mute_view(row: Any) -> dict[str, Any]:
    return {"invoice_id": str(row.invoice_id) if row.invoice_id else None, "case_no": row.case_no,
            "muted_at": row.created_at.isoformat(), "until": "resolved"}


async def list_mutes(*, session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    mu = m.mutes
    rows = (await session.execute(select(mu).where(mu.c.tenant_id == tenant_id, mu.c.lifted_at.is_(None))
                                  .order_by(mu.c.id))).all()
    return [_mute_view(r) for r in rows]


# --- history ----------------------------------------------------------------------------------

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


async def get_delivery(*, session: AsyncSession, tenant_id: uuid.UUID | None, delivery_id: str) -> dict[str, Any]:
    """One notification: its state, every attempt (status, latency, error) and the alerts it carried."""
    did = _uuid(delivery_id, "notification")
    conds = [m.deliveries.c.id == did]
    if tenant_id is not None:
        conds.append(m.deliveries.c.tenant_id == tenant_id)
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


async def recent_alerts(*, session: AsyncSession, tenant_id: uuid.UUID | None, limit: int) -> list[dict[str, Any]]:
    """The latest alerts taken in (newest first) and what became of them per channel: for operators."""
    a = m.alerts
    conds = [a.c.tenant_id == tenant_id] if tenant_id is not None else []
    rows = (await session.execute(select(a).where(*conds).order_by(a.c.received_at.desc(), a.c.alert_id)
                                  .limit(limit))).all()
    fates: dict[str, list[dict[str, Any]]] = {}
    if rows:
        for r in (await session.execute(
            select(m.items.c.alert_id, m.items.c.status.label("item_status"), m.deliveries.c.channel,
                   m.deliveries.c.status, m.deliveries.c.attempts)
            .select_from(m.items.outerjoin(m.deliveries, m.deliveries.c.id == m.items.c.delivery_id))
            .where(m.items.c.alert_id.in_([r.alert_id for r in rows]))
        )).all():
            fates.setdefault(r.alert_id, []).append(
                {"channel": r.channel, "status": r.status or r.item_status, "attempts": r.attempts or 0})
    return [{"alert_id": r.alert_id, "kind": r.kind, "tenant_id": str(r.tenant_id),
             "invoice_id": str(r.invoice_id) if r.invoice_id else None, "number": r.number, "case_no": r.case_no,
             "received_at": r.received_at.isoformat(), "reason": r.data.get("reason"),
             "deliveries": fates.get(r.alert_id, [])} for r in rows]


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
