"""What the issuer's routes are handed: the tenant (by its API key), the transaction, the deployment's rules
for issuing, the reconciler's client and its live schedule, and an Idempotency-Key as a service takes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer.api.answers import kept
from services.issuer.backends import ReconcilerClient
from services.issuer.idempotency import Once, request_hash
from services.issuer.invoices.issuing import Issuing
from services.issuer.invoices.reading import Schedule
from services.issuer.settings import IssuerSettings
from services.issuer.tenants import Tenant, authenticate
from shared.db import transaction
from shared.errors import Unauthorized
from shared.http import auth_dependency
from shared.topics import INVOICE_EVENTS

__all__ = ["IdempotencyKey", "IssuingDep", "ReconcilerDep", "ScheduleDep", "SessionDep", "TenantDep", "once",
           "settings"]


def settings(request: Request) -> IssuerSettings:
    s: IssuerSettings = request.app.state.settings
    return s


API_KEY = HTTPBearer(scheme_name="ApiKey", auto_error=False,
                     description="the tenant's API key (shown once when the tenant is created)")


@auth_dependency
async def current_tenant(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(API_KEY)] = None,
                         ) -> Tenant:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("send the API key as 'Authorization: Bearer <key>'")
    key = credentials.credentials.strip()
    async with request.app.state.engine.connect() as conn:
        tenant = await authenticate(session=conn, api_key=key)
    if tenant is None:
        raise Unauthorized("unknown or revoked API key")
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]


async def _transaction(request: Request) -> AsyncIterator[AsyncSession]:
    """The route's transaction: committed when the route has returned and before its answer is sent, rolled back
    when it raises. The connection is taken at the first statement, so checks made before it hold none."""
    async with transaction(request.app.state.sessions) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_transaction, scope="function")]


def issuing(request: Request) -> Issuing:
    s = settings(request)
    return Issuing(today=datetime.now(ZoneInfo(s.timezone)).date(), window_days=s.issue_window_days,
                   topic=INVOICE_EVENTS.qualified(s.topic_prefix), batch_max=s.batch_max)


IssuingDep = Annotated[Issuing, Depends(issuing)]


def reconciler(request: Request) -> ReconcilerClient:
    return ReconcilerClient(request.app.state.reconciler_http, timeout=settings(request).reconciler_timeout)


ReconcilerDep = Annotated[ReconcilerClient, Depends(reconciler)]


def live_schedule(request: Request) -> Schedule | None:
    """The reconciler's live schedule, so that an explanation quotes the next check as it is now."""
    ledger = request.app.state.schedule
    return ledger.schedule if ledger is not None else None


ScheduleDep = Annotated[Schedule | None, Depends(live_schedule)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                              pattern=r"^[\x21-\x7e]+$")]


def once(request: Request, key: str | None, endpoint: str, body: Any) -> Once | None:
    """The request as idempotency takes it: `body` is what makes a repeat the same request."""
    if key is None:
        return None
    return Once(key=key, endpoint=endpoint, request_hash=request_hash(endpoint, body),
                wait_seconds=settings(request).idempotency_wait_seconds, answer=kept)
