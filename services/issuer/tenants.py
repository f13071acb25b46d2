"""Tenants (seller enterprises) and their API keys. A key is shown once, when it is issued, and stored as a hash."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.issuer import models as m
from shared.errors import FieldError
from shared.uscc import uscc_error

__all__ = ["API_KEY_PREFIX", "KeyCache", "Tenant", "TenantCreated", "TenantInvalid", "TaxIdTaken", "authenticate",
           "create_tenant", "issue_api_key"]

API_KEY_PREFIX = "fsk_"
LAST_USED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    name: str
    tax_id: str


@dataclass(frozen=True)
class TenantCreated:
    tenant: Tenant
    api_key: str  # in this answer only


@dataclass(frozen=True)
class TenantInvalid:
    errors: tuple[FieldError, ...]


@dataclass(frozen=True)
class TaxIdTaken:
    tax_id: str
    tenant_id: uuid.UUID


def hash_key(api_key: str) -> str:
    # Keys are 256-bit random: a plain SHA-256 is as strong as a slow KDF here and keeps auth cheap.
    return hashlib.sha256(api_key.encode()).hexdigest()


async def create_tenant(*, session: AsyncSession, name: str, tax_id: str,
                        label: str = "default") -> TenantCreated | TenantInvalid | TaxIdTaken:
    """Register a seller enterprise and issue its first API key."""
    tax_id = tax_id.strip().upper()
    if (why := uscc_error(tax_id)) is not None:
        return TenantInvalid((FieldError("tax_id", why),))
    if not name.strip():
        return TenantInvalid((FieldError("name", "must not be empty"),))
    existing = (await session.execute(select(m.tenants.c.id).where(m.tenants.c.tax_id == tax_id))).first()
    if existing is not None:
        return TaxIdTaken(tax_id, existing.id)
    tenant = Tenant(uuid.uuid4(), name.strip(), tax_id)
    await session.execute(m.tenants.insert().values(id=tenant.id, name=tenant.name, tax_id=tenant.tax_id))
    return TenantCreated(tenant, await issue_api_key(session=session, tenant_id=tenant.id, label=label))


async def issue_api_key(*, session: AsyncSession, tenant_id: uuid.UUID, label: str = "default") -> str:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    await session.execute(m.api_keys.insert().values(
        id=uuid.uuid4(), tenant_id=tenant_id, prefix=key[:12], key_hash=hash_key(key), label=label))
    return key


async def authenticate(*, session: AsyncConnection, api_key: str) -> Tenant | None:
    """The tenant whose key this is, when the key is neither revoked nor expired (read from the database; the
    caller may keep the answer for a second: KeyCache). Notes the key's use, at most once a minute,
    and commits `session` when it does (the connection the request authenticates on holds nothing else)."""
    if not api_key.startswith(API_KEY_PREFIX) or len(api_key) > 200:
        return None
    k = m.api_keys
    row = (await session.execute(
        select(m.tenants.c.id, m.tenants.c.name, m.tenants.c.tax_id, k.c.id.label("key_id"), k.c.last_used_at,
               func.now().label("now"))
        .join(k, k.c.tenant_id == m.tenants.c.id)
        .where(k.c.key_hash == hash_key(api_key), k.c.revoked_at.is_(None),
               or_(k.c.expires_at.is_(None), k.c.expires_at > func.now()))
    )).first()
    if row is None:
        return None
    if row.last_used_at is None or row.now - row.last_used_at >= LAST_USED_EVERY:
        stale = or_(k.c.last_used_at.is_(None), k.c.last_used_at < func.now() - LAST_USED_EVERY)
        await session.execute(update(k).where(k.c.id == row.key_id, stale).values(last_used_at=func.now()))
        await session.commit()
    return Tenant(row.id, row.name, row.tax_id)


class KeyCache:
    """Tenants recently authenticated by this process, by key hash, for `ttl` seconds: a tenant's requests, and
    above all the ones its limits refuse, then cost no database round trip (a flood of refused requests would
    otherwise queue for the same connections as everyone else's). A revoked key keeps working here for at most
    `ttl`. Only successes are kept; the table is emptied when it reaches `size` keys.

    `resolve` looks a key up once however many of its requests arrive while it is not known: when a busy
    tenant's entry runs out, its next fifty requests in flight share one database round trip instead of taking
    fifty connections at once (and holding up everyone else's requests behind them)."""

    def __init__(self, ttl: float, *, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._known: dict[str, tuple[Tenant, float]] = {}
        self._pending: dict[str, asyncio.Task[Tenant | None]] = {}

    async def resolve(self, api_key: str, load: Callable[[], Awaitable[Tenant | None]],
                      clock: Callable[[], float]) -> Tenant | None:
        """The key's tenant: from the table, else from `load` (one call per key at a time, its answer shared
        and, when it is a tenant, kept). A request that gives up waiting does not cancel the others' lookup."""
        if (tenant := self.get(api_key, now=clock())) is not None:
            return tenant
        digest = hash_key(api_key)
        task = self._pending.get(digest)
        if task is None:
            async def lookup() -> Tenant | None:
                try:
                    found = await load()
                    if found is not None:
                        self.put(api_key, found, now=clock())
                    return found
                finally:
                    self._pending.pop(digest, None)

            task = self._pending[digest] = asyncio.create_task(lookup(), name="api-key-lookup")
        return await asyncio.shield(task)

    def get(self, api_key: str, *, now: float) -> Tenant | None:
        hit = self._known.get(hash_key(api_key))
        return hit[0] if hit is not None and hit[1] > now else None

    def put(self, api_key: str, tenant: Tenant, *, now: float) -> None:
        if self.ttl <= 0:
            return
        if len(self._known) >= self.size:
            self._known.clear()
        self._known[hash_key(api_key)] = (tenant, now + self.ttl)
