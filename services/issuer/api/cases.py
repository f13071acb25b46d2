"""Cases and monthly summaries: the reconciler owns them; the tenant reaches them here."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.issuer.api.answers import respond, tenants_case_view
from services.issuer.api.deps import ReconcilerDep, ScheduleDep, SessionDep, TenantDep
from services.issuer.api.invoices import render
from services.issuer.invoices import cases, evidence, report, summaries
from services.issuer.schemas import CaseRequest
from shared.contracts.cases import CaseStatus
from shared.errors import FapiaoError
from shared.validators import MONTH_PATTERN, parse_month

__all__ = ["SUMMARY_ANSWERS", "router", "summary_response"]

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


EVIDENCE_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"description": "A ZIP of evidence.pdf (the case, the invoice and its whole timeline with the authority's "
                         "answers), evidence.json (the same facts) and invoice.pdf",
          "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
    404: {"description": "No such case"}, **_RECONCILER_DOWN}


async def evidence_response(case: dict[str, Any], invoice: dict[str, Any] | None) -> Response:
    facts = evidence.evidence_facts(case, invoice)
    body = await render(evidence.evidence_zip, facts)
    return Response(body, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="evidence-{case["case_no"]}.zip"'})


@router.get("/cases/{case_no}/evidence", response_class=Response, responses=EVIDENCE_ANSWER)
async def case_evidence(case_no: str, tenant: TenantDep, rec: ReconcilerDep, schedule: ScheduleDep,
                        session: SessionDep) -> Response:
    """保留证据: the case's evidence pack to attach when writing to the tax bureau — a PDF with the invoice and every
    step (submission attempts, receipts, checks, alerts, with their times and the authority's answers) and the
    same facts as JSON, in one ZIP."""
    case, invoice = await cases.case_evidence(session=session, tenant=tenant, reconciler=rec, case_no=case_no,
                                              schedule=schedule)
    return await evidence_response(tenants_case_view(case),
                                   invoice.model_dump(mode="json") if invoice is not None else None)


class _CaseFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: CaseStatus | None = None
    limit: int = Field(default=50, ge=1, le=200)


@router.get("/cases", responses=_RECONCILER_DOWN)
async def list_cases(tenant: TenantDep, rec: ReconcilerDep, q: Annotated[_CaseFilters, Query()]) -> dict[str, Any]:
    """This tenant's cases, optionally only those open, resolved or closed."""
    found = await rec.list_cases(tenant_id=tenant.id, status=q.status, limit=q.limit)
    return {"items": [tenants_case_view(c) for c in found.items if c.tenant_id == tenant.id]}


_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
SUMMARY_FORMATS: dict[str, str] = {"json": "application/json", "csv": "text/csv", "xlsx": _XLSX,
                                   "pdf": "application/pdf", "html": "text/html"}
"""What GET /v1/summaries/{month} answers in: `format` names one, or else the Accept header picks by its media type."""


class NotAcceptable(FapiaoError):
    status, title, code = 406, "Not acceptable", "not_acceptable"


def summary_format(fmt: str | None, accept: str | None) -> str:
    """`format` when given (the query parameter checked it); else the Accept header's most preferred type we
    have (`*/*`, `application/*` or no header: JSON); 406 when it accepts none of them."""
    if fmt is not None:
        return fmt
    if not accept or not accept.strip():
        return "json"
    by_type = {media: name for name, media in SUMMARY_FORMATS.items()}
    choices: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        name = "json" if media in ("*/*", "application/*") else by_type.get(media)
        if name is None and media == "text/*":
            name = "csv"
        if name is not None and q > 0:
            choices.append((-q, i, name))
    if not choices:
        raise NotAcceptable(f"this summary is available as {', '.join(SUMMARY_FORMATS.values())}; the Accept "
                            f"header asks for none of them (or pass ?format={'|'.join(SUMMARY_FORMATS)})",
                            extra={"available": list(SUMMARY_FORMATS.values())})
    return min(choices)[2]


_FORMAT_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "The summary as JSON, or as a file to download (format, or the Accept header)",
          "content": {"application/json": {"schema": {"type": "object"}},
                      "text/csv": {"schema": {"type": "string"}},
                      _XLSX: {"schema": {"type": "string", "format": "binary"}},
                      "application/pdf": {"schema": {"type": "string", "format": "binary"}},
                      "text/html": {"schema": {"type": "string"}}}},
    406: {"description": "The Accept header asks for no format this summary comes in (problem+json)"},
    422: {"description": "Not a month from 2000-01 to 2099-12 (YYYY-MM), or an unknown format"}}
SUMMARY_ANSWERS = {**_FORMAT_ANSWERS, **_RECONCILER_DOWN}
SummaryFormat = Literal["json", "csv", "xlsx", "pdf", "html"]
FORMAT_HELP = ("json; csv (UTF-8 with a BOM) or xlsx for a spreadsheet; pdf or html for the month's report. Without "
               "it the Accept header chooses (JSON when it accepts anything)")


@router.get("/summaries/{month}", response_class=JSONResponse, responses=SUMMARY_ANSWERS)
async def get_summary(month: Annotated[str, Path(json_schema_extra={"pattern": MONTH_PATTERN})], tenant: TenantDep,
                      rec: ReconcilerDep,
                      format: Annotated[SummaryFormat | None, Query(description=FORMAT_HELP)] = None,
                      accept: Annotated[str | None, Header(include_in_schema=False)] = None) -> Response:
    """The month's reconciliation for this seller: issued, confirmed, gaps, stuck, cases; as JSON, as CSV or XLSX
    for a spreadsheet, or as the month's report to read (HTML, PDF: counts and amounts blue / red / net, gaps by
    kind and age, cases and outcomes, a chart of each day's issued and confirmed invoices)."""
    parse_month(month)  # the reconciler and the CLI check months with the same function
    chosen = summary_format(format, accept)
    body = await rec.summary(seller_tax_id=tenant.tax_id, month=month)
    return await summary_response(body, chosen, tax_id=tenant.tax_id, month=month)


async def summary_response(body: dict[str, Any], chosen: str, *, tax_id: str, month: str) -> Response:
    """A seller's monthly summary (the reconciler's JSON) in the chosen format, as tenants and operators get it."""
    if chosen == "json":
        return JSONResponse(body)
    name = f"summary-{tax_id}-{month}.{chosen}"
    disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
    if chosen == "csv":
        return Response(summaries.summary_csv(body), media_type="text/csv; charset=utf-8", headers=disposition)
    if chosen == "html":
        # A page to open in a browser; a tenant's text in it is escaped, and it may load or run nothing.
        return Response(report.report_html(body), media_type="text/html; charset=utf-8", headers={
            "Content-Disposition": f'inline; filename="{name}"',
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"})
    if chosen == "pdf":
        return Response(await render(report.report_pdf, body), media_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="{name}"'})
    return Response(await render(summaries.summary_xlsx, body), media_type=_XLSX, headers=disposition)
