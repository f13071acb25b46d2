"""HTTP door into the issuer: parse, call service.py inside a transaction, shape the response."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.issuer import service
from services.issuer.backends import ReconcilerClient
from services.issuer.csv_import import CsvFormatError, parse_csv, row_errors
from services.issuer.lifecycle import Status
from services.issuer.schemas import (
    BatchRequest,
    CaseRequest,
    InvoiceCreate,
    InvoiceList,
    InvoiceRead,
    VoidRequest,
)
from services.issuer.settings import IssuerSettings
from shared.contracts.cases import CaseStatus, is_case_no
from shared.contracts.reconciler import CaseDetail, CaseView
from shared.db import transaction
from shared.errors import BadRequest, FieldError, NotFound, PayloadTooLarge, Unauthorized, ValidationFailed
from shared.http import auth_dependency, require_admin
from shared.money import parse_amount
from shared.topics import INVOICE_EVENTS
from shared.validators import parse_month

router = APIRouter(prefix="/v1", tags=["invoices"])
admin_router = APIRouter(prefix="/admin", tags=["admin"])


def _state(request: Request) -> Any:
    return request.app.state


@auth_dependency
async def current_tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> service.Tenant:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("send the API key as 'Authorization: Bearer <key>'")
    key = authorization[7:].strip()
    async with _state(request).engine.connect() as conn:
        tenant = await service.authenticate(session=conn, api_key=key)
    if tenant is None:
        raise Unauthorized("unknown or revoked API key")
    return tenant


TenantDep = Annotated[service.Tenant, Depends(current_tenant)]


def reconciler(request: Request) -> ReconcilerClient:
    st = _state(request)
    return ReconcilerClient(st.reconciler_http, timeout=st.settings.reconciler_timeout)


ReconcilerDep = Annotated[ReconcilerClient, Depends(reconciler)]


def live_schedule(request: Request) -> service.Schedule | None:
    """The reconciler's live schedule, so that an explanation quotes the next check as it is now."""
    ledger = _state(request).schedule
    return ledger.schedule if ledger is not None else None


ScheduleDep = Annotated[service.Schedule | None, Depends(live_schedule)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                              pattern=r"^[\x21-\x7e]+$")]


def _today(settings: IssuerSettings) -> date:
    return datetime.now(ZoneInfo(settings.timezone)).date()


def _topic(settings: IssuerSettings) -> str:
    return INVOICE_EVENTS.qualified(settings.topic_prefix)


async def _idempotent(request: Request, tenant: service.Tenant, key: str | None, endpoint: str, body: Any,
                      produce: Any) -> Response:
    """Run `produce(session) -> (status, body)` at most once per Idempotency-Key."""
    st = _state(request)
    async with transaction(st.sessions) as session:
        if key is not None:
            stored = await service.claim_idempotency_key(
                session=session, tenant_id=tenant.id, key=key, endpoint=endpoint,
                req_hash=service.request_hash(endpoint, body), wait_seconds=st.settings.idempotency_wait_seconds)
            if stored is not None:
                return Response(stored.body, status_code=stored.status_code, media_type=_media(stored.status_code),
                                headers={"Idempotent-Replayed": "true"})
        status, payload = await produce(session)
        content = orjson.dumps(payload)
        if key is not None:
            await service.store_idempotent_response(session=session, tenant_id=tenant.id, key=key,
                                                    status_code=status, body=content.decode())
    return Response(content, status_code=status, media_type=_media(status))


def _media(status: int) -> str:
    return "application/problem+json" if status >= 400 else "application/json"


@router.post("/invoices", status_code=201, response_model=InvoiceRead,
             responses={200: {"description": "Same number, same content: the existing invoice"},
                        409: {"description": "Number already used with different content"},
                        413: {"description": "Body too large"}, 422: {"description": "Validation failed"}})
async def create_invoice(request: Request, invoice: InvoiceCreate, tenant: TenantDep,
                         idempotency_key: IdempotencyKey = None) -> Response:
    """Issue one invoice. It is stored with its event in one transaction; the event then reaches Kafka."""
    settings: IssuerSettings = _state(request).settings
    checked = service.validate_item(invoice, tenant=tenant, today=_today(settings),
                                    window_days=settings.issue_window_days)
    if isinstance(checked, list):
        raise ValidationFailed(checked)

    async def produce(session: Any) -> tuple[int, Any]:
        [result] = await service.create_invoices(session=session, tenant=tenant, items=[checked], source="api",
                                                 topic=_topic(settings))
        if result.status == 409:
            return 409, {"type": "https://fapiao.dev/problems/conflict", "title": "Conflict", "status": 409,
                         "code": "number_taken", "detail": result.detail, "existing": result.invoice}
        return result.status, result.invoice

    return await _idempotent(request, tenant, idempotency_key, "POST /v1/invoices",
                             invoice.model_dump(mode="json"), produce)


@router.post("/invoices/batch")
async def create_batch(request: Request, batch: BatchRequest, tenant: TenantDep,
                       idempotency_key: IdempotencyKey = None) -> Response:
    """Up to `FAPIAO_BATCH_MAX` invoices in one transaction; a result per item, in order."""
    settings: IssuerSettings = _state(request).settings
    if len(batch.invoices) > settings.batch_max:
        raise PayloadTooLarge(f"a batch holds at most {settings.batch_max} invoices, got {len(batch.invoices)}")
    today = _today(settings)
    items = [
        service.validate_item(raw, tenant=tenant, today=today, window_days=settings.issue_window_days)
        for raw in batch.invoices
    ]

    async def produce(session: Any) -> tuple[int, Any]:
        results = await service.create_invoices(session=session, tenant=tenant, items=items, source="batch",
                                                topic=_topic(settings))
        counts = {"created": 0, "existing": 0, "conflicts": 0, "invalid": 0}
        for r in results:
            counts[{201: "created", 200: "existing", 409: "conflicts", 422: "invalid"}[r.status]] += 1
        return 200, {**counts, "results": [r.as_dict() for r in results]}

    return await _idempotent(request, tenant, idempotency_key, "POST /v1/invoices/batch", batch.invoices, produce)


@router.post("/invoices/import", openapi_extra={
    "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
    responses={400: {"description": "Not UTF-8, or NUL bytes"}, 413: {"description": "Too many invoices or rows"},
               422: {"description": "The file cannot be read (errors name the row and column); nothing written"}})
async def import_csv(request: Request, tenant: TenantDep, idempotency_key: IdempotencyKey = None) -> Response:
    """CSV of historical invoices, one row per line; per-row errors, every good invoice kept.

    A file that cannot be read as a whole (an unclosed quote, a cell over 2,000 characters, a row with more
    cells than the header) is refused with 422 naming the row, and nothing is written. With an
    Idempotency-Key, a repeat of the same file gets the first answer back, as for POST /v1/invoices.
    """
    settings: IssuerSettings = _state(request).settings
    raw = await request.body()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the file is not UTF-8 (byte {exc.start})") from None
    if "\x00" in text:
        raise BadRequest("the file contains NUL bytes")
    try:
        invoices, errors = parse_csv(text, seller_tax_id=tenant.tax_id, seller_name=tenant.name,
                                     max_rows=settings.batch_max * 10)
    except CsvFormatError as exc:
        where = exc.where
        raise ValidationFailed([exc.field_error()],
                               detail=f"the file was not imported: {where} {exc}" if where else
                               f"the file was not imported: {exc}") from None
    if len(invoices) > settings.batch_max:
        raise PayloadTooLarge(f"at most {settings.batch_max} invoices per request; split the file")
    bad_numbers = {e.number for e in errors if e.number}
    today = _today(settings)
    checked: list[Any] = []
    for inv in invoices:
        item = service.validate_item(inv.raw, tenant=tenant, today=today, window_days=settings.issue_window_days)
        if isinstance(item, list):
            errors.extend(row_errors(inv, item))
            bad_numbers.add(inv.number)
        checked.append(item if inv.number not in bad_numbers else [FieldError("(row)", "see row errors")])

    async def produce(session: Any) -> tuple[int, Any]:
        results = await service.create_invoices(session=session, tenant=tenant, items=checked, source="import",
                                                topic=_topic(settings))
        return 200, {
            "rows": sum(len(i.rows) for i in invoices) + sum(1 for e in errors if e.number is None),
            "invoices": len(invoices),
            "created": sum(r.status == 201 for r in results),
            "existing": sum(r.status == 200 for r in results),
            "conflicts": sum(r.status == 409 for r in results),
            "rejected": sum(r.status == 422 for r in results) + sum(1 for e in errors if e.number is None),
            "errors": [e.as_dict() for e in sorted(errors, key=lambda e: (e.row, e.column))],
            "results": [{"number": inv.number, "rows": inv.rows, "status": r.status,
                         "id": (r.invoice or {}).get("id"), "detail": r.detail}
                        for inv, r in zip(invoices, results, strict=True)],
        }

    # The request hash covers the file's bytes: the same file again is the same request.
    return await _idempotent(request, tenant, idempotency_key, "POST /v1/invoices/import",
                             hashlib.sha256(raw).hexdigest(), produce)


class _Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Status | None = None
    number: str | None = Field(default=None, pattern=r"^[0-9]{20}$")
    buyer_tax_id: str | None = Field(default=None, max_length=18)
    issued_from: date | None = None
    issued_to: date | None = None
    min_total: str | None = None
    max_total: str | None = None
    cursor: str | None = Field(default=None, max_length=100)
    limit: int = Field(default=50, ge=1, le=200)


def _amount_filter(name: str, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return parse_amount(value if "." in value else f"{value}.00")
    except ValueError as exc:
        raise ValidationFailed([FieldError(name, str(exc))]) from None


@router.get("/invoices", response_model=InvoiceList)
async def list_invoices(request: Request, tenant: TenantDep, q: Annotated[_Filters, Query()],
                        schedule: ScheduleDep) -> dict[str, Any]:
    """This tenant's invoices, newest first, filtered; follow `next_cursor` for the next page."""
    filters = service.ListFilters(
        status=q.status, number=q.number, buyer_tax_id=q.buyer_tax_id, issued_from=q.issued_from,
        issued_to=q.issued_to, min_total=_amount_filter("min_total", q.min_total),
        max_total=_amount_filter("max_total", q.max_total), cursor=q.cursor, limit=q.limit,
    )
    async with transaction(_state(request).sessions) as session:
        return await service.list_invoices(session=session, tenant=tenant, filters=filters, schedule=schedule)


@router.get("/invoices/{invoice_id}", response_model=InvoiceRead)
async def get_invoice(request: Request, invoice_id: str, tenant: TenantDep, schedule: ScheduleDep) -> dict[str, Any]:
    """Where the invoice stands, why, what happens next, and every step so far."""
    async with transaction(_state(request).sessions) as session:
        return await service.get_invoice(session=session, tenant=tenant, invoice_id=invoice_id, schedule=schedule)


@router.post("/invoices/{invoice_id}/void", response_model=InvoiceRead)
async def void_invoice(request: Request, invoice_id: str, body: VoidRequest, tenant: TenantDep) -> dict[str, Any]:
    """废弃异常发票: discard an invoice the authority has not accepted (rejected or stuck)."""
    settings: IssuerSettings = _state(request).settings
    async with transaction(_state(request).sessions) as session:
        return await service.void_invoice(session=session, tenant=tenant, invoice_id=invoice_id,
                                          reason=body.reason, topic=_topic(settings))


# --- cases and summaries: the reconciler owns them; the tenant reaches them here ------------------

_RECONCILER_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"description": "The reconciler cannot answer right now; see Retry-After"}}


def _tenants_view(case: CaseView) -> dict[str, Any]:
    # Tenant ids are internal: a tenant knows itself by its API key.
    return case.model_dump(mode="json", exclude={"tenant_id"})


def _case_out(case: CaseView, invoice: dict[str, Any] | None) -> dict[str, Any]:
    return {**_tenants_view(case), "invoice": invoice}


@router.post("/invoices/{invoice_id}/cases", status_code=201, tags=["cases"],
             responses={200: {"description": "A case was already open for this invoice: that case"},
                        404: {"description": "No such invoice"},
                        409: {"description": "The invoice was voided or rejected: nothing to look for"},
                        **_RECONCILER_DOWN})
async def open_case(request: Request, invoice_id: str, tenant: TenantDep, rec: ReconcilerDep,
                    body: CaseRequest | None = None) -> JSONResponse:
    """The seller reports "the tax system doesn't have it": open a case (or get the open one) and check now."""
    sessions = _state(request).sessions
    note = body.note if body is not None else None
    async with transaction(sessions) as session:
        subject = await service.get_case_subject(session=session, tenant=tenant, invoice_id=invoice_id)
    # No transaction held across the call: the reconciler may take its full timeout.
    status, case = await rec.open_case(invoice_id=subject.invoice_id, tenant_id=tenant.id,
                                       seller_tax_id=subject.seller_tax_id, number=subject.number, note=note)
    async with transaction(sessions) as session:
        view = await service.record_case(session=session, tenant=tenant, invoice_id=invoice_id,
                                         case_no=case.case_no, opened=status == 201, note=note)
    return JSONResponse(_case_out(case, view), status_code=status)


async def tenants_case(tenant: service.Tenant, rec: ReconcilerClient, case_no: str) -> CaseDetail:
    missing = NotFound(f"no case {case_no[:40]}")
    if not is_case_no(case_no):
        raise missing
    case = await rec.get_case(case_no)
    if case is None or case.tenant_id != tenant.id:  # another tenant's case is no case at all
        raise missing
    return case


@router.get("/cases/{case_no}", tags=["cases"], responses={404: {"description": "No such case"},
                                                            **_RECONCILER_DOWN})
async def get_case(request: Request, case_no: str, tenant: TenantDep, rec: ReconcilerDep,
                   schedule: ScheduleDep) -> dict[str, Any]:
    """A case's progress: its status, what was checked and when, and the invoice as it stands now."""
    case = await tenants_case(tenant, rec, case_no)
    async with transaction(_state(request).sessions) as session:
        try:
            invoice = await service.get_invoice_view(session=session, tenant=tenant,
                                                     invoice_id=str(case.invoice_id), schedule=schedule)
        except NotFound:
            invoice = None  # e.g. a case about an invoice found at the authority but never issued here
    return _case_out(case, invoice)


class _CaseFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: CaseStatus | None = None
    limit: int = Field(default=50, ge=1, le=200)


@router.get("/cases", tags=["cases"], responses=_RECONCILER_DOWN)
async def list_cases(tenant: TenantDep, rec: ReconcilerDep, q: Annotated[_CaseFilters, Query()]) -> dict[str, Any]:
    """This tenant's cases, optionally only those open, resolved or closed."""
    cases = await rec.list_cases(tenant_id=tenant.id, status=q.status, limit=q.limit)
    return {"items": [_tenants_view(c) for c in cases.items if c.tenant_id == tenant.id]}


@router.get("/summaries/{month}", tags=["cases"],
            responses={422: {"description": "Not a month from 2000-01 to 2099-12 (YYYY-MM)"}, **_RECONCILER_DOWN})
async def get_summary(month: str, tenant: TenantDep, rec: ReconcilerDep) -> dict[str, Any]:
    """The month's reconciliation for this seller: issued, confirmed, gaps, stuck, cases."""
    parse_month(month)  # the reconciler and the CLI check months with the same function
    return await rec.summary(seller_tax_id=tenant.tax_id, month=month)


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    tax_id: str = Field(min_length=1, max_length=18)


@admin_router.post("/tenants", status_code=201, dependencies=[Depends(require_admin)])
async def create_tenant(request: Request, body: TenantCreate) -> dict[str, Any]:
    """Register a seller enterprise; the API key in the answer is shown this once only."""
    async with transaction(_state(request).sessions) as session:
        tenant, key = await service.create_tenant(session=session, name=body.name, tax_id=body.tax_id)
    return {"id": str(tenant.id), "name": tenant.name, "tax_id": tenant.tax_id, "api_key": key}


@admin_router.get("/invoices", dependencies=[Depends(require_admin)])
async def find_invoices(request: Request, number: Annotated[str, Query(pattern=r"^[0-9]{20}$")],
                        seller_tax_id: Annotated[str | None, Query(max_length=18)] = None) -> dict[str, Any]:
    """Invoices with this number, whichever tenant issued them (numbers are unique per seller only)."""
    async with transaction(_state(request).sessions) as session:
        return {"items": await service.find_invoices(session=session, number=number,
                                                     seller_tax_id=seller_tax_id.upper() if seller_tax_id else None)}


@admin_router.get("/invoices/{invoice_id}", dependencies=[Depends(require_admin)])
async def any_invoice(request: Request, invoice_id: str, schedule: ScheduleDep) -> dict[str, Any]:
    """One invoice as its tenant sees it (status, reason, next action, timeline), plus the tenant."""
    async with transaction(_state(request).sessions) as session:
        return await service.get_invoice_any_tenant(session=session, invoice_id=invoice_id, schedule=schedule)
