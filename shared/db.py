"""Engines, sessions, and the tables every service schema has: the outbox and processed events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shared.settings import DatabaseTls

__all__ = [
    "NAMING_CONVENTION", "WORKER_POOL_TIMEOUT", "DatabaseTrouble", "columns_except", "database_unavailable",
    "engine_for",
    "make_engine", "make_metadata", "mark_processed", "outbox_table", "ping", "processed_events_table",
    "session_factory", "tls_connect_args", "transaction",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def columns_except(table: Table, *names: str) -> tuple[Column[Any], ...]:
    """The table's columns but these, in order: what a RETURNING reads back when the caller holds the rest (a
    document read back is sent by PostgreSQL and decoded by the driver again, for each row)."""
    return tuple(c for c in table.c if c.name not in names)


def make_metadata(schema: str) -> MetaData:
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


WORKER_POOL_TIMEOUT = 30.0
"""Background loops wait longer for a connection than requests do: nobody is waiting on the other end."""


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int | None = None, pool_timeout: float = 3.0,
                statement_timeout_ms: int = 30_000, application_name: str = "fapiao",
                session_settings: Mapping[str, str] | None = None) -> AsyncEngine:
    """An engine whose pool holds at most `pool_size + max_overflow` connections (overflow defaults to
    `pool_size`), each opened when the load first needs it and kept; a checkout waits at most `pool_timeout`
    seconds, then raises sqlalchemy's TimeoutError (which the HTTP layer answers with 503). TLS comes from
    FAPIAO_DATABASE_SSL* (shared.settings.DatabaseTls)."""
    # Every connection the pool may hold is a kept one (QueuePool's overflow connections would be closed at
    # checkin whenever `pool_size` sit idle: under bursty load that opened and closed a connection, a backend
    # fork and an SSL negotiation, every few requests; ~5 % of an issuer API worker's samples under py-spy).
    # They are still opened only when the load asks for them.
    kept = pool_size + (pool_size if max_overflow is None else max_overflow)
    engine = create_async_engine(
        url,
        pool_size=kept,
        max_overflow=0,
        pool_pre_ping=False,  # _check_on_checkout pings only connections that sat idle (see there)
        pool_timeout=pool_timeout,
        connect_args={
            "timeout": 10,
            "command_timeout": statement_timeout_ms / 1000 + 5,
            "server_settings": {
                "statement_timeout": str(statement_timeout_ms),
                "application_name": application_name,
                "timezone": "UTC",
                **(session_settings or {}),
            },
            **tls_connect_args(),
        },
    )
    _check_on_checkout(engine)
    return engine


PING_AFTER_IDLE = 1.0
"""A pooled connection that sat unused longer than this (seconds) is pinged before it is handed out."""


def _check_on_checkout(engine: AsyncEngine) -> None:
    """Pessimistic disconnect handling at a fraction of pool_pre_ping's cost. SQLAlchemy's pre-ping runs
    BEGIN; ; ROLLBACK (three round trips) on every checkout: under py-spy at 200 POSTs/s that was about 12 % of
    the issuer's busy time. Here every checkout first asks asyncpg whether it already knows the connection is
    closed (free: a server that stopped or was killed closed the socket, and the driver saw it), and only a
    connection idle for more than PING_AFTER_IDLE seconds is pinged. A dead connection is thrown away and the
    pool hands out a new one (DisconnectionError in a checkout listener: SQLAlchemy's documented way). What is
    given up: a connection used within the last second whose server vanished without closing the socket (a
    network cut) fails its statement instead; that answers 503 (database_unavailable) and SQLAlchemy then
    invalidates the whole pool, so the next checkouts connect afresh."""
    pool = engine.sync_engine.pool

    def fresh(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        driver = getattr(dbapi_connection, "_connection", None)
        if driver is not None and driver.is_closed():
            raise sa_exc.DisconnectionError("the connection was closed by the server or the network")
        if time.monotonic() - record.info.get("idle_since", 0.0) > PING_AFTER_IDLE:
            try:
                dbapi_connection.ping()
            except Exception as exc:  # any failure of the ping means: take another connection
                raise sa_exc.DisconnectionError(f"ping failed: {type(exc).__name__}") from exc

    event.listen(pool, "connect", fresh)
    event.listen(pool, "checkin", fresh)
    event.listen(pool, "checkout", check)


def tls_connect_args() -> dict[str, Any]:
    """asyncpg's `ssl` argument from FAPIAO_DATABASE_SSL*, for every engine that is not make_engine's."""
    ssl_arg = DatabaseTls().ssl_context()
    return {} if ssl_arg is None else {"ssl": ssl_arg}


def engine_for(settings: Any, *, service: str, worker: bool = False,
               session_settings: Mapping[str, str] | None = None) -> AsyncEngine:
    """make_engine with a service's settings: the request pool (`db_pool_size`, `db_pool_timeout`), or with
    `worker=True` the background loops' own pool (`db_worker_pool_size`), so neither can starve the other.
    `session_settings`: more settings every connection starts with (the issuer's row-level security marker)."""
    if worker:
        return make_engine(settings.database_url, pool_size=settings.db_worker_pool_size,
                           pool_timeout=WORKER_POOL_TIMEOUT, statement_timeout_ms=settings.db_statement_timeout_ms,
                           application_name=f"{service}-worker", session_settings=session_settings)
    return make_engine(settings.database_url, pool_size=settings.db_pool_size, pool_timeout=settings.db_pool_timeout,
                       statement_timeout_ms=settings.db_statement_timeout_ms, application_name=service,
                       session_settings=session_settings)


@dataclass(frozen=True)
class DatabaseTrouble:
    """Why the database could not take a piece of work right now, and when trying again makes sense."""

    reason: str  # pool_exhausted | connection_lost | overloaded | conflict | timeout
    retry_after: int  # seconds
    cause: str  # exception type (and SQLSTATE): safe to log, unlike the message (SQL, parameters)


# SQLSTATEs after which the same work may well succeed a moment later.
_RETRYABLE_CLASSES = {"08": ("connection_lost", 5), "53": ("overloaded", 5)}
_RETRYABLE_CODES = {
    "57P01": ("connection_lost", 5),  # admin_shutdown
    "57P02": ("connection_lost", 5),  # crash_shutdown
    "57P03": ("connection_lost", 5),  # cannot_connect_now (starting up, recovering)
    "40001": ("conflict", 1),  # serialization_failure
    "40P01": ("conflict", 1),  # deadlock_detected
}
_DRIVER_MODULES = ("asyncpg", "sqlalchemy")


def database_unavailable(exc: BaseException) -> DatabaseTrouble | None:
    """The one place that decides whether an error means "the database cannot take this now, retry later"
    (pool exhausted, server lost or restarting, out of connections, a serialization conflict) rather than
    a bug. Looks through SQLAlchemy's wrapper, the cause/context chain and exception groups."""
    for e in _chain(exc):
        found = _classify(e)
        if found is not None:
            return found
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 32:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        orig = getattr(e, "orig", None) if isinstance(e, sa_exc.DBAPIError) else None
        nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        todo.extend(x for x in (orig, nxt) if isinstance(x, BaseException))


def _classify(e: BaseException) -> DatabaseTrouble | None:
    name = type(e).__name__
    if isinstance(e, sa_exc.TimeoutError):  # "QueuePool limit of size 10 overflow 10 reached"
        return DatabaseTrouble("pool_exhausted", 2, name)
    code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
    if isinstance(e, sa_exc.DBAPIError):
        code = code or getattr(e.orig, "sqlstate", None)
    if isinstance(code, str) and type(e).__module__.startswith(_DRIVER_MODULES):
        hit = _RETRYABLE_CODES.get(code) or _RETRYABLE_CLASSES.get(code[:2])
        if hit is not None:
            return DatabaseTrouble(hit[0], hit[1], f"{name} {code}")
    if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
        return DatabaseTrouble("connection_lost", 5, name)
    if isinstance(e, sa_exc.InterfaceError | asyncpg.InterfaceError):
        return DatabaseTrouble("connection_lost", 5, name)
    # Plain socket errors and timeouts count only when they came out of the driver (not, say, httpx).
    if isinstance(e, OSError | TimeoutError) and _raised_in_driver(e):
        return DatabaseTrouble("timeout" if isinstance(e, TimeoutError) else "connection_lost", 5, name)
    return None


def _raised_in_driver(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(_DRIVER_MODULES):
            return True
        tb = tb.tb_next
    return False


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """The caller owns the transaction: commit on success, roll back on any error."""
    async with sessions() as session, session.begin():
        yield session


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))


def outbox_table(metadata: MetaData) -> Table:
    """Events waiting for Kafka, written in the same transaction as the change they announce."""
    return Table(
        "outbox", metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(64), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("event_type", String(200), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True)),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("last_error", Text),
    )


def processed_events_table(metadata: MetaData) -> Table:
    """Event ids a consumer group has applied: the idempotency record of every consumer."""
    return Table(
        "processed_events", metadata,
        Column("consumer_group", String(100), primary_key=True),
        Column("event_id", String(64), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


async def mark_processed(conn: AsyncConnection | AsyncSession, table: Table, *, group: str, event_id: str) -> bool:
    """Record the event in the caller's transaction; False when it was already applied."""
    stmt = (
        pg_insert(table).values(consumer_group=group, event_id=event_id)
        .on_conflict_do_nothing().returning(table.c.event_id)
    )
    result = await conn.execute(stmt)
    return result.first() is not None
