"""HTTP door into the tax store: take the request's fault decisions, call service.py inside a
transaction, shape the answer. Faults apply to /v1 only, so the admin endpoints and the probes keep
working while the simulated authority misbehaves.

Requests that FastAPI itself refuses before a handler runs (unparseable JSON, a missing
`seller_tax_id`, a body over the limit) are answered without faults and draw nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.taxstore import redletter, review, service, verification
from services.taxstore.faults import ItemFaults, RequestPlan
from services.taxstore.policy import Policy
from services.taxstore.schemas import BatchRequest, LoseRequest, SellerPut
from services.taxstore.service import Incoming, ItemResult
from services.taxstore.settings import TaxstoreSettings
from shared.contracts.taxstore import (
    FaultsUpdate,
    FormCreate,
    FormDecision,
    FormStatus,
    PolicyUpdate,
    ReviewDecision,
    ReviewStatus,
    VerifyRequest,
)
from shared.db import transaction
from shared.errors import FapiaoError, PayloadTooLarge
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
                                                require_registration=settings.require_registration,
                                                policy=st.policy)
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


# --- red-letter forms ------------------------------------------------------------------------

FormNo = Annotated[str, Path(pattern=r"^HZ[0-9]{18}$")]
_FORM_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such invoice or form, or the caller is no party to it"},
    409: {"description": "request_conflict, own_form, form_confirmed, form_rejected, form_voided, "
                         "invoice_under_review or invoice_voided"},
    422: {"description": "Invalid request, or more than is left of the blue invoice (with the field's path)"},
    500: {"description": "Injected error"}, 503: {"description": "Injected outage"},
    504: {"description": "Injected timeout: the write may or may not have happened; retrying is safe"}}


async def _write(request: Request, action: Callable[[ItemFaults, int], Awaitable[redletter.FormOutcome]]
                 ) -> redletter.FormOutcome | Response:
    """A form write under the faults: one item's coins are drawn (a red invoice it issues may be dropped or
    corrupted); on a timeout the write happens or not by the item's coin, and the client hears 504 either way."""
    plan, refused = await _faulted(request, items=1)
    if refused is not None:
        return refused
    [item] = plan.items
    if plan.timeout:
        if item.applied_on_timeout:
            with contextlib.suppress(FapiaoError):  # the client hears the timeout, not the refusal
                _count_form(request, await action(item, plan.visibility_delay_ms))
        return await _timed_out(request, plan)
    outcome = await action(item, plan.visibility_delay_ms)
    _count_form(request, outcome)
    return outcome


def _count_form(request: Request, outcome: redletter.FormOutcome) -> None:
    stats = _state(request).stats
    if outcome.status == 201:
        stats.add("forms_created")
    elif not outcome.changed:
        stats.add("forms_answered_again")
    elif outcome.form["status"] in ("confirmed", "rejected"):
        stats.add(f"forms_{outcome.form['status']}")
    if outcome.red is not None:
        stats.add(f"red_{outcome.red}")
    if outcome.corrupted:
        stats.add("red_corrupted")


def _form_answer(outcome: redletter.FormOutcome | Response) -> Response:
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome.form, status_code=outcome.status)


@router.post("/red-letter-forms", status_code=201, tags=["red letters"], responses={
    200: {"description": "The form an earlier request with this request_id made"}, **_FORM_ERRORS})
async def create_form(request: Request, body: FormCreate) -> Response:
    """Ask for a red-letter confirmation form (红字发票信息确认单) on a blue invoice, as its seller or buyer. When no
    confirmation is needed, the red invoice is issued at once (`status` confirmed, `red_invoice` set)."""
    st = _state(request)

    async def action(item: ItemFaults, delay_ms: int) -> redletter.FormOutcome:
        async with transaction(st.sessions) as session:
            return await redletter.create_form(session=session, body=body, policy=st.policy, faults=item,
                                               visibility_delay_ms=delay_ms)

    return _form_answer(await _write(request, action))


async def _decide(request: Request, form_no: str, body: FormDecision, *, confirm: bool) -> Response:
    st = _state(request)

    async def action(item: ItemFaults, delay_ms: int) -> redletter.FormOutcome:
        async with transaction(st.sessions) as session:
            return await redletter.decide_form(session=session, form_no=form_no, by=body.by, confirm=confirm,
                                               note=body.note, faults=item, visibility_delay_ms=delay_ms)

    return _form_answer(await _write(request, action))


@router.post("/red-letter-forms/{form_no}/confirm", tags=["red letters"], responses=_FORM_ERRORS)
async def confirm_form(request: Request, form_no: FormNo, body: FormDecision) -> Response:
    """The counterparty confirms a pending form; the red invoice is issued in the same step. Confirming a
    confirmed form again answers it unchanged."""
    return await _decide(request, form_no, body, confirm=True)


@router.post("/red-letter-forms/{form_no}/reject", tags=["red letters"], responses=_FORM_ERRORS)
async def reject_form(request: Request, form_no: FormNo, body: FormDecision) -> Response:
    """The counterparty rejects a pending form; nothing is issued and its amount is free again."""
    return await _decide(request, form_no, body, confirm=False)


@router.get("/red-letter-forms/{form_no}", tags=["red letters"],
            responses={404: {"description": "No such form, or `party_tax_id` is no party to it"}})
async def get_form(request: Request, form_no: FormNo,
                   party_tax_id: Annotated[str, Query(pattern=USCC_PATTERN,
                                                      description="the seller or buyer asking")]) -> Response:
    """One form, as its seller or buyer sees it: its status now (a pending form past `expires_at` is voided)
    and its red invoice."""
    if (faulted := await _read(request)) is not None:
        return faulted
    async with transaction(_state(request).sessions) as session:
        return JSONResponse(await redletter.get_form(session=session, form_no=form_no, party_tax_id=party_tax_id))


class _FormQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    party_tax_id: str = Field(pattern=USCC_PATTERN, description="the seller or buyer whose forms these are")
    role: Literal["seller", "buyer"] | None = Field(default=None, description="only forms where it is this party")
    status: FormStatus | None = None
    awaiting: bool = Field(default=False, description="only pending forms waiting for this party's decision")
    invoice_number: str | None = Field(default=None, pattern=r"^[0-9]{20}$", description="the blue invoice's")
    cursor: str | None = Field(default=None, pattern=r"^HZ[0-9]{18}$")
    limit: int = Field(default=100, ge=1, le=1000)


@router.get("/red-letter-forms", tags=["red letters"])
async def list_forms(request: Request, q: Annotated[_FormQuery, Query()]) -> Response:
    """Forms one party (seller or buyer) is part of, oldest first; follow `next_cursor`."""
    if (faulted := await _read(request)) is not None:
        return faulted
    async with transaction(_state(request).sessions) as session:
        page = await redletter.list_forms(session=session, party_tax_id=q.party_tax_id, role=q.role, status=q.status,
                                          awaiting=q.awaiting, blue_number=q.invoice_number, after=q.cursor,
                                          limit=q.limit)
    return Response(orjson.dumps(page), media_type="application/json")


# --- verification -----------------------------------------------------------------------------

@router.post("/verify", tags=["verification"], responses={
    500: {"description": "Injected error"}, 503: {"description": "Injected outage"},
    504: {"description": "Injected timeout"}})
async def verify_invoice(request: Request, body: VerifyRequest) -> Response:
    """发票查验: the standing of the invoice with this number, issue date and total (`result`: normal,
    red_lettered, partly_red_lettered, voided, under_review or not_found; `result_text` in Chinese)."""
    if (faulted := await _read(request)) is not None:
        return faulted
    async with transaction(_state(request).sessions) as session:
        answer = await verification.verify(session=session, number=body.number, issue_date=body.issue_date,
                                           total=Decimal(body.total))
    stats = _state(request).stats
    stats.add("verifications")
    stats.add(f"verified_{answer['result']}")
    return JSONResponse(answer)


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


@admin_router.get("/policy")
async def get_policy(request: Request) -> dict[str, Any]:
    """The authority's policy in force: red-letter confirmation window, 'has used' rate, cross-region review."""
    policy: Policy = _state(request).policy
    return policy.as_dict()


@admin_router.put("/policy")
async def put_policy(request: Request, body: PolicyUpdate) -> dict[str, Any]:
    """Change any subset of the policy (in memory, this process, until restart); applies to forms made and
    invoices stored from now on. Answers with all of it."""
    st = _state(request)
    changes = body.model_dump(exclude_unset=True)
    st.policy = st.policy.update(**changes)
    log.info("policy changed: %s", changes)
    return st.policy.as_dict()


class _ReviewQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: ReviewStatus | None = None
    seller_tax_id: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{1,18}$")
    limit: int = Field(default=100, ge=1, le=1000)


@admin_router.get("/reviews")
async def list_reviews(request: Request, q: Annotated[_ReviewQuery, Query()]) -> dict[str, Any]:
    """Invoices held for cross-region review (ever), with their review status now, the longest held first."""
    async with transaction(_state(request).sessions) as session:
        return await review.list_reviews(session=session, status=q.status, seller_tax_id=q.seller_tax_id,
                                         limit=q.limit)


@admin_router.post("/reviews/{seller_tax_id}/{number}", responses={
    404: {"description": "No such invoice held for review"},
    409: {"description": "Decided otherwise already (by hand, or by the bureau once the delay passed)"}})
async def decide_review(request: Request, seller_tax_id: TaxId, number: InvoiceNumber,
                        body: ReviewDecision) -> dict[str, Any]:
    """The bureau approves or denies a held invoice (the same decision again answers it unchanged)."""
    st = _state(request)
    async with transaction(st.sessions) as session:
        view = await review.decide_review(session=session, seller_tax_id=seller_tax_id, number=number,
                                          approve=body.decision == "approve", note=body.note)
    st.stats.add("reviews_approved" if body.decision == "approve" else "reviews_denied")
    return view


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
