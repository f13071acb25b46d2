"""Subscriptions: who wants which kinds of alert, by webhook (URL, signing secrets sealed at rest) or e-mail
(addresses). A tenant sees only its own; a deleted one stays for the history to name. Callers own the
transaction; nothing here commits."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import models as m
from services.notifier.guard import Refused, TargetPolicy
from services.notifier.signing import SecretBox, new_secret
from shared.contracts.notifier import SubscriptionCreate, SubscriptionPatch
from shared.errors import Conflict, FieldError, NotFound, ValidationFailed

__all__ = ["create_subscription", "delete_subscription", "get_subscription", "list_subscriptions", "rotate_secret",
           "signing_secrets", "subscription", "update_subscription"]

log = logging.getLogger(__name__)


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


async def subscription(session: AsyncSession, tenant_id: uuid.UUID, subscription_id: str, *,
                       for_update: bool = False) -> Any:
    """The tenant's subscription row (not deleted); NotFound otherwise."""
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
    return _view(await subscription(session, tenant_id, subscription_id))


async def update_subscription(*, session: AsyncSession, tenant_id: uuid.UUID, subscription_id: str,
                              patch: SubscriptionPatch, policy: TargetPolicy) -> dict[str, Any]:
    row = await subscription(session, tenant_id, subscription_id, for_update=True)
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
    row = await subscription(session, tenant_id, subscription_id, for_update=True)
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
    row = await subscription(session, tenant_id, subscription_id, for_update=True)
    if row.channel != "webhook":
        raise Conflict("only webhook subscriptions have a signing secret")
    now = datetime.now(UTC)
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
