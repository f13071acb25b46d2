"""Operators' routes (admin token): register tenants, find invoices whichever tenant issued them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.issuer.api.answers import found, respond
from services.issuer.api.deps import ScheduleDep, SessionDep
from services.issuer.ops import lookups
from services.issuer.tenants import create_tenant as register_tenant
from shared.http import require_admin
from shared.uscc import USCC_PATTERN
from shared.validators import CLEAN_NAME, JsonPattern

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
