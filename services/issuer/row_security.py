"""Row-level security on the issuer's tenant-owned tables: the database's own check that a tenant's request sees
only that tenant's rows, behind the `tenant_id` every query names (docs/security.md, Row-level security).

The policies (migration 0009) admit a row when the transaction's `fapiao.tenant_id` setting is the row's tenant,
or is the all-tenants marker `*`. A connection that set neither sees no row at all (and can write none).

- The issuer's own connections start with the marker (`SESSION_SETTINGS`, a connection setting): the work that
  spans tenants — the feeds' consumers, the outbox relay, the self-check, the dashboard's sampler and figures, the
  admin API, finding the tenant of an API key — goes on as before.
- A tenant's request pins its transaction to that tenant (`pin_request_tenant`, called by the route's
  transaction, services/issuer/api/deps.py) with `set_config(..., true)`: for that transaction only, so the pooled
  connection is back to the marker once it commits or rolls back. A query that forgot `WHERE tenant_id = ...`
  then still returns the tenant's rows only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

__all__ = ["ALL_TENANTS", "SESSION_SETTINGS", "SETTING", "TABLES", "pin", "pin_request_tenant", "pin_session"]

SETTING = "fapiao.tenant_id"
ALL_TENANTS = "*"
SESSION_SETTINGS = {SETTING: ALL_TENANTS}
"""What the issuer's engines set on every connection they open (asyncpg's server_settings)."""

TABLES = ("tenants", "api_keys", "invoices", "invoice_timeline", "idempotency_keys")
"""The tables under a policy; the others (outbox, processed events, ops samples, audit log) hold no tenant's data
that a tenant can read."""

REQUEST_STATE = "rls_tenant"
"""Where the authentication dependency leaves the tenant's id on `request.state`."""


def pin(connection: Connection, tenant_id: Any) -> None:
    """This transaction sees (and writes) `tenant_id`'s rows only."""
    connection.execute(text("select set_config(:name, :tenant, true)"), {"name": SETTING, "tenant": str(tenant_id)})


async def pin_session(session: AsyncSession, tenant_id: Any) -> None:
    """`pin` for an async session's transaction (it begins one if none is open)."""
    connection = await session.connection()
    await connection.run_sync(pin, tenant_id)


def pin_request_tenant(session: Session, request: Any) -> None:
    """When `session`'s transaction takes its connection (its first statement, after the route's dependencies
    have authenticated the tenant), pin it to the request's tenant; requests without one (admin) are not pinned."""

    def _pin(_session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
        tenant_id = getattr(request.state, REQUEST_STATE, None)
        if tenant_id is not None:
            pin(connection, tenant_id)

    event.listen(session, "after_begin", _pin)
