"""Operators' routes (admin token): register tenants and manage their API keys, find invoices whichever tenant
issued them, and any tenant's documents (an invoice's page, a case's evidence pack, a month's summary)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select

from services.issuer import keys
from services.issuer import models as m
from services.issuer.api.answers import found, respond
from services.issuer.api.cases import (
    EVIDENCE_ANSWER,
    FORMAT_HELP,
    SUMMARY_ANSWERS,
    SummaryFormat,
    evidence_response,
    summary_format,
    summary_response,
)
from services.issuer.api.deps import ReconcilerDep, ScheduleDep, SessionDep
from services.issuer.api.invoices import PDF_ANSWER, pdf_response
from services.issuer.ops import lookups
from services.issuer.tenants import create_tenant as register_tenant
from shared.contracts.cases import is_case_no
from shared.errors import NotFound
from shared.http import require_admin
from shared.uscc import USCC_PATTERN
from shared.validators import CLEAN_NAME, MONTH_PATTERN, JsonPattern, parse_month

__all__ = ["router"]

router = APIRouter(prefix="/admin", tags=["admin"])


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(min_length=1, max_length=200), CLEAN_NAME]
    tax_id: Annotated[str, JsonPattern(USCC_PATTERN)] = Field(
        min_length=1, max_length=18, description="the seller's USCC (its check character is checked too)")


@router.post("/tenants", status_code=201, response_model=dict[str, Any], dependencies=[Depends(require_admin)],
             responses={409: {"description": "A tenant with this tax id exists already"}})
async def create_tenant(body: TenantCreate, session: SessionDep) -> Response:
    """Register a seller enterprise; the API key in the answer is shown this once only."""
    return respond(await register_tenant(session=session, name=body.name, tax_id=body.tax_id))


@router.get("/tenants", dependencies=[Depends(require_admin)])
async def list_tenants(session: SessionDep, tax_id: Annotated[str | None, Query(pattern=r"^[0-9A-Za-z]{1,18}$")] = None,
                       ) -> dict[str, Any]:
    """The tenants, oldest first (one with `tax_id`, or none)."""
    t = m.tenants
    query = select(t).order_by(t.c.created_at, t.c.id)
    if tax_id is not None:
        query = query.where(t.c.tax_id == tax_id.upper())
    rows = (await session.execute(query)).all()
    return {"items": [{"id": str(r.id), "name": r.name, "tax_id": r.tax_id, "created_at": r.created_at.isoformat()}
                      for r in rows]}


@router.get("/invoices", dependencies=[Depends(require_admin)])
async def find_invoices(number: Annotated[str, Query(pattern=r"^[0-9]{20}$")], session: SessionDep,
                        seller_tax_id: Annotated[str | None, Query(pattern=r"^[0-9A-Za-z]{1,18}$")] = None,
                        ) -> dict[str, Any]:
    """Invoices with this number, whichever tenant issued them (numbers are unique per seller only)."""
    items = await lookups.find_invoices(session=session, number=number,
                                        seller_tax_id=seller_tax_id.upper() if seller_tax_id else None)
    return {"items": [found(i) for i in items]}


@router.get("/invoices/{invoice_id}", response_model=dict[str, Any], dependencies=[Depends(require_admin)])
async def any_invoice(invoice_id: str, schedule: ScheduleDep, session: SessionDep) -> Response:
    """One invoice as its tenant sees it (status, reason, next action, timeline), plus the tenant."""
    return respond(await lookups.get_invoice_any_tenant(session=session, invoice_id=invoice_id, schedule=schedule))


@router.get("/invoices/{invoice_id}/pdf", dependencies=[Depends(require_admin)], response_class=Response,
            responses=PDF_ANSWER)
async def any_invoice_pdf(invoice_id: str, session: SessionDep) -> Response:
    """One invoice of any tenant as its printable page (as its tenant gets it from GET /v1/invoices/{id}/pdf)."""
    owned = await lookups.get_invoice_any_tenant(session=session, invoice_id=invoice_id)
    return await pdf_response(owned.invoice)


@router.get("/cases/{case_no}/evidence", dependencies=[Depends(require_admin)], response_class=Response,
            responses=EVIDENCE_ANSWER)
async def any_case_evidence(case_no: str, rec: ReconcilerDep, schedule: ScheduleDep, session: SessionDep) -> Response:
    """A case's evidence pack, whichever tenant it is about (as its tenant gets it from
    GET /v1/cases/{case_no}/evidence, the tenant's id aside)."""
    case = await rec.get_case(case_no) if is_case_no(case_no) else None
    if case is None:
        raise NotFound(f"no case {case_no[:40]}")
    try:
        invoice = (await lookups.get_invoice_any_tenant(session=session, invoice_id=str(case.invoice_id),
                                                        schedule=schedule)).invoice.model_dump(mode="json")
    except NotFound:
        invoice = None
    return await evidence_response(case.model_dump(mode="json", exclude={"tenant_id"}), invoice)


@router.get("/summaries/{month}", dependencies=[Depends(require_admin)], response_class=JSONResponse,
            responses={**SUMMARY_ANSWERS, 404: {"description": "No tenant has this tax id"}})
async def any_summary(month: Annotated[str, Path(json_schema_extra={"pattern": MONTH_PATTERN})],
                      seller_tax_id: Annotated[str, Query(pattern=r"^[0-9A-Za-z]{1,18}$",
                                                          description="the tenant, by its tax id (USCC)")],
                      session: SessionDep, rec: ReconcilerDep,
                      format: Annotated[SummaryFormat | None, Query(description=FORMAT_HELP)] = None,
                      accept: Annotated[str | None, Header(include_in_schema=False)] = None) -> Response:
    """One tenant's monthly summary, chosen by its tax id, in the formats its tenant gets from
    GET /v1/summaries/{month}: JSON, CSV, XLSX, or the month's report as PDF or HTML."""
    parse_month(month)
    chosen = summary_format(format, accept)
    tax_id = seller_tax_id.upper()
    known = (await session.execute(select(m.tenants.c.id).where(m.tenants.c.tax_id == tax_id))).first()
    if known is None:
        raise NotFound(f"no tenant with tax id {tax_id}")
    body = await rec.summary(seller_tax_id=tax_id, month=month)
    return await summary_response(body, chosen, tax_id=tax_id, month=month)


# --- a tenant's API keys ------------------------------------------------------------------------------------------

_KEYS: dict[int | str, dict[str, Any]] = {404: {"description": "No such tenant (or no such key of it)"}}
_TWO_YEARS = 2 * 366 * 86_400


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), CLEAN_NAME] = Field(
        default="default", description="a name to tell the key by, e.g. 'erp-production'")
    expires_in_seconds: int | None = Field(default=None, ge=60, le=_TWO_YEARS,
                                           description="the key stops working this long from now; none: until revoked")


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    overlap_seconds: int = Field(default=86_400, ge=0, le=30 * 86_400,
                                 description="how long the old key keeps working beside the new one")


def _issued(issued: keys.IssuedKey) -> dict[str, Any]:
    return {**issued.view, "key": issued.key, "key_shown_once": True}


@router.get("/tenants/{tenant_id}/keys", dependencies=[Depends(require_admin)], responses=_KEYS)
async def list_keys(tenant_id: uuid.UUID, session: SessionDep) -> dict[str, Any]:
    """The tenant's keys, oldest first: label, first characters, state (active, expired, revoked), created,
    expires, revoked and last used (to the minute). Never the key itself."""
    return {"items": await keys.list_keys(session=session, tenant_id=tenant_id)}


@router.post("/tenants/{tenant_id}/keys", status_code=201, dependencies=[Depends(require_admin)], responses=_KEYS)
async def create_key(tenant_id: uuid.UUID, body: KeyCreate, session: SessionDep) -> JSONResponse:
    """Another key for the tenant (several can be active at once); the key is in this answer only."""
    issued = await keys.create_key(session=session, tenant_id=tenant_id, label=body.label,
                                   expires_in_seconds=body.expires_in_seconds)
    return JSONResponse(_issued(issued), status_code=201)


@router.post("/tenants/{tenant_id}/keys/{key_id}/revoke", dependencies=[Depends(require_admin)], responses=_KEYS)
async def revoke_key(tenant_id: uuid.UUID, key_id: uuid.UUID, session: SessionDep) -> dict[str, Any]:
    """The key stops working within a second on every issuer replica (FAPIAO_API_KEY_CACHE_SECONDS). Revoking
    again is no error."""
    return await keys.revoke_key(session=session, tenant_id=tenant_id, key_id=key_id)


@router.post("/tenants/{tenant_id}/keys/{key_id}/rotate", status_code=201, dependencies=[Depends(require_admin)],
             responses={**_KEYS, 409: {"description": "The key is revoked or expired: create a new one"}})
async def rotate_key(tenant_id: uuid.UUID, key_id: uuid.UUID, session: SessionDep,
                     body: KeyRotate | None = None) -> JSONResponse:
    """A new key under the same label; the old one works on for `overlap_seconds` (a day by default), then
    expires. `key` is the new key, shown this once."""
    issued, old = await keys.rotate_key(session=session, tenant_id=tenant_id, key_id=key_id,
                                        overlap_seconds=(body or KeyRotate()).overlap_seconds)
    return JSONResponse({**_issued(issued), "replaces": old}, status_code=201)
