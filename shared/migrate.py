"""Alembic, one version table per service schema, callable from code and from each env.py."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import tls_connect_args

__all__ = ["alembic_config", "run_env", "upgrade", "upgrade_async"]


def alembic_config(*, migrations_dir: Path, database_url: str, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["schema"] = schema
    return cfg


def upgrade(*, migrations_dir: Path, database_url: str, schema: str, revision: str = "head") -> None:
    """Blocking; in async code call it through asyncio.to_thread."""
    command.upgrade(alembic_config(migrations_dir=migrations_dir, database_url=database_url, schema=schema), revision)


async def upgrade_async(*, migrations_dir: Path, database_url: str, schema: str) -> None:
    """upgrade() from async code (Alembic's env runs its own event loop, so in a thread)."""
    await asyncio.to_thread(upgrade, migrations_dir=migrations_dir, database_url=database_url, schema=schema)


def _do_run(connection: Connection, target_metadata: MetaData, schema: str) -> None:
    # Two replicas starting together must not both migrate: serialise on an advisory lock.
    connection.execute(text("select pg_advisory_lock(:k)"), {"k": zlib.crc32(f"migrate:{schema}".encode())})
    # Checked first: a service's own role owns its schema (fapiao.infra.roles) but may not create schemas, and
    # CREATE SCHEMA IF NOT EXISTS asks for that right even when the schema is there.
    if connection.execute(text("select 1 from pg_namespace where nspname = :s"), {"s": schema}).first() is None:
        connection.execute(text(f'create schema "{schema}"'))
    connection.commit()
    context.configure(
        connection=connection, target_metadata=target_metadata, version_table_schema=schema,
        include_schemas=False, compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_env(target_metadata: MetaData) -> None:
    """Body of every service's migrations/env.py (online mode only)."""
    cfg = context.config
    schema = cfg.attributes.get("schema") or target_metadata.schema
    assert schema, "migrations need a schema"
    url = cfg.get_main_option("sqlalchemy.url")
    assert url, "migrations need sqlalchemy.url"

    async def main() -> None:
        # The issuer's row-level security marker (services/issuer/row_security.py): a data migration changes every
        # tenant's rows. Other schemas have no policy to read it.
        engine = create_async_engine(url, poolclass=pool.NullPool, connect_args={
            **tls_connect_args(), "server_settings": {"fapiao.tenant_id": "*"}})
        try:
            async with engine.connect() as conn:
                await conn.run_sync(_do_run, target_metadata, schema)
        finally:
            await engine.dispose()

    asyncio.run(main())
