"""What the issuer's routes are handed: the tenant (by its API key, admitted under its limits), the transaction,
the deployment's rules for issuing, the reconciler's client and its live schedule, and an Idempotency-Key as a
service takes it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import row_security
from services.issuer.api.answers import kept
from services.issuer.backends import ReconcilerClient, TaxstoreClient
from services.issuer.idempotency import Once, request_hash
from services.issuer.invoices.issuing import Issuing
from services.issuer.invoices.reading import Schedule
from services.issuer.limits import STATE_KEY, Admission, TenantLimits, budget_of, refusal
from services.issuer.settings import IssuerSettings
from services.issuer.tenants import KeyCache, Tenant, authenticate
from shared.db import transaction
from shared.errors import Unauthorized
from shared.http import auth_dependency
from shared.metrics import RATE_LIMITED
from shared.topics import INVOICE_EVENTS

__all__ = ["IdempotencyKey", "IssuingDep", "ReconcilerDep", "ScheduleDep", "SessionDep", "TaxstoreDep", "TenantDep",
           "once",
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
    keys: KeyCache = request.app.state.keys

    async def load() -> Tenant | None:
        async with request.app.state.engine.connect() as conn:
            return await authenticate(session=conn, api_key=key)

    tenant = await keys.resolve(key, load, time.monotonic)
    if tenant is None:
        raise Unauthorized("unknown or revoked API key")
    setattr(request.state, row_security.REQUEST_STATE, tenant.id)  # the route's transaction is pinned to it
    return tenant


async def _weight(request: Request, budget: str, route: str) -> int:
    """Tokens the request takes: one, or for an import its invoices (a batch's items, a CSV file's lines after
    the header). The body is read already (FastAPI parses it before the dependencies run): this is no second
    read, and a body that is not what the route takes weighs one (the route then refuses it)."""
    if budget != "import":
        return 1
    if route == "/v1/invoices/import":
        # Every line ending the CSV reader takes (\n, \r\n and a bare \r): a file of CR-only lines is no cheaper.
        return max(1, len((await request.body()).splitlines()) - 1)
    try:
        body = await request.json()
    except ValueError:
        return 1
    items = body.get("invoices") if isinstance(body, dict) else None
    return max(1, len(items)) if isinstance(items, list) else 1


@auth_dependency
async def admitted_tenant(request: Request, tenant: Annotated[Tenant, Depends(current_tenant)]) -> Tenant:
    """The authenticated tenant once this request fits its limits (services/issuer/limits.py); 429 otherwise.
    Asked once per request: the error handlers, which run the authentication again when the body is refused,
    find the decision already taken and do not charge twice."""
    limits: TenantLimits | None = request.app.state.limits
    if limits is None:
        return tenant
    taken = getattr(request.state, STATE_KEY, None)
    if not isinstance(taken, Admission):
        route = getattr(request.scope.get("route"), "path", request.url.path)
        budget = budget_of(request.method, route)
        decision = limits.admit(tenant.id, budget, weight=await _weight(request, budget, route), now=time.monotonic())
        taken = Admission(limits, tenant.id, decision)
        setattr(request.state, STATE_KEY, taken)
        if not decision.allowed:
            RATE_LIMITED.labels("issuer", decision.budget, decision.refused).inc()
    if not taken.decision.allowed:
        raise refusal(taken.decision)
    return tenant


TenantDep = Annotated[Tenant, Depends(admitted_tenant)]


async def _transaction(request: Request) -> AsyncIterator[AsyncSession]:
    """The route's transaction: committed when the route has returned and before its answer is sent, rolled back
    when it raises. The connection is taken at the first statement, so checks made before it hold none; a
    tenant's request has its transaction pinned to the tenant then (row-level security, row_security.py)."""
    async with transaction(request.app.state.sessions) as session:
        row_security.pin_request_tenant(session.sync_session, request)
        yield session


SessionDep = Annotated[AsyncSession, Depends(_transaction, scope="function")]


async def issuing(request: Request) -> Issuing:
    s = settings(request)
    return Issuing(today=datetime.now(ZoneInfo(s.timezone)).date(), window_days=s.issue_window_days,
                   topic=INVOICE_EVENTS.qualified(s.topic_prefix), batch_max=s.batch_max)


IssuingDep = Annotated[Issuing, Depends(issuing)]


async def reconciler(request: Request) -> ReconcilerClient:
    return ReconcilerClient(request.app.state.reconciler_http, timeout=settings(request).reconciler_timeout)


ReconcilerDep = Annotated[ReconcilerClient, Depends(reconciler)]


async def taxstore(request: Request) -> TaxstoreClient:
    return TaxstoreClient(request.app.state.taxstore_http, timeout=settings(request).taxstore_timeout)


TaxstoreDep = Annotated[TaxstoreClient, Depends(taxstore)]


async def live_schedule(request: Request) -> Schedule | None:
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
