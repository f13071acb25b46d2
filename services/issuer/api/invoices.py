"""The ERP's door to its invoices: issue (one, a batch, a CSV file), list, read, void. Each route parses the
request, makes one service call and answers its outcome (answers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.issuer.api.answers import respond
from services.issuer.api.deps import IdempotencyKey, IssuingDep, ScheduleDep, SessionDep, TenantDep, once
from services.issuer.invoices import document, exports, importing, issuing, reading, voiding
from services.issuer.lifecycle import Status
from services.issuer.schemas import BatchRequest, InvoiceCreate, InvoiceList, InvoiceRead, InvoiceView, VoidRequest
from shared.errors import FieldError, ValidationFailed
from shared.money import parse_amount
from shared.validators import IsoDate

__all__ = ["PDF_ANSWER", "pdf_response", "render", "router"]

router = APIRouter(prefix="/v1", tags=["invoices"])


@router.post("/invoices", status_code=201, response_model=InvoiceView,
             responses={200: {"description": "Same number, same content: the existing invoice"},
                        409: {"description": "Number already used with different content"},
                        413: {"description": "Body too large"}, 422: {"description": "Validation failed"}})
async def create_invoice(request: Request, invoice: InvoiceCreate, tenant: TenantDep, session: SessionDep,
                         rules: IssuingDep, idempotency_key: IdempotencyKey = None) -> Response:
    """Issue one invoice. It is stored with its event in one transaction; the event then reaches Kafka."""
    endpoint = "POST /v1/invoices"
    return respond(await issuing.issue_invoice(
        session=session, tenant=tenant, invoice=invoice, issuing=rules,
        once=once(request, idempotency_key, endpoint, invoice.model_dump(mode="json"))))


@router.post("/invoices/batch")
async def create_batch(request: Request, batch: BatchRequest, tenant: TenantDep, session: SessionDep,
                       rules: IssuingDep, idempotency_key: IdempotencyKey = None) -> Response:
    """Up to `FAPIAO_BATCH_MAX` invoices in one transaction; a result per item, in order."""
    endpoint = "POST /v1/invoices/batch"
    return respond(await issuing.issue_batch(session=session, tenant=tenant, invoices=batch.invoices, issuing=rules,
                                             once=once(request, idempotency_key, endpoint, batch.invoices)))


@router.post("/invoices/import", openapi_extra={
    "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
    responses={400: {"description": "Not UTF-8, or NUL bytes"}, 413: {"description": "Too many invoices or rows"},
               422: {"description": "The file cannot be read (errors name the row and column); nothing written"}})
async def import_csv(request: Request, tenant: TenantDep, session: SessionDep, rules: IssuingDep,
                     idempotency_key: IdempotencyKey = None) -> Response:
    """CSV of historical invoices, one row per line; per-row errors, every good invoice kept.

    A file that cannot be read as a whole (an unclosed quote, a cell over 2,000 characters, a row with more
    cells than the header) is refused with 422 naming the row, and nothing is written. With an
    Idempotency-Key, a repeat of the same file gets the first answer back, as for POST /v1/invoices.
    """
    raw = await request.body()
    # The request hash covers the file's bytes: the same file again is the same request.
    endpoint = "POST /v1/invoices/import"
    return respond(await importing.import_csv(session=session, tenant=tenant, raw=raw, issuing=rules,
                                              once=once(request, idempotency_key, endpoint,
                                                        importing.file_hash(raw))))


AMOUNT_FILTER = r"^-?[0-9]{1,12}(\.[0-9]{2})?$"


class _Match(BaseModel):
    """What the list and the exports filter by."""

    model_config = ConfigDict(extra="forbid")
    status: Status | None = None
    number: str | None = Field(default=None, pattern=r"^[0-9]{20}$")
    buyer_tax_id: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{0,18}$")
    issued_from: IsoDate | None = None
    issued_to: IsoDate | None = None
    # The schema says what _amount_filter takes (its own words on a mismatch stay the 422's reason).
    min_total: str | None = Field(default=None, json_schema_extra={"pattern": AMOUNT_FILTER})
    max_total: str | None = Field(default=None, json_schema_extra={"pattern": AMOUNT_FILTER})

    def filters(self, **paging: Any) -> reading.ListFilters:
        return reading.ListFilters(
            status=self.status, number=self.number, buyer_tax_id=self.buyer_tax_id, issued_from=self.issued_from,
            issued_to=self.issued_to, min_total=_amount_filter("min_total", self.min_total),
            max_total=_amount_filter("max_total", self.max_total), **paging)


class _Filters(_Match):
    cursor: str | None = Field(default=None, max_length=100)
    limit: int = Field(default=50, ge=1, le=200)


class _Export(_Match):
    format: Literal["csv", "xlsx"] = "csv"


def _amount_filter(name: str, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return parse_amount(value if "." in value else f"{value}.00")
    except ValueError as exc:
        raise ValidationFailed([FieldError(name, str(exc))]) from None


@router.get("/invoices", response_model=InvoiceList)
async def list_invoices(tenant: TenantDep, q: Annotated[_Filters, Query()], schedule: ScheduleDep,
                        session: SessionDep) -> InvoiceList:
    """This tenant's invoices, newest first, filtered; follow `next_cursor` for the next page."""
    filters = q.filters(cursor=q.cursor, limit=q.limit)
    return await reading.list_invoices(session=session, tenant=tenant, filters=filters, schedule=schedule)


_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@router.get("/invoices/export", response_class=StreamingResponse, responses={200: {
    "description": "Every invoice that passes the filters, newest first (CSV in UTF-8 with a BOM, or XLSX); "
                   "cells a spreadsheet would run as a formula are written as text",
    "content": {"text/csv": {"schema": {"type": "string"}}, _XLSX: {"schema": {"type": "string",
                                                                                "format": "binary"}}}}})
async def export_invoices(request: Request, tenant: TenantDep, q: Annotated[_Export, Query()]) -> StreamingResponse:
    """The invoice list for the accountants, with the list's filters, as CSV or XLSX; streamed (any size)."""
    filters = q.filters()
    sessions = request.app.state.sessions
    name = f"invoices-{tenant.tax_id}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{q.format}"
    chunks = (exports.csv_chunks if q.format == "csv" else exports.xlsx_chunks)(sessions, tenant, filters)
    return StreamingResponse(chunks, media_type="text/csv; charset=utf-8" if q.format == "csv" else _XLSX,
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/invoices/{invoice_id}", response_model=InvoiceRead)
async def get_invoice(invoice_id: str, tenant: TenantDep, schedule: ScheduleDep, session: SessionDep) -> InvoiceRead:
    """Where the invoice stands, why, what happens next, and every step so far."""
    return await reading.get_invoice(session=session, tenant=tenant, invoice_id=invoice_id, schedule=schedule)


PDF_ANSWER: dict[int | str, dict[str, Any]] = {200: {
    "description": "The invoice as a printable A5 page with its QR code (a CJK font embedded)",
    "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}}}


_RENDERING = asyncio.Semaphore(2)  # a page takes ~0.1–0.3 s of CPU: never more than two at once, off the loop


async def render(fn: Callable[..., bytes], *args: Any) -> bytes:
    """A document made off the event loop, at most two at once (every PDF, ZIP and XLSX of the issuer)."""
    async with _RENDERING:
        return await asyncio.to_thread(fn, *args)


async def pdf_response(shown: InvoiceRead) -> Response:
    body = await render(document.invoice_pdf, shown.model_dump(mode="json"))
    return Response(body, media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="fapiao-{shown.number}.pdf"'})


@router.get("/invoices/{invoice_id}/pdf", response_class=Response, responses=PDF_ANSWER)
async def invoice_pdf(invoice_id: str, tenant: TenantDep, session: SessionDep) -> Response:
    """版式文件: the invoice to print and keep. The QR code holds kind, number, date, total and a check value of the
    content hash; a voided invoice carries a watermark."""
    return await pdf_response(await reading.get_invoice(session=session, tenant=tenant, invoice_id=invoice_id))


@router.post("/invoices/{invoice_id}/void", response_model=InvoiceRead, responses={
    409: {"description": "Only a rejected or stuck invoice can be voided (the answer says its status)"}})
async def void_invoice(invoice_id: str, body: VoidRequest, tenant: TenantDep, session: SessionDep,
                       rules: IssuingDep) -> Response:
    """废弃异常发票: discard an invoice the authority has not accepted (rejected or stuck)."""
    return respond(await voiding.void_invoice(session=session, tenant=tenant, invoice_id=invoice_id,
                                              reason=body.reason, topic=rules.topic))

