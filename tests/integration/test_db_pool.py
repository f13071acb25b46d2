"""The services' connection pool against a real PostgreSQL (shared/db.py make_engine): a connection the server
closed is replaced at checkout without the request seeing an error, and only connections that sat idle are
pinged (the ping is three round trips; pinging every checkout cost the issuer ~12 % of its time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.db import PING_AFTER_IDLE, make_engine
from tests.harness import Infra


@pytest.fixture
async def pool(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[AsyncEngine, list[int]]]:
    """An engine with one connection, and the list its pings are counted in (the driver adapter's ping, wrapped;
    only this engine's connections count: other engines of the test process, an in-process issuer's, ping too)."""
    engine = make_engine(infra.database_url, pool_size=1, max_overflow=0)
    pings: list[int] = []
    ours: set[int] = set()
    real = AsyncAdapt_asyncpg_connection.ping

    def ping(self: Any) -> None:
        if id(self) in ours:
            pings.append(1)
        real(self)

    def connected(dbapi_connection: Any, record: Any) -> None:
        ours.add(id(dbapi_connection))

    event.listen(engine.sync_engine.pool, "connect", connected)
    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", ping)
    yield engine, pings
    await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())


async def test_a_connection_the_server_closed_is_replaced_at_checkout_without_an_error(
        pool: tuple[AsyncEngine, list[int]], infra: Infra) -> None:
    engine, pings = pool
    first = await backend_pid(engine)
    admin = create_async_engine(infra.database_url)
    try:
        async with admin.connect() as conn:
            assert (await conn.execute(text("select pg_terminate_backend(:p)"), {"p": first})).scalar_one()
    finally:
        await admin.dispose()
    await asyncio.sleep(0.2)  # the driver sees the socket close; far less than PING_AFTER_IDLE
    second = await backend_pid(engine)  # would raise "connection is closed" if the pool handed out the dead one
    assert second != first
    assert pings == [], "replaced because the driver knew it was closed, not by a ping"


async def test_only_a_connection_idle_longer_than_the_limit_is_pinged(pool: tuple[AsyncEngine, list[int]]) -> None:
    engine, pings = pool
    pid = await backend_pid(engine)
    for _ in range(20):  # back to back: the connection was in use a moment ago
        assert await backend_pid(engine) == pid
    assert pings == []
    await asyncio.sleep(PING_AFTER_IDLE + 0.3)
    assert await backend_pid(engine) == pid
    assert pings == [1], "one ping for the connection that sat idle"
    assert await backend_pid(engine) == pid
    assert pings == [1]


async def test_connections_opened_for_a_burst_are_kept_for_the_next_one(infra: Infra) -> None:
    """pool_size 2 and overflow 2: a burst of 4 opens 4 connections, and the next burst of 4 reuses them (an
    overflow connection closed at checkin would cost a backend start and an SSL negotiation per burst)."""
    engine = make_engine(infra.database_url, pool_size=2, max_overflow=2)

    async def one() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("select pg_backend_pid() from pg_sleep(0.2)"))).scalar_one())

    try:
        first = set(await asyncio.gather(*(one() for _ in range(4))))
        second = set(await asyncio.gather(*(one() for _ in range(4))))
        assert len(first) == 4
        assert second == first, f"{len(second - first)} of 4 connections were new for the second burst"
    finally:
        await engine.dispose()
