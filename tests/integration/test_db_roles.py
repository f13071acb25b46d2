"""Least privilege in PostgreSQL: each service connects as its own role, which owns its schema and nothing else
(fapiao.infra.roles; `make up`, compose and the harness run the services so)."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from fapiao.infra.roles import provision
from shared.migrate import upgrade_async
from tests.harness import Infra, RunningIssuer, ServiceProcess, fresh_database
from tests.harness.infra import ROLE_PASSWORD, as_service

REPO = Path(__file__).resolve().parents[2]


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def test_the_notifiers_role_cannot_read_the_issuers_tenants(infra: Infra, issuer: RunningIssuer) -> None:
    tenant_count = await _admin_scalar(infra.database_url, "select count(*) from issuer.tenants")
    notifier = await asyncpg.connect(_dsn(as_service(infra, infra.database_url, "notifier")), timeout=10)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for schema issuer"):
            await notifier.fetch("select * from issuer.tenants")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await notifier.execute("create table issuer.stolen (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await notifier.execute("create schema elsewhere")
        # Its own schema is its own.
        async with notifier.transaction():
            await notifier.execute("create temporary table t (x int)")  # needs nothing; then a schema of its own
            await notifier.execute("create table notifier.roles_scratch (x int)")
            await notifier.execute("insert into notifier.roles_scratch values (1)")
            assert await notifier.fetchval("select count(*) from notifier.roles_scratch") == 1
            await notifier.execute("drop table notifier.roles_scratch")
    finally:
        await notifier.close()
    assert tenant_count == await _admin_scalar(infra.database_url, "select count(*) from issuer.tenants")
    # The issuer's own role owns and reads its schema. On a database of its own: handing the suite's issuer
    # schema over would wait for the in-process issuer, whose relay may hold its outbox rows while Kafka answers.
    database = await fresh_database(infra, f"roles_{uuid.uuid4().hex[:8]}")
    issuer_role = await asyncpg.connect(_dsn(as_service(infra, database, "issuer")), timeout=10)
    try:
        await issuer_role.execute("create table issuer.tenants (id int primary key, name text)")
        await issuer_role.execute("insert into issuer.tenants values (1, '自己的 own')")
        assert await issuer_role.fetchval("select name from issuer.tenants") == "自己的 own"
    finally:
        await issuer_role.close()


async def test_service_processes_connect_as_their_own_roles(
        infra: Infra, pipeline_processes: tuple[ServiceProcess, ServiceProcess]) -> None:
    """The suite's tax store and sync processes, started as `make up` starts them."""
    async with httpx.AsyncClient(timeout=10) as client:
        for process in pipeline_processes:
            assert (await client.get(f"{process.url}/readyz")).status_code == 200  # it has used its pool
    rows = await _admin_rows(infra.database_url, "select application_name || '=' || usename from pg_stat_activity "
                             "where application_name in ('taxstore', 'sync', 'sync-worker')")
    by_app = dict(str(r).split("=") for r in rows)
    assert by_app.get("taxstore") == "fapiao_taxstore" and by_app.get("sync") == "fapiao_sync", rows
    assert set(by_app.values()) == {"fapiao_taxstore", "fapiao_sync"}, rows


async def test_provisioning_hands_a_schema_migrated_by_the_shared_role_to_the_service(infra: Infra) -> None:
    """A database from before the roles: every table in the notifier's schema belongs to the admin. After
    provisioning they are the notifier role's, which migrates and writes them as their owner."""
    admin_url = await fresh_database(infra, f"roles_{uuid.uuid4().hex[:8]}")
    migrations = REPO / "services" / "notifier" / "migrations"
    await upgrade_async(migrations_dir=migrations, database_url=admin_url, schema="notifier")
    owners = "select distinct tableowner from pg_tables where schemaname = 'notifier'"
    assert await _admin_rows(admin_url, owners) == {make_url(infra.database_url).username}
    urls = provision(admin_url, ["notifier"], password=ROLE_PASSWORD)
    assert await _admin_rows(admin_url, owners) == {"fapiao_notifier"}
    assert await _admin_rows(admin_url, "select nspowner::regrole::text from pg_namespace "
                             "where nspname = 'notifier'") == {"fapiao_notifier"}
    await upgrade_async(migrations_dir=migrations, database_url=urls["notifier"], schema="notifier")
    conn = await asyncpg.connect(_dsn(urls["notifier"]), timeout=10)
    try:
        # A bigserial table: its sequence changed hands with it.
        await conn.execute("insert into notifier.mutes (tenant_id, invoice_id) values (gen_random_uuid(), "
                           "gen_random_uuid())")
        assert await conn.fetchval("select count(*) from notifier.mutes") == 1
        assert await conn.fetchval("select current_user") == "fapiao_notifier"
    finally:
        await conn.close()


async def _admin_scalar(url: str, sql: str) -> object:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar_one()
    finally:
        await engine.dispose()


async def _admin_rows(url: str, sql: str) -> set[object]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return {row[0] for row in (await conn.execute(text(sql))).all()}
    finally:
        await engine.dispose()
