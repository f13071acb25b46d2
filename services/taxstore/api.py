"""HTTP door into the tax store: take the request's fault decisions, call service.py inside a
transaction, shape the answer. Faults apply to /v1 only, so the admin endpoints and the probes keep
working while the simulated authority misbehaves.

Requests that FastAPI itself refuses before a handler runs (unparseable JSON, a missing
`seller_tax_id`, a body over the limit) are answered without faults and draw nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.taxstore import service
from services.taxstore.faults import RequestPlan
from services.taxstore.schemas import BatchRequest, LoseRequest, SellerPut
from services.taxstore.service import Incoming, ItemResult
from services.taxstore.settings import TaxstoreSettings
from shared.contracts.taxstore import FaultsUpdate
from shared.db import transaction
from shared.errors import PayloadTooLarge
from shared.http import problem, require_admin
from shared.uscc import USCC_PATTERN
from shared.validators import IsoDate

router = APIRouter(prefix="/v1", tags=["invoices"])
log = logging.getLogger(__name__)


def _state(request: Request) -> Any:
    return request.app.state


admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

# What a stored key can be (anything else is not stored: 422, not a database error over a NUL byte).
TaxId = Annotated[str, Path(pattern=r"^[0-9A-Za-z]{1,18}$")]
# A seller registers under a USCC (service.register_seller checks its check character too).
SellerTaxId = Annotated[str, Path(pattern=USCC_PATTERN)]
InvoiceNumber = Annotated[str, Path(pattern=r"^[0-9A-Za-z]{1,20}$")]


# --- faults -----------------------------------------------------------------------------------

async def _faulted(request: Request, *, items: int) -> tuple[RequestPlan, Response | None]:
    """Draw this request's faults; an answer when the request is refused outright (outage, error)."""
    st = _state(request)
    plan: RequestPlan = st.faults.plan(items=items)
    st.stats.add("requests")
    if plan.outage:
        st.stats.add("outage_refused")
        response = problem(503, "Service unavailable", "the tax authority is down (simulated outage); retry later",
                           code="outage")
        response.headers["Retry-After"] = "1"
        return plan, response
    if plan.latency_s > 0:
        await asyncio.sleep(plan.latency_s)
    if plan.error:
        st.stats.add("errors")
        return plan, problem(500, "Internal error", "the tax authority failed (simulated fault)",
                             code="injected_error")
    return plan, None


async def _timed_out(request: Request, plan: RequestPlan) -> Response:
    """Hang well past any sane client timeout, then 504: the client cannot know what happened."""
    _state(request).stats.add("timeouts")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + plan.hang_s
    while (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(left, 0.25))
        if await request.is_disconnected():
            break  # nobody is waiting any more; stop holding the request
    return problem(504, "Gateway timeout", "the tax authority did not answer in time (simulated); "
                   "a submission may or may not have been stored", code="injected_timeout")


async def _submit(request: Request, submissions: list[Any]) -> list[ItemResult] | Response:
    """Faults, then the submissions that get through them; a Response when the request failed."""
    st = _state(request)
    plan, refused = await _faulted(request, items=len(submissions))
    if refused is not None:
        return refused
    st.stats.add("submissions", len(submissions))
    incoming = [Incoming(i, raw, f) for i, (raw, f) in enumerate(zip(submissions, plan.items, strict=True))]
    if plan.timeout:
        applied = [it for it in incoming if it.faults.applied_on_timeout]
        st.stats.add("timeouts_applied", len(applied))
        st.stats.add("timeouts_not_applied", len(incoming) - len(applied))
        if applied:
            await _store(request, plan, applied)
        return await _timed_out(request, plan)
    return await _store(request, plan, incoming)


async def _store(request: Request, plan: RequestPlan, items: list[Incoming]) -> list[ItemResult]:
    st = _state(request)
    settings: TaxstoreSettings = st.settings
    async with transaction(st.sessions) as session:
        results = await service.submit_invoices(session=session, items=items,
                                                visibility_delay_ms=plan.visibility_delay_ms,
                                                require_registration=settings.require_registration)
    for r in results:
        st.stats.add(r.outcome)
        if r.corrupted:
            st.stats.add("corrupted")
    return results


# --- submitting -------------------------------------------------------------------------------

_SUBMISSION_DOC = "`{\"invoice\": <canonical invoice document>, \"red_letter_of\": \"<original number>\" | null}`"


# The handlers take raw JSON (a malformed document is the authority's reject MALFORMED, not a 422 of FastAPI's);
# the document still says what a well-formed submission is.
_SUBMISSION = {"$ref": "#/components/schemas/SubmissionDoc"}


@router.post("/invoices", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": _SUBMISSION}}}}, responses={
    200: {"description": "Same seller, number and content as before: the original receipt (repaired if need be)"},
    409: {"description": "The number is stored with other content (problem code number_conflict)"},
    422: {"description": "Rejected by the authority's checks (problem code rejected, with reason codes)"},
    500: {"description": "Injected error"}, 503: {"description": "Injected outage"},
    504: {"description": "Injected timeout: the submission may or may not have been stored"}})
async def submit_invoice(request: Request,
                         submission: Annotated[dict[str, Any], Body(description=_SUBMISSION_DOC)]) -> Response:
    """Submit one invoice. Idempotent on seller + number + content: resubmitting is always safe."""
    outcome = await _submit(request, [submission])
    if isinstance(outcome, Response):
        return outcome
    [result] = outcome
    if result.status >= 400:
        raise result.error()
    return JSONResponse(result.receipt(), status_code=result.status)


@router.post("/invoices/batch", responses={413: {"description": "More than FAPIAO_BATCH_MAX submissions"}})
async def submit_batch(request: Request, batch: BatchRequest) -> Response:
    """Up to `FAPIAO_BATCH_MAX` submissions in one transaction; one result per item, in input order, with the
    single endpoint's status and fields (a later item with an earlier item's number is its resubmission)."""
    settings: TaxstoreSettings = _state(request).settings
    if len(batch.submissions) > settings.batch_max:
        raise PayloadTooLarge(f"a batch holds at most {settings.batch_max} submissions, got {len(batch.submissions)}",
                              extra={"batch_max": settings.batch_max})
    outcome = await _submit(request, batch.submissions)
    if isinstance(outcome, Response):
        return outcome
    return Response(orjson.dumps({"results": [r.as_dict() for r in outcome]}), media_type="application/json")


# --- reading ----------------------------------------------------------------------------------

async def _read(request: Request) -> Response | None:
    plan, refused = await _faulted(request, items=0)
    if refused is not None:
        return refused
    if plan.timeout:
        return await _timed_out(request, plan)
    return None


@router.get("/invoices/{seller_tax_id}/{number}", responses={404: {"description": "Not stored, or not visible yet"}})
async def get_invoice(request: Request, seller_tax_id: TaxId, number: InvoiceNumber) -> Response:
    """One invoice as the authority holds it (`content` may differ from what was sent: compare `content_hash`)."""
    if (faulted := await _read(request)) is not None:
        return faulted
    async with transaction(_state(request).sessions) as session:
        return JSONResponse(await service.get_invoice(session=session, seller_tax_id=seller_tax_id, number=number))


class _ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seller_tax_id: str = Field(pattern=r"^[0-9A-Za-z]{1,18}$")
    issued_from: IsoDate | None = None
    issued_to: IsoDate | None = None
    cursor: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=100, ge=1, le=1000)
    include_content: bool = False
    numbers: str | None = Field(default=None, max_length=200 * 21, pattern=r"^[0-9]{20}(,[0-9]{20}){0,199}$",
                                description="comma-separated invoice numbers (at most 200): look these up only")


@router.get("/invoices")
async def list_invoices(request: Request, q: Annotated[_ListQuery, Query()]) -> Response:
    """A seller's visible invoices by (issue_date, number), optionally within issue dates or for given numbers;
    follow `next_cursor`."""
    if (faulted := await _read(request)) is not None:
        return faulted
    async with transaction(_state(request).sessions) as session:
        page = await service.list_invoices(session=session, seller_tax_id=q.seller_tax_id, issued_from=q.issued_from,
                                           issued_to=q.issued_to, cursor=q.cursor, limit=q.limit,
                                           include_content=q.include_content,
                                           numbers=q.numbers.split(",") if q.numbers else None)
    return Response(orjson.dumps(page), media_type="application/json")


# --- admin ------------------------------------------------------------------------------------

@admin_router.get("/faults")
async def get_faults(request: Request) -> dict[str, Any]:
    """The fault knobs in force (in memory, this process only)."""
    return _state(request).faults.faults.as_dict()


@admin_router.put("/faults")
async def put_faults(request: Request, body: FaultsUpdate) -> dict[str, Any]:
    """Change any subset of the knobs; naming `seed` restarts the generator. Answers with all knobs."""
    changes = body.model_dump(exclude_unset=True)
    faults = _state(request).faults.update(**changes)
    log.info("faults changed: %s", changes)
    return faults.as_dict()


@admin_router.get("/stats")
async def get_stats(request: Request) -> dict[str, Any]:
    """Counters since start or the last reset, the number of invoices held, and the knobs."""
    st = _state(request)
    async with transaction(st.sessions) as session:
        stored = await service.count_invoices(session=session)
    return {**st.stats.snapshot(), "invoices_stored": stored, "faults": st.faults.faults.as_dict()}


@admin_router.post("/stats/reset")
async def reset_stats(request: Request) -> dict[str, Any]:
    _state(request).stats.reset()
    return await get_stats(request)


@admin_router.post("/lose")
async def lose(request: Request, body: LoseRequest) -> dict[str, Any]:
    """Delete stored invoices, as an authority that loses data after accepting it."""
    st = _state(request)
    keys = [(k.seller_tax_id, k.number) for k in body.invoices or ()]
    async with transaction(st.sessions) as session:
        lost = await service.lose_invoices(session=session, count=body.count, seller_tax_id=body.seller_tax_id,
                                           keys=keys)
    st.stats.add("lost", len(lost))
    log.info("lost %d invoice(s) on request", len(lost))
    return {"lost": lost}


@admin_router.put("/sellers/{tax_id}", responses={200: {"description": "Already registered (name updated)"},
                                                   201: {"description": "Registered"}})
async def put_seller(request: Request, tax_id: SellerTaxId, body: SellerPut) -> JSONResponse:
    """Register a seller with the authority (needed when FAPIAO_REQUIRE_REGISTRATION is on)."""
    async with transaction(_state(request).sessions) as session:
        created, seller = await service.register_seller(session=session, tax_id=tax_id, name=body.name)
    return JSONResponse(seller, status_code=201 if created else 200)


@admin_router.get("/sellers/{tax_id}")
async def get_seller(request: Request, tax_id: TaxId) -> dict[str, Any]:
    async with transaction(_state(request).sessions) as session:
        return await service.get_seller(session=session, tax_id=tax_id)
