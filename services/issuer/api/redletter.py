"""Red-letter credit notes and verification: ask for a form on a blue invoice, read the forms this tenant is a
party to (as seller, or as a buyer that is a tenant here), confirm or reject the ones waiting for it, and
verify (查验) an invoice at the tax authority. Each route parses, makes one service call and answers."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.issuer.api.answers import respond
from services.issuer.api.deps import IdempotencyKey, IssuingDep, SessionDep, TaxstoreDep, TenantDep, once
from services.issuer.invoices import redletter
from services.issuer.schemas import (
    RedLetterCreate,
    RedLetterDecide,
    RedLetterFormList,
    RedLetterFormView,
    VerifyRequest,
)
from shared.contracts.taxstore import VerifyAnswer

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["red letters"])

_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"description": "No such invoice or form of this tenant's (another tenant's is none either)"},
    409: {"description": "form_open, not_at_authority, red_invoice, nothing_left, own_form, form_decided, or the "
                         "form is no longer pending (form_<status>)"},
    422: {"description": "Invalid request, or more than is left of the invoice (errors name the line)"}}


@router.post("/invoices/{invoice_id}/red-letter", status_code=202, response_model=RedLetterFormView,
             responses=_ERRORS)
async def request_red_letter(request: Request, invoice_id: str, body: RedLetterCreate, tenant: TenantDep,
                             session: SessionDep, rules: IssuingDep,
                             idempotency_key: IdempotencyKey = None) -> Response:
    """Ask for a red-letter credit note (红字发票信息确认单) on a blue invoice the tax authority holds: all that is
    left of it, or parts of its lines. Accepted (202) and stored with its event; the form's status follows
    (`GET /v1/red-letter-forms/{id}`). With an Idempotency-Key a repeat gets the first answer."""
    endpoint = f"POST /v1/invoices/{invoice_id}/red-letter"
    return respond(await redletter.request_red_letter(
        session=session, tenant=tenant, invoice_id=invoice_id, body=body, topic=rules.topic,
        once=once(request, idempotency_key, endpoint, body.model_dump(mode="json"))))


class _FormQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["seller", "buyer"] | None = Field(default=None, description="only forms where this tenant is it")
    status: Literal["requested", "pending", "confirmed", "rejected", "voided", "failed"] | None = None
    awaiting: bool = Field(default=False, description="only pending forms waiting for this tenant's decision")
    invoice_id: uuid.UUID | None = None
    cursor: str | None = Field(default=None, max_length=100)
    limit: int = Field(default=50, ge=1, le=200)


@router.get("/red-letter-forms", response_model=RedLetterFormList)
async def list_forms(tenant: TenantDep, q: Annotated[_FormQuery, Query()], session: SessionDep) -> RedLetterFormList:
    """The red-letter forms this tenant is a party to, newest first: its own, and those on invoices it was sold
    when the seller is a tenant here too (`awaiting=true`: the ones waiting for its confirmation)."""
    return await redletter.list_forms(session=session, tenant=tenant, role=q.role, status=q.status,
                                      awaiting=q.awaiting, invoice_id=q.invoice_id, cursor=q.cursor, limit=q.limit)


@router.get("/red-letter-forms/{form_id}", response_model=RedLetterFormView, responses={404: _ERRORS[404]})
async def get_form(form_id: str, tenant: TenantDep, session: SessionDep) -> RedLetterFormView:
    """One form, where it stands, why, and what happens next."""
    return await redletter.get_form(session=session, tenant=tenant, form_id=form_id)


async def _decide(form_id: str, body: RedLetterDecide, tenant: TenantDep, session: SessionDep, rules: IssuingDep,
                  *, confirm: bool) -> Response:
    outcome = await redletter.decide_form(session=session, tenant=tenant, form_id=form_id, confirm=confirm,
                                          note=body.note, topic=rules.topic)
    return JSONResponse(outcome.form.model_dump(mode="json"), status_code=202 if outcome.changed else 200)


@router.post("/red-letter-forms/{form_id}/confirm", status_code=202, response_model=RedLetterFormView,
             responses={200: {"description": "Asked for already: the form as it stands"}, **_ERRORS})
async def confirm_form(form_id: str, body: RedLetterDecide, tenant: TenantDep, session: SessionDep,
                       rules: IssuingDep) -> Response:
    """The buyer confirms a form waiting for it; the decision reaches the tax authority (retried until it
    answers), which then issues the red invoice. Asking again answers the form (200)."""
    return await _decide(form_id, body, tenant, session, rules, confirm=True)


@router.post("/red-letter-forms/{form_id}/reject", status_code=202, response_model=RedLetterFormView,
             responses={200: {"description": "Asked for already: the form as it stands"}, **_ERRORS})
async def reject_form(form_id: str, body: RedLetterDecide, tenant: TenantDep, session: SessionDep,
                      rules: IssuingDep) -> Response:
    """The buyer rejects a form waiting for it; nothing is reversed."""
    return await _decide(form_id, body, tenant, session, rules, confirm=False)


@router.post("/verify", response_model=VerifyAnswer, tags=["verification"], responses={
    429: {"description": "This tenant's write budget is spent"},
    503: {"description": "The tax authority cannot answer now; retry after Retry-After"}})
async def verify(body: VerifyRequest, tenant: TenantDep, taxstore: TaxstoreDep) -> VerifyAnswer:
    """发票查验: ask the tax authority about any invoice (one this tenant received, say) by number, issue date and
    total; `result` is normal, red_lettered, partly_red_lettered, voided, under_review or not_found. A read with
    no effect, so it is asked directly (no outbox); it spends the tenant's write budget like any POST."""
    return await taxstore.verify(number=body.number, issue_date=body.issue_date.isoformat(), total=body.total)
