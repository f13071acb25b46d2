"""Cases and monthly summaries: the reconciler owns them; the tenant reaches them here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.issuer.api.answers import respond, tenants_case_view
from services.issuer.api.deps import ReconcilerDep, ScheduleDep, SessionDep, TenantDep
from services.issuer.invoices import cases
from services.issuer.schemas import CaseRequest
from shared.contracts.cases import CaseStatus
from shared.validators import MONTH_PATTERN, parse_month

__all__ = ["router"]

# Tagged "invoices" too, as they were when they shared the invoices' router: the published OpenAPI document
# keeps its tags.
router = APIRouter(prefix="/v1", tags=["invoices", "cases"])

_RECONCILER_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"description": "The reconciler cannot answer right now; see Retry-After"}}


@router.post("/invoices/{invoice_id}/cases", status_code=201,
             responses={200: {"description": "A case was already open for this invoice: that case"},
                        404: {"description": "No such invoice"},
                        409: {"description": "The invoice was voided or rejected: nothing to look for"},
                        **_RECONCILER_DOWN})
async def open_case(request: Request, invoice_id: str, tenant: TenantDep, rec: ReconcilerDep,
                    body: CaseRequest | None = None) -> Response:
    """The seller reports "the tax system doesn't have it": open a case (or get the open one) and check now."""
    return respond(await cases.open_case(sessions=request.app.state.sessions, tenant=tenant, invoice_id=invoice_id,
                                         note=body.note if body is not None else None, reconciler=rec))


@router.get("/cases/{case_no}", response_model=dict[str, Any],
            responses={404: {"description": "No such case"}, **_RECONCILER_DOWN})
async def get_case(case_no: str, tenant: TenantDep, rec: ReconcilerDep, schedule: ScheduleDep,
                   session: SessionDep) -> Response:
    """A case's progress: its status, what was checked and when, and the invoice as it stands now."""
    return respond(await cases.get_case(session=session, tenant=tenant, reconciler=rec, case_no=case_no,
                                        schedule=schedule))


class _CaseFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: CaseStatus | None = None
    limit: int = Field(default=50, ge=1, le=200)


@router.get("/cases", responses=_RECONCILER_DOWN)
async def list_cases(tenant: TenantDep, rec: ReconcilerDep, q: Annotated[_CaseFilters, Query()]) -> dict[str, Any]:
    """This tenant's cases, optionally only those open, resolved or closed."""
    found = await rec.list_cases(tenant_id=tenant.id, status=q.status, limit=q.limit)
    return {"items": [tenants_case_view(c) for c in found.items if c.tenant_id == tenant.id]}


@router.get("/summaries/{month}",
            responses={422: {"description": "Not a month from 2000-01 to 2099-12 (YYYY-MM)"}, **_RECONCILER_DOWN})
async def get_summary(month: Annotated[str, Path(json_schema_extra={"pattern": MONTH_PATTERN})], tenant: TenantDep,
                      rec: ReconcilerDep) -> dict[str, Any]:
    """The month's reconciliation for this seller: issued, confirmed, gaps, stuck, cases."""
    parse_month(month)  # the reconciler and the CLI check months with the same function
    return await rec.summary(seller_tax_id=tenant.tax_id, month=month)
