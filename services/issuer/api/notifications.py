"""The tenant's door to notifications: subscriptions (webhook, e-mail), the history of what was sent, and
mutes. The notifier owns all of it; these routes check what the issuer can (the API key, that an invoice or
case is the tenant's), validate the body with the contract the notifier validates it with again
(shared/contracts/notifier.py), and ask the notifier."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from services.issuer.api.deps import ReconcilerDep, TenantDep
from services.issuer.backends import NotifierClient
from services.issuer.invoices.cases import tenants_case
from services.issuer.invoices.reading import get_invoice_view
from services.issuer.tenants import Tenant
from shared.contracts.notifier import HistoryFilters, RotateSecret, SubscriptionCreate, SubscriptionPatch
from shared.db import transaction

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["notifications"])

_DOWN: dict[int | str, dict[str, Any]] = {503: {"description": "The notifier cannot answer right now; see Retry-After"}}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such subscription (or it is another tenant's)"}}


async def notifier(request: Request) -> NotifierClient:
    st = request.app.state
    return NotifierClient(st.notifier_http, timeout=st.settings.notifier_timeout)


NotifierDep = Annotated[NotifierClient, Depends(notifier)]


def _answer(status: int, body: dict[str, Any] | None) -> Response:
    return Response(status_code=204) if body is None else JSONResponse(body, status_code=status)


async def _own_invoice(request: Request, tenant: Tenant, invoice_id: str) -> str:
    """The invoice's id when it is the tenant's; 404 otherwise (before anything is asked of the notifier).
    Its own short transaction: none is held while the notifier is asked."""
    async with transaction(request.app.state.sessions) as session:
        view = await get_invoice_view(session=session, tenant=tenant, invoice_id=invoice_id)
    return str(view.id)


# --- subscriptions -----------------------------------------------------------------------------------

@router.post("/subscriptions", status_code=201, responses={
    201: {"description": "Created. A webhook subscription's `secret` is in this answer only: store it."},
    422: {"description": "Invalid; or the webhook URL is not allowed (e.g. a private or metadata address)"},
    **_DOWN})
async def create_subscription(body: SubscriptionCreate, tenant: TenantDep, notes: NotifierDep) -> Response:
    """Subscribe a webhook (`channel: webhook`, `url`) or e-mail addresses (`channel: email`, `emails`) to alert
    kinds: stuck, recovered, rejected, orphan, resolved, reminder (all by default)."""
    return _answer(*await notes.forward("POST", str(tenant.id), "/subscriptions",
                                        json=body.model_dump(mode="json", exclude_none=True)))


@router.get("/subscriptions", responses=_DOWN)
async def list_subscriptions(tenant: TenantDep, notes: NotifierDep) -> Response:
    return _answer(*await notes.forward("GET", str(tenant.id), "/subscriptions"))


@router.get("/subscriptions/{subscription_id}", responses={**_NOT_FOUND, **_DOWN})
async def get_subscription(subscription_id: uuid.UUID, tenant: TenantDep, notes: NotifierDep) -> Response:
    return _answer(*await notes.forward("GET", str(tenant.id), f"/subscriptions/{subscription_id}"))


@router.patch("/subscriptions/{subscription_id}", responses={**_NOT_FOUND, **_DOWN})
async def update_subscription(subscription_id: uuid.UUID, body: SubscriptionPatch, tenant: TenantDep,
                              notes: NotifierDep) -> Response:
    """Change the URL or addresses, the kinds, the description, or pause it (`active: false`)."""
    return _answer(*await notes.forward("PATCH", str(tenant.id), f"/subscriptions/{subscription_id}",
                                        json=body.model_dump(mode="json", exclude_unset=True)))


@router.delete("/subscriptions/{subscription_id}", status_code=204, responses={**_NOT_FOUND, **_DOWN})
async def delete_subscription(subscription_id: uuid.UUID, tenant: TenantDep, notes: NotifierDep) -> Response:
    return _answer(*await notes.forward("DELETE", str(tenant.id), f"/subscriptions/{subscription_id}"))


@router.post("/subscriptions/{subscription_id}/rotate-secret", responses={**_NOT_FOUND, **_DOWN})
async def rotate_secret(subscription_id: uuid.UUID, tenant: TenantDep, notes: NotifierDep,
                        body: RotateSecret | None = None) -> Response:
    """A new signing secret (in this answer only). The old one keeps signing beside it for `overlap_seconds`
    (default 24 h), so receivers can switch without missing a webhook."""
    return _answer(*await notes.forward("POST", str(tenant.id), f"/subscriptions/{subscription_id}/rotate-secret",
                                        json=(body or RotateSecret()).model_dump()))


@router.post("/subscriptions/{subscription_id}/ping", status_code=202, responses={**_NOT_FOUND, **_DOWN, 429: {
    "description": "This subscription was pinged its most in the last minute (`budget: ping`), or a budget of "
                   "this tenant is spent; see Retry-After"}})
async def ping(subscription_id: uuid.UUID, tenant: TenantDep, notes: NotifierDep) -> Response:
    """Send a signed test message now; follow it in GET /v1/notifications/{delivery_id}. A subscription takes at
    most the notifier's FAPIAO_PING_LIMIT pings (10 by default) in any minute."""
    return _answer(*await notes.forward("POST", str(tenant.id), f"/subscriptions/{subscription_id}/ping"))


# --- history -----------------------------------------------------------------------------------------

@router.get("/notifications", responses={404: {"description": "invoice_id names no invoice of this tenant"}, **_DOWN})
async def list_notifications(request: Request, tenant: TenantDep, notes: NotifierDep,
                             q: Annotated[HistoryFilters, Query()]) -> Response:
    """What was sent (or is being retried), newest first: channel, status, attempts, last error."""
    params = q.model_dump(mode="json")
    if q.invoice_id is not None:
        await _own_invoice(request, tenant, str(q.invoice_id))
    return _answer(*await notes.forward("GET", str(tenant.id), "/notifications", params=params))


@router.get("/notifications/{delivery_id}", responses={404: {"description": "No such notification"}, **_DOWN})
async def get_notification(delivery_id: uuid.UUID, tenant: TenantDep, notes: NotifierDep) -> Response:
    """One notification with every attempt (time, HTTP or SMTP status, latency, error) and the alerts it carried."""
    return _answer(*await notes.forward("GET", str(tenant.id), f"/notifications/{delivery_id}"))


@router.post("/notifications/{delivery_id}/retry", responses={
    404: {"description": "No such notification"}, 409: {"description": "Not exhausted"}, **_DOWN})
async def retry_notification(delivery_id: uuid.UUID, tenant: TenantDep, notes: NotifierDep) -> Response:
    """Start the attempts of an exhausted notification again (e.g. after fixing the receiver)."""
    return _answer(*await notes.forward("POST", str(tenant.id), f"/notifications/{delivery_id}/retry"))


@router.get("/invoices/{invoice_id}/notifications", responses={404: {"description": "No such invoice"}, **_DOWN})
async def invoice_notifications(request: Request, invoice_id: str, tenant: TenantDep,
                                notes: NotifierDep) -> Response:
    """Everything sent about this invoice (including digests that named it)."""
    iid = await _own_invoice(request, tenant, invoice_id)
    return _answer(*await notes.forward("GET", str(tenant.id), "/notifications",
                                        params={"invoice_id": iid, "limit": 200}))


# --- mutes -------------------------------------------------------------------------------------------

@router.get("/mutes", responses=_DOWN)
async def list_mutes(tenant: TenantDep, notes: NotifierDep) -> Response:
    return _answer(*await notes.forward("GET", str(tenant.id), "/mutes"))


@router.put("/invoices/{invoice_id}/mute", status_code=201, responses={
    200: {"description": "Already muted"}, 404: {"description": "No such invoice"}, **_DOWN})
async def mute_invoice(request: Request, invoice_id: str, tenant: TenantDep, notes: NotifierDep) -> Response:
    """No more alerts or reminders about this invoice until it resolves; the resolution itself is still sent."""
    iid = await _own_invoice(request, tenant, invoice_id)
    return _answer(*await notes.forward("PUT", str(tenant.id), f"/mutes/invoices/{iid}"))


@router.delete("/invoices/{invoice_id}/mute", status_code=204, responses={
    404: {"description": "No such invoice, or it is not muted"}, **_DOWN})
async def unmute_invoice(request: Request, invoice_id: str, tenant: TenantDep, notes: NotifierDep) -> Response:
    iid = await _own_invoice(request, tenant, invoice_id)
    return _answer(*await notes.forward("DELETE", str(tenant.id), f"/mutes/invoices/{iid}"))


@router.put("/cases/{case_no}/mute", status_code=201, responses={
    200: {"description": "Already muted"}, 404: {"description": "No such case"}, **_DOWN})
async def mute_case(case_no: str, tenant: TenantDep, rec: ReconcilerDep, notes: NotifierDep) -> Response:
    """No more alerts or reminders about this case until it resolves; the resolution itself is still sent."""
    await tenants_case(tenant, rec, case_no)
    return _answer(*await notes.forward("PUT", str(tenant.id), f"/mutes/cases/{case_no}"))


@router.delete("/cases/{case_no}/mute", status_code=204, responses={
    404: {"description": "No such case, or it is not muted"}, **_DOWN})
async def unmute_case(case_no: str, tenant: TenantDep, rec: ReconcilerDep, notes: NotifierDep) -> Response:
    await tenants_case(tenant, rec, case_no)
    return _answer(*await notes.forward("DELETE", str(tenant.id), f"/mutes/cases/{case_no}"))
