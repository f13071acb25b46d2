"""A tenant's API keys over their life: several at once, each with a name (label); issued (shown once), listed
(never the key, only its first characters), revoked, rotated with an overlap, and optionally expiring.

Rotation issues a new key under the same label and lets the old one work on for `overlap_seconds` (a day by
default), so an ERP can switch without a moment where neither key works. A replica keeps a key it has just
checked for FAPIAO_API_KEY_CACHE_SECONDS (1 s) and reads the key's row again after (tenants.authenticate), so a
revocation holds within a second on every issuer replica.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.tenants import hash_key, issue_api_key
from shared.errors import Conflict, NotFound

__all__ = ["IssuedKey", "create_key", "key_view", "list_keys", "revoke_key", "rotate_key"]


@dataclass(frozen=True)
class IssuedKey:
    key: str  # in this answer only
    view: dict[str, Any]


def key_view(row: Any, now: datetime) -> dict[str, Any]:
    """A key as operators see it: never the key or its hash."""
    if row.revoked_at is not None:
        state = "revoked"
    elif row.expires_at is not None and row.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    iso = lambda t: t.isoformat() if t is not None else None  # noqa: E731
    return {"id": str(row.id), "tenant_id": str(row.tenant_id), "label": row.label, "prefix": row.prefix,
            "state": state, "created_at": iso(row.created_at), "expires_at": iso(row.expires_at),
            "revoked_at": iso(row.revoked_at), "last_used_at": iso(row.last_used_at)}


async def _tenant_exists(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    if (await session.execute(select(m.tenants.c.id).where(m.tenants.c.id == tenant_id))).first() is None:
        raise NotFound(f"no tenant {tenant_id}")


async def _row(session: AsyncSession, tenant_id: uuid.UUID, key_id: uuid.UUID, *, lock: bool = False) -> Any:
    query = select(m.api_keys, func.now().label("now")).where(m.api_keys.c.id == key_id,
                                                              m.api_keys.c.tenant_id == tenant_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound(f"no key {key_id} for tenant {tenant_id}")
    return row


async def list_keys(*, session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    await _tenant_exists(session, tenant_id)
    rows = (await session.execute(
        select(m.api_keys, func.now().label("now")).where(m.api_keys.c.tenant_id == tenant_id)
        .order_by(m.api_keys.c.created_at, m.api_keys.c.id))).all()
    return [key_view(r, r.now) for r in rows]


async def create_key(*, session: AsyncSession, tenant_id: uuid.UUID, label: str,
                     expires_in_seconds: float | None = None) -> IssuedKey:
    await _tenant_exists(session, tenant_id)
    key = await issue_api_key(session=session, tenant_id=tenant_id, label=label)
    if expires_in_seconds is not None:
        await session.execute(update(m.api_keys).where(m.api_keys.c.key_hash == hash_key(key)).values(
            expires_at=func.now() + timedelta(seconds=expires_in_seconds)))
    row = (await session.execute(select(m.api_keys, func.now().label("now"))
                                 .where(m.api_keys.c.key_hash == hash_key(key)))).one()
    return IssuedKey(key, key_view(row, row.now))


async def revoke_key(*, session: AsyncSession, tenant_id: uuid.UUID, key_id: uuid.UUID) -> dict[str, Any]:
    """Revoke now (a revoked key stays listed, as revoked); revoking it again changes nothing."""
    row = await _row(session, tenant_id, key_id, lock=True)
    if row.revoked_at is None:
        await session.execute(update(m.api_keys).where(m.api_keys.c.id == key_id).values(revoked_at=func.now()))
    row = await _row(session, tenant_id, key_id)
    return key_view(row, row.now)


async def rotate_key(*, session: AsyncSession, tenant_id: uuid.UUID, key_id: uuid.UUID,
                     overlap_seconds: float) -> tuple[IssuedKey, dict[str, Any]]:
    """A new key under the same label; the old one expires `overlap_seconds` from now (sooner if it would
    already). A revoked or expired key cannot be rotated (409): issue a new one."""
    old = await _row(session, tenant_id, key_id, lock=True)
    view = key_view(old, old.now)
    if view["state"] != "active":
        raise Conflict(f"key {key_id} is {view['state']}: create a new key instead", extra={"state": view["state"]})
    k = m.api_keys
    successor = (await session.execute(select(k.c.id).where(
        k.c.tenant_id == tenant_id, k.c.label == old.label, k.c.id != key_id,
        k.c.created_at > old.created_at, k.c.revoked_at.is_(None)).limit(1))).first()
    if old.expires_at is not None and successor is not None:
        # Rotated already (two rotations at once are serialised by the lock above): one successor, not two.
        raise Conflict(f"key {key_id} has been rotated already (it expires at {old.expires_at.isoformat()})",
                       extra={"state": "rotated", "successor": str(successor.id)})
    issued = await create_key(session=session, tenant_id=tenant_id, label=old.label)
    until = old.now + timedelta(seconds=overlap_seconds)
    if old.expires_at is None or old.expires_at > until:
        await session.execute(update(m.api_keys).where(m.api_keys.c.id == key_id).values(expires_at=until))
    old = await _row(session, tenant_id, key_id)
    return issued, key_view(old, old.now)

