"""Idempotency-Key: a request that carries one is carried out at most once; a repeat gets the first answer again.

The use case claims the key in its own transaction and keeps the answer there too, so the answer is kept if and
only if what it announces was written. The answer is the door's: this module keeps it as it was given, and a
repeat gets it back verbatim (`Replayed`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import CursorResult, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from shared.errors import Conflict

__all__ = ["Answer", "KeyReused", "Once", "Replayed", "at_most_once", "claim", "purge", "request_hash"]

OutcomeT = TypeVar("OutcomeT")


def request_hash(endpoint: str, body: Any) -> str:
    try:
        text = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # JSON orjson cannot write back (an integer past 64 bits, a lone surrogate in a batch item's key):
        # the standard library can, escaped. Such a body is refused item by item anyway; it must not be a 500.
        text = json.dumps(body, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()
    return hashlib.sha256(endpoint.encode() + b"\n" + text).hexdigest()


@dataclass(frozen=True)
class Answer:
    """The answer the door gave to the first request, kept with its key."""

    status_code: int
    body: bytes


@dataclass(frozen=True)
class Replayed:
    """A repeat of a request already carried out: nothing was done again; here is the first answer."""

    answer: Answer


@dataclass(frozen=True)
class KeyReused:
    """The key was already used for another request (another endpoint or body): nothing was done."""


@dataclass(frozen=True)
class Once:
    """A request that carries an Idempotency-Key, and how the door answers its outcome (kept for repeats)."""

    key: str
    endpoint: str
    request_hash: str
    wait_seconds: float
    answer: Callable[[Any], Answer]


async def at_most_once(*, session: AsyncSession, tenant_id: uuid.UUID, once: Once | None,
                       run: Callable[[], Awaitable[OutcomeT]]) -> OutcomeT | Replayed | KeyReused:
    """`run()` unless the key was claimed before; the outcome's answer is kept in the same transaction."""
    if once is None:
        return await run()
    claimed = await claim(session=session, tenant_id=tenant_id, key=once.key, endpoint=once.endpoint,
                          req_hash=once.request_hash, wait_seconds=once.wait_seconds)
    if claimed is not None:
        return claimed
    outcome = await run()
    answer = once.answer(outcome)
    await session.execute(
        update(m.idempotency_keys)
        .where(m.idempotency_keys.c.tenant_id == tenant_id, m.idempotency_keys.c.key == once.key)
        .values(status_code=answer.status_code, response=answer.body.decode())
    )
    return outcome


async def claim(*, session: AsyncSession, tenant_id: uuid.UUID, key: str, endpoint: str, req_hash: str,
                wait_seconds: float) -> Replayed | KeyReused | None:
    """None: this request owns the key (its answer is kept by the same transaction).

    A concurrent request with the same key blocks on the row until the owner commits, then replays its
    answer; if the owner takes longer than wait_seconds, Conflict (the transaction is spoilt: it must end).
    """
    await session.execute(text("select set_config('lock_timeout', :v, true)"), {"v": f"{int(wait_seconds * 1000)}ms"})
    try:
        claimed = (await session.execute(
            pg_insert(m.idempotency_keys)
            .values(tenant_id=tenant_id, key=key, endpoint=endpoint, request_hash=req_hash)
            .on_conflict_do_nothing().returning(m.idempotency_keys.c.key)
        )).first()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":
            raise Conflict("a request with this Idempotency-Key is still being processed; retry shortly") from exc
        raise
    await session.execute(text("select set_config('lock_timeout', '0', true)"))
    if claimed is not None:
        return None
    row = (await session.execute(
        select(m.idempotency_keys).where(m.idempotency_keys.c.tenant_id == tenant_id, m.idempotency_keys.c.key == key)
    )).one()
    if row.endpoint != endpoint or row.request_hash != req_hash:
        return KeyReused()
    return Replayed(Answer(row.status_code, row.response.encode()))


async def purge(*, session: AsyncSession, older_than_hours: int) -> int:
    """Forget keys older than this; returns how many."""
    result = cast("CursorResult[Any]", await session.execute(
        m.idempotency_keys.delete().where(
            m.idempotency_keys.c.created_at < func.now() - text(f"interval '{int(older_than_hours)} hours'"))
    ))
    return int(result.rowcount or 0)
