"""HTTP door into the reconciler, for operators and for the issuer (which proxies the tenant-facing case
and summary endpoints with its admin token). Everything here sits behind the admin token."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from services.reconciler import cases, invoices, reports, selfcheck, sweeps
from services.reconciler.cases import CaseOpened, CaseRefused
from services.reconciler.metrics import RESTATEMENTS
from services.reconciler.rules import Policy
from services.reconciler.store import StoreUnavailable, StoreView
from shared.contracts.cases import CaseStatus, is_case_no
from shared.contracts.reconciler import (
    CaseDetail,
    CaseList,
    CaseOpen,
    LedgerEntries,
    LedgerIds,
    LedgerPage,
    Restated,
)
from shared.db import transaction
from shared.errors import Conflict, NotFound, ServiceUnavailable
from shared.http import require_admin
from shared.uscc import USCC_PATTERN
from shared.validators import MONTH_PATTERN, parse_month

router = APIRouter(prefix="/admin", tags=["operations"], dependencies=[Depends(require_admin)])


def _state(request: Request) -> Any:
    return request.app.state


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no {what} {value}") from None


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """The ledger by state, cases by status, the gaps by kind and age, and the last check round."""
    st = _state(request)
    async with transaction(st.sessions) as session:
        counts = await reports.status_counts(session=session)
        gaps = await reports.gap_report(session=session)
    rec = st.reconciler
    return {
        **counts,
        "gaps": [{"kind": k, "age": a, "count": n} for (k, a), n in sorted(gaps.by_kind_age.items())],
        "unconfirmed": gaps.unconfirmed, "stuck": gaps.stuck,
        "oldest_unconfirmed_seconds": round(gaps.oldest_unconfirmed_seconds, 3),
        "last_round": rec.last_round if rec else None,
        "confirmation_latency": rec.confirmation_latency() if rec else None,
        "taxstore": {"url": st.settings.taxstore_url, "last_error": rec.last_store_error if rec else None},
        "policy": {"visibility_sla_seconds": st.settings.visibility_sla, "stuck_after_seconds": st.settings.stuck_after,
                   "stuck_after_resyncs": st.settings.stuck_after_resyncs},
    }


@router.get("/gaps")
async def gaps(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """The oldest unconfirmed invoices: state, gap kind, resyncs, case, last error, next check; and the confirmed
    red-letter forms whose red invoice is missing from the ledger (`red_letter_forms`)."""
    async with transaction(_state(request).sessions) as session:
        return {"items": await reports.list_unconfirmed(session=session, limit=limit),
                "red_letter_forms": await reports.list_form_gaps(session=session, limit=limit)}


@router.get("/invoices/{invoice_id}")
async def invoice(request: Request, invoice_id: str) -> dict[str, Any]:
    async with transaction(_state(request).sessions) as session:
        return await invoices.get_invoice(session=session, invoice_id=_uuid(invoice_id, "invoice"))


@router.post("/invoices/{invoice_id}/check", status_code=202)
async def check(request: Request, invoice_id: str) -> dict[str, Any]:
    """Check this invoice at the tax store now."""
    st = _state(request)
    async with transaction(st.sessions) as session:
        out = await invoices.request_check(session=session, invoice_id=_uuid(invoice_id, "invoice"), by="admin")
    if st.reconciler:
        st.reconciler.wake_checker()
    return out


@router.post("/invoices/{invoice_id}/resync", status_code=202,
             responses={404: {"description": "Unknown here"}, 409: {"description": "Rejected or voided"}})
async def resync(request: Request, invoice_id: str) -> dict[str, Any]:
    """Have the sync service resubmit this invoice now (reading back first), then check it again."""
    st = _state(request)
    async with transaction(st.sessions) as session:
        out = await invoices.request_resync(session=session, invoice_id=_uuid(invoice_id, "invoice"),
                                            policy=Policy.of(st.settings), topics=st.reconciler_topics)
    if st.reconciler:
        st.reconciler.wake_checker()
    return out


@router.post("/cases", response_model=CaseDetail,
             responses={200: {"description": "The invoice's open case already existed"},
                        201: {"description": "Case opened"},
                        404: {"description": "The ledger holds no such invoice of this tenant"},
                        409: {"description": "Nothing to look for at the authority (e.g. the invoice was rejected)"}})
async def open_case(request: Request, body: CaseOpen) -> JSONResponse:
    """Open a case for an invoice (or return its open case) and check the tax store now."""
    st = _state(request)
    async with transaction(st.sessions) as session:
        outcome = await cases.open_case(
            session=session, invoice_id=body.invoice_id, tenant_id=body.tenant_id, seller_tax_id=body.seller_tax_id,
            number=body.number, note=body.note, topics=st.reconciler_topics, timezone=st.settings.timezone)
    if isinstance(outcome, CaseOpened) and st.reconciler:
        st.reconciler.wake_checker()
    return _opened(outcome)


def _opened(outcome: CaseOpened | CaseRefused) -> JSONResponse:
    """Opening a case, in HTTP: 201 opened now, 200 open already, 409 nothing to look for."""
    match outcome:
        case CaseOpened(case, opened):
            return JSONResponse(CaseDetail.model_validate(case).model_dump(mode="json"),
                                status_code=201 if opened else 200)
        case CaseRefused(state, last_error):
            raise Conflict(f"the invoice is {state}" + (f": {last_error}" if state == "rejected" else "")
                           + "; there is nothing to look for at the authority", extra={"invoice_state": state})


@router.get("/cases/{case_no}", response_model=CaseDetail)
async def get_case(request: Request, case_no: str) -> dict[str, Any]:
    if not is_case_no(case_no):
        raise NotFound(f"no case {case_no}")
    async with transaction(_state(request).sessions) as session:
        return await cases.get_case(session=session, case_no=case_no)


@router.get("/cases", response_model=CaseList)
async def list_cases(request: Request, tenant_id: uuid.UUID | None = None, status: CaseStatus | None = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    async with transaction(_state(request).sessions) as session:
        return {"items": await cases.list_cases(session=session, tenant_id=tenant_id, status=status, limit=limit)}


@router.get("/summary")
async def summary(request: Request, seller_tax_id: Annotated[str, Query(pattern=USCC_PATTERN)],
                  month: Annotated[str, Query(description="YYYY-MM, 2000-01 to 2099-12",
                                              json_schema_extra={"pattern": MONTH_PATTERN})]) -> dict[str, Any]:
    """发票汇总确认: one seller's month here vs. at the tax store, with every difference; the month's invoices by
    state, their gaps by kind and age, their cases, and the issued and confirmed invoices of each day."""
    first = parse_month(month)  # the issuer and the CLI check months with the same function
    st = _state(request)
    last = reports.month_end(first)
    store: list[StoreView] = []
    try:
        async for page in st.reader.listing(seller_tax_id.upper(), first, last):
            store.extend(page)
    except StoreUnavailable as exc:
        raise ServiceUnavailable(f"the tax store cannot be read right now ({exc}); retry shortly") from None
    async with transaction(st.sessions) as session:
        return await reports.month_summary(session=session, seller_tax_id=seller_tax_id.upper(), month=first,
                                           store=store, timezone=st.settings.timezone)


@router.post("/sweep", status_code=202)
async def sweep(request: Request, seller_tax_id: Annotated[str | None, Query(pattern=USCC_PATTERN)] = None,
                ) -> dict[str, Any]:
    """Sweep every window (of one seller) now instead of at its turn."""
    st = _state(request)
    async with transaction(st.sessions) as session:
        n = await sweeps.sweep_now(session=session, seller_tax_id=seller_tax_id)
    if st.reconciler:
        st.reconciler.wake_sweeper()
    return {"windows": n}


# --- for the issuer's status self-check ------------------------------------------------------

@router.post("/ledger/lookup", response_model=LedgerEntries)
async def ledger_lookup(request: Request, body: LedgerIds) -> dict[str, Any]:
    """The ledger's state, last event sequence and live schedule (next check, last resync) of each invoice."""
    async with transaction(_state(request).sessions) as session:
        return {"items": await selfcheck.ledger_lookup(session=session, invoice_ids=body.invoice_ids)}


@router.get("/ledger/open", response_model=LedgerPage)
async def ledger_open(request: Request, after: uuid.UUID | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 500) -> dict[str, Any]:
    """A page (in id order, after `after`) of the invoices not confirmed yet."""
    async with transaction(_state(request).sessions) as session:
        items = await selfcheck.open_rows(session=session, after=after, limit=limit)
    return {"items": items, "next_after": items[-1]["invoice_id"] if len(items) == limit else None}


@router.post("/ledger/restate", status_code=202, response_model=Restated)
async def ledger_restate(request: Request, body: LedgerIds) -> dict[str, Any]:
    """Send the issuer the ledger's current finding about these invoices again (the self-check's repair)."""
    st = _state(request)
    async with transaction(st.sessions) as session:
        counts = await selfcheck.restate(session=session, invoice_ids=body.invoice_ids,
                                         policy=Policy.of(st.settings), topics=st.reconciler_topics)
    for state, n in counts.items():
        RESTATEMENTS.labels(state=state).inc(n)
    return {"restated": counts}
