"""Engines, sessions, and the tables every service schema has: the outbox and processed events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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
    func,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = [
    "NAMING_CONVENTION", "engine_for", "make_engine", "make_metadata", "mark_processed", "outbox_table", "ping",
    "processed_events_table", "session_factory", "transaction",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def make_metadata(schema: str) -> MetaData:
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def make_engine(url: str, *, pool_size: int = 10, statement_timeout_ms: int = 30_000,
                application_name: str = "fapiao") -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={
            "timeout": 10,
            "command_timeout": statement_timeout_ms / 1000 + 5,
            "server_settings": {
                "statement_timeout": str(statement_timeout_ms),
                "application_name": application_name,
                "timezone": "UTC",
            },
        },
    )


def engine_for(settings: Any, *, service: str) -> AsyncEngine:
    """make_engine with a service's settings (`database_url`, `db_pool_size`, `db_statement_timeout_ms`)."""
    return make_engine(settings.database_url, pool_size=settings.db_pool_size,
                       statement_timeout_ms=settings.db_statement_timeout_ms, application_name=service)


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
