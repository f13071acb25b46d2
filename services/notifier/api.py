"""HTTP door into the notifier. Everything sits behind the admin token: tenants reach their part through the
issuer (their one public base URL), which calls the /admin/tenants/{tenant_id}/... routes on their behalf."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from services.notifier import deliveries, history, mutes, subscriptions
from services.notifier.mutes import Muted
from shared.contracts.cases import is_case_no
from shared.contracts.notifier import HistoryFilters, RotateSecret, SubscriptionCreate, SubscriptionPatch
from shared.db import transaction
from shared.errors import NotFound
from shared.http import require_admin

router = APIRouter(prefix="/admin", tags=["notifications"], dependencies=[Depends(require_admin)])


def _st(request: Request) -> Any:
    return request.app.state


def _tenant(tenant_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(tenant_id)
    except ValueError:
        raise NotFound(f"no tenant {tenant_id[:40]}") from None


def _wake(request: Request) -> None:
    if (worker := _st(request).worker) is not None:
        worker.wake()


# --- subscriptions ---------------------------------------------------------------------------------

@router.post("/tenants/{tenant_id}/subscriptions", status_code=201,
             responses={422: {"description": "Invalid, or the webhook URL is not allowed (private address)"}})
async def create_subscription(request: Request, tenant_id: str, body: SubscriptionCreate) -> dict[str, Any]:
    """A webhook (URL; the signing secret is in this answer only) or e-mail (addresses) subscription."""
    st = _st(request)
    async with transaction(st.sessions) as session:
        return await subscriptions.create_subscription(session=session, tenant_id=_tenant(tenant_id), body=body,
                                                 policy=st.policy, box=st.box)


@router.get("/tenants/{tenant_id}/subscriptions")
async def list_subscriptions(request: Request, tenant_id: str) -> dict[str, Any]:
    async with transaction(_st(request).sessions) as session:
        return {"items": await subscriptions.list_subscriptions(session=session, tenant_id=_tenant(tenant_id))}


@router.get("/tenants/{tenant_id}/subscriptions/{subscription_id}")
async def get_subscription(request: Request, tenant_id: str, subscription_id: str) -> dict[str, Any]:
    async with transaction(_st(request).sessions) as session:
        return await subscriptions.get_subscription(session=session, tenant_id=_tenant(tenant_id),
                                              subscription_id=subscription_id)


@router.patch("/tenants/{tenant_id}/subscriptions/{subscription_id}")
async def update_subscription(request: Request, tenant_id: str, subscription_id: str,
                              body: SubscriptionPatch) -> dict[str, Any]:
    st = _st(request)
    async with transaction(st.sessions) as session:
        return await subscriptions.update_subscription(session=session, tenant_id=_tenant(tenant_id),
                                                 subscription_id=subscription_id, patch=body, policy=st.policy)


@router.delete("/tenants/{tenant_id}/subscriptions/{subscription_id}", status_code=204)
async def delete_subscription(request: Request, tenant_id: str, subscription_id: str) -> Response:
    async with transaction(_st(request).sessions) as session:
        await subscriptions.delete_subscription(session=session, tenant_id=_tenant(tenant_id),
                                          subscription_id=subscription_id)
    return Response(status_code=204)


@router.post("/tenants/{tenant_id}/subscriptions/{subscription_id}/rotate-secret")
async def rotate_secret(request: Request, tenant_id: str, subscription_id: str,
                        body: RotateSecret | None = None) -> dict[str, Any]:
    """A new signing secret (shown once); the old one also signs until the overlap ends."""
    st = _st(request)
    async with transaction(st.sessions) as session:
        return await subscriptions.rotate_secret(session=session, tenant_id=_tenant(tenant_id),
                                           subscription_id=subscription_id,
                                           overlap_seconds=(body or RotateSecret()).overlap_seconds, box=st.box)


@router.post("/tenants/{tenant_id}/subscriptions/{subscription_id}/ping", status_code=202, responses={
    429: {"description": "This subscription had FAPIAO_PING_LIMIT pings in the last minute; see Retry-After"}})
async def ping(request: Request, tenant_id: str, subscription_id: str) -> dict[str, Any]:
    """Send a signed test message to this subscription now (at most FAPIAO_PING_LIMIT a minute)."""
    st = _st(request)
    async with transaction(st.sessions) as session:
        out = await deliveries.send_ping(session=session, tenant_id=_tenant(tenant_id),
                                         subscription_id=subscription_id, per_minute=st.settings.ping_limit)
    _wake(request)
    return out


# --- history ---------------------------------------------------------------------------------------

@router.get("/tenants/{tenant_id}/notifications")
async def list_notifications(request: Request, tenant_id: str,
                             q: Annotated[HistoryFilters, Query()]) -> dict[str, Any]:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    async with transaction(_st(request).sessions) as session:
        items, next_cursor = await history.list_deliveries(
            session=session, tenant_id=_tenant(tenant_id), invoice_id=q.invoice_id, status=q.status, limit=q.limit,
            cursor=q.cursor)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/tenants/{tenant_id}/notifications/{delivery_id}")
async def get_notification(request: Request, tenant_id: str, delivery_id: str) -> dict[str, Any]:
    async with transaction(_st(request).sessions) as session:
        return await history.get_delivery(session=session, tenant_id=_tenant(tenant_id), delivery_id=delivery_id)


@router.post("/tenants/{tenant_id}/notifications/{delivery_id}/retry")
async def retry_notification(request: Request, tenant_id: str, delivery_id: str) -> dict[str, Any]:
    """Start an exhausted notification's attempts again."""
    async with transaction(_st(request).sessions) as session:
        out = await history.requeue_delivery(session=session, tenant_id=_tenant(tenant_id), delivery_id=delivery_id)
    _wake(request)
    return out


# --- mutes -----------------------------------------------------------------------------------------

def _mute_target(invoice_id: str | None, case_no: str | None) -> dict[str, Any]:
    if invoice_id is not None:
        try:
            return {"invoice_id": uuid.UUID(invoice_id)}
        except ValueError:
            raise NotFound(f"no invoice {invoice_id[:40]}") from None
    if not is_case_no(case_no):
        raise NotFound(f"no case {(case_no or '')[:40]}")
    return {"case_no": case_no}


@router.get("/tenants/{tenant_id}/mutes")
async def list_mutes(request: Request, tenant_id: str) -> dict[str, Any]:
    async with transaction(_st(request).sessions) as session:
        return {"items": await mutes.list_mutes(session=session, tenant_id=_tenant(tenant_id))}


async def _mute(request: Request, tenant_id: str, target: dict[str, Any]) -> JSONResponse:
    async with transaction(_st(request).sessions) as session:
        muted = await mutes.mute(session=session, tenant_id=_tenant(tenant_id), **target)
    return _muted(muted)


def _muted(outcome: Muted) -> JSONResponse:
    """Muting, in HTTP: 201 muted now, 200 muted already."""
    return JSONResponse(outcome.mute, status_code=201 if outcome.created else 200)


async def _unmute(request: Request, tenant_id: str, target: dict[str, Any]) -> Response:
    async with transaction(_st(request).sessions) as session:
        await mutes.unmute(session=session, tenant_id=_tenant(tenant_id), **target)
    return Response(status_code=204)


@router.put("/tenants/{tenant_id}/mutes/invoices/{invoice_id}", status_code=201)
async def mute_invoice(request: Request, tenant_id: str, invoice_id: str) -> JSONResponse:
    """No more alerts or reminders about this invoice until it resolves (the resolution itself is sent)."""
    return await _mute(request, tenant_id, _mute_target(invoice_id, None))


@router.delete("/tenants/{tenant_id}/mutes/invoices/{invoice_id}", status_code=204)
async def unmute_invoice(request: Request, tenant_id: str, invoice_id: str) -> Response:
    return await _unmute(request, tenant_id, _mute_target(invoice_id, None))


@router.put("/tenants/{tenant_id}/mutes/cases/{case_no}", status_code=201)
async def mute_case(request: Request, tenant_id: str, case_no: str) -> JSONResponse:
    return await _mute(request, tenant_id, _mute_target(None, case_no))


@router.delete("/tenants/{tenant_id}/mutes/cases/{case_no}", status_code=204)
async def unmute_case(request: Request, tenant_id: str, case_no: str) -> Response:
    return await _unmute(request, tenant_id, _mute_target(None, case_no))


# --- operators -------------------------------------------------------------------------------------

@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """Queues (pending, retrying, oldest), waiting digest items, and the delivery settings."""
    st = _st(request)
    async with transaction(st.sessions) as session:
        report = await deliveries.queue_report(session=session)
    s = st.settings
    return {**report, "settings": {
        "digest_window_seconds": s.digest_window, "remind_after_seconds": s.remind_after,
        "max_attempts": s.max_attempts, "retry_base_seconds": s.retry_base, "retry_cap_seconds": s.retry_cap,
        "webhook_timeout_seconds": s.webhook_timeout, "smtp": f"{s.smtp_host}:{s.smtp_port}",
        "webhook_allow_private": s.webhook_allow_private or None}}


@router.get("/alerts")
async def alerts(request: Request, tenant_id: uuid.UUID | None = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """The latest alerts (all tenants, or one) and, per subscription, whether they went out."""
    async with transaction(_st(request).sessions) as session:
        return {"items": await history.recent_alerts(session=session, tenant_id=tenant_id, limit=limit)}


@router.get("/notifications/{delivery_id}")
async def any_notification(request: Request, delivery_id: str) -> dict[str, Any]:
    async with transaction(_st(request).sessions) as session:
        return await history.get_delivery(session=session, tenant_id=None, delivery_id=delivery_id)


@router.post("/notifications/{delivery_id}/retry")
async def any_retry(request: Request, delivery_id: str) -> dict[str, Any]:
    async with transaction(_st(request).sessions) as session:
        out = await history.requeue_delivery(session=session, tenant_id=None, delivery_id=delivery_id)
    _wake(request)
    return out
