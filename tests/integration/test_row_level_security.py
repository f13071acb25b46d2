"""Row-level security on the issuer's tenant-owned tables (services/issuer/row_security.py, migration 0009): inside
a tenant's transaction a query without any tenant filter still returns that tenant's rows only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import asyncpg
import pytest
from sqlalchemy import text, true
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.issuer.row_security import REQUEST_STATE, SESSION_SETTINGS, pin_request_tenant
from shared.db import make_engine, session_factory, transaction
from tests import factories
from tests.harness import Infra, RunningIssuer, Tenant
from tests.harness.infra import as_service

# Deliberately unfiltered: no WHERE tenant_id anywhere.
UNFILTERED = {
    "invoices": "select distinct tenant_id::text from issuer.invoices",
    "api_keys": "select distinct tenant_id::text from issuer.api_keys",
    "tenants": "select id::text from issuer.tenants",
    "idempotency_keys": "select distinct tenant_id::text from issuer.idempotency_keys",
    "invoice_timeline": "select distinct i.tenant_id::text from issuer.invoice_timeline t "
                        "join issuer.invoices i on i.id = t.invoice_id",
}


async def _issue(issuer: RunningIssuer, tenant: Tenant) -> None:
    r = await issuer.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id),
                                 headers={**tenant.headers, "Idempotency-Key": factories.uscc()})
    assert r.status_code == 201, r.text


@pytest.fixture
async def issuer_role_sessions(infra: Infra, issuer: RunningIssuer) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions as the issuer's engines open them under `make up`: its own role, the all-tenants marker on every
    connection. (The in-process issuer of the tests connects as the superuser, whom no policy binds.)"""
    engine = make_engine(as_service(infra, infra.database_url, "issuer"), pool_size=1,
                         session_settings=SESSION_SETTINGS)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def two_tenants(issuer: RunningIssuer) -> tuple[Tenant, Tenant]:
    a, b = await issuer.new_tenant("行级甲"), await issuer.new_tenant("行级乙")
    for t in (a, b):
        await _issue(issuer, t)
    return a, b


async def test_an_unfiltered_query_in_a_tenants_transaction_returns_only_its_rows(
        issuer_role_sessions: async_sessionmaker[AsyncSession], two_tenants: tuple[Tenant, Tenant]) -> None:
    a, b = two_tenants
    sessions = issuer_role_sessions
    # The request's transaction as the routes get it (api/deps.py): pinned when its first statement runs.
    request = SimpleNamespace(state=SimpleNamespace(**{REQUEST_STATE: a.id}))
    async with transaction(sessions) as session:
        pin_request_tenant(session.sync_session, request)
        for table, sql in UNFILTERED.items():
            assert {r[0] for r in (await session.execute(text(sql))).all()} == {a.id}, table
        # Writing another tenant's row is refused as well (WITH CHECK).
        with pytest.raises(Exception, match="row-level security"):
            async with session.begin_nested():
                await session.execute(text("update issuer.invoices set reason = 'x' where tenant_id = :b"),
                                      {"b": b.id})
                await session.execute(text("insert into issuer.idempotency_keys (tenant_id, key, endpoint, "
                                           "request_hash) values (:b, 'rls', 'e', 'h')"), {"b": b.id})
    # The pin lasted that transaction only: the pooled connection is back to every tenant for internal work.
    async with transaction(sessions) as session:
        seen = {r[0] for r in (await session.execute(text(UNFILTERED["invoices"]))).all()}
    assert {a.id, b.id} <= seen


async def test_a_request_without_a_tenant_is_not_pinned_and_other_connections_see_nothing(
        infra: Infra, issuer_role_sessions: async_sessionmaker[AsyncSession],
        two_tenants: tuple[Tenant, Tenant]) -> None:
    a, b = two_tenants
    async with transaction(issuer_role_sessions) as session:
        pin_request_tenant(session.sync_session, SimpleNamespace(state=SimpleNamespace()))  # an admin request
        seen = {r[0] for r in (await session.execute(text(UNFILTERED["tenants"]))).all()}
    assert {a.id, b.id} <= seen
    # The issuer's role on a connection of its own that never says which tenant: no rows, not all of them.
    dsn = make_url(as_service(infra, infra.database_url, "issuer")).set(drivername="postgresql")
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False), timeout=10)
    try:
        assert await conn.fetchval("select count(*) from issuer.invoices") == 0
        assert await conn.fetchval("select count(*) from issuer.api_keys") == 0
        async with conn.transaction():
            await conn.execute("select set_config('fapiao.tenant_id', $1, true)", b.id)
            assert {r[0] for r in await conn.fetch(UNFILTERED["invoices"])} == {b.id}
    finally:
        await conn.close()


async def test_the_streamed_export_is_pinned_to_its_tenant_even_without_its_filter(
        issuer_role_sessions: async_sessionmaker[AsyncSession], two_tenants: tuple[Tenant, Tenant],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The export reads its pages in transactions of its own, outside the route's; with its tenant filter taken
    away on purpose it still yields the caller's invoices only."""
    from services.issuer.invoices import exports
    from services.issuer.invoices.reading import ListFilters
    from services.issuer.tenants import Tenant as IssuerTenant

    a, b = two_tenants
    monkeypatch.setattr(exports, "list_conditions", lambda tenant, filters: [true()])  # deliberately unfiltered
    caller = IssuerTenant(id=uuid.UUID(a.id), name="行级甲", tax_id=a.tax_id)
    numbers = [r["number"] async for r in exports._records(issuer_role_sessions, caller, ListFilters())]
    async with transaction(issuer_role_sessions) as session:  # the all-tenants marker: both tenants' invoices
        owners = {str(r[0]): r[1] for r in (await session.execute(
            text("select tenant_id, array_agg(number) from issuer.invoices where tenant_id in (:a, :b) "
                 "group by tenant_id"), {"a": a.id, "b": b.id})).all()}
    assert sorted(numbers) == sorted(owners[a.id]) and owners[b.id], (numbers, owners)
