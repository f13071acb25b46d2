"""The issuer's outcomes in HTTP, in one place: the status, body and headers every outcome of a use case gets.

An answer to a request that carried an Idempotency-Key is kept as it was sent (`kept`), and a repeat gets
those very bytes again, marked `Idempotent-Replayed: true`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse, Response

from services.issuer.idempotency import Answer, KeyReused, Replayed
from services.issuer.invoices.outcomes import (
    BatchIssued,
    CaseOpened,
    CaseRefused,
    CaseShown,
    Created,
    Existing,
    FileRefused,
    FormAsked,
    Imported,
    Invalid,
    IssueOutcome,
    NotVoidable,
    NumberTaken,
    TooLarge,
    Unreadable,
    Voided,
)
from services.issuer.ops.lookups import FoundInvoice, OwnedInvoice
from services.issuer.tenants import TaxIdTaken, Tenant, TenantCreated, TenantInvalid
from shared.contracts.reconciler import CaseView
from shared.errors import BadRequest, Conflict, FapiaoError, FieldError, PayloadTooLarge, ValidationFailed
from shared.http import PROBLEM, domain_problem

__all__ = ["found", "kept", "respond", "tenants_case_view"]

ITEM_STATUS: dict[type, int] = {Created: 201, Existing: 200, NumberTaken: 409, Invalid: 422}
"""An invoice's outcome as the status of its answer, or of its item in a batch or import."""


def respond(outcome: object) -> Response:
    """The answer to an outcome."""
    if isinstance(outcome, Replayed):
        return _send(outcome.answer, headers={"Idempotent-Replayed": "true"})
    if (refusal := _refusal(outcome)) is not None:
        return domain_problem(refusal)
    match outcome:
        case Created() | Existing() | NumberTaken() | BatchIssued() | Imported():
            return _send(kept(outcome))
        case Voided(invoice):
            return JSONResponse(invoice.model_dump(mode="json"))
        case CaseOpened(case, invoice, opened):
            return JSONResponse({**tenants_case_view(case), "invoice": invoice.model_dump(mode="json")},
                                status_code=201 if opened else 200)
        case CaseShown(case, invoice):
            return JSONResponse({**tenants_case_view(case),
                                 "invoice": invoice.model_dump(mode="json") if invoice is not None else None})
        case TenantCreated(tenant, api_key):
            return JSONResponse({**_tenant(tenant), "api_key": api_key}, status_code=201)
        case OwnedInvoice(invoice, tenant):
            return JSONResponse({**invoice.model_dump(mode="json"), "tenant": _tenant(tenant)})
        case FormAsked():
            return _send(kept(outcome))
    raise TypeError(f"no answer for {type(outcome).__name__}")


def _refusal(outcome: object) -> FapiaoError | None:
    """The problem an outcome that did nothing is answered with (problem+json, with the correlation id)."""
    match outcome:
        case Invalid(errors) | TenantInvalid(errors):
            return ValidationFailed(list(errors))
        case KeyReused():
            return ValidationFailed([FieldError("Idempotency-Key", "was already used with a different request body")],
                                    detail="Idempotency-Key reused with a different request")
        case TooLarge(detail):
            return PayloadTooLarge(detail)
        case Unreadable(detail):
            return BadRequest(detail)
        case FileRefused(error, detail):
            return ValidationFailed([error], detail=detail)
        case NotVoidable(status):
            return Conflict("only invoices the authority has not accepted (rejected or stuck) can be voided; this "
                            f"one is '{status}'", extra={"invoice_status": status.value})
        case CaseRefused(status):
            return Conflict("this invoice was voided; there is nothing left for the tax authority to show",
                            extra={"invoice_status": status.value})
        case TaxIdTaken(tax_id, tenant_id):
            return Conflict(f"a tenant with tax id {tax_id} already exists", extra={"tenant_id": str(tenant_id)})
    return None


def kept(outcome: Any) -> Answer:
    """The answer to an issuing outcome as bytes: what is sent, and kept for a repeat with the same key."""
    match outcome:
        case NumberTaken(detail=detail):  # a refusal, but one a repeat hears again
            status, body = 409, {
                "type": "https://fapiao.dev/problems/conflict", "title": "Conflict", "status": 409,
                "code": "number_taken", "detail": detail, "existing": _existing(outcome)}
        case Created(invoice) | Existing(invoice, _):
            status, body = ITEM_STATUS[type(outcome)], invoice.model_dump(mode="json")
        case FormAsked(form):
            status, body = 202, form.model_dump(mode="json")
        case BatchIssued(items):
            t = outcome.tally
            status, body = 200, {"created": t.created, "existing": t.existing, "conflicts": t.conflicts,
                                 "invalid": t.invalid, "results": [_item(i, o) for i, o in enumerate(items)]}
        case Imported():
            status, body = 200, _imported(outcome)
        case _:
            raise TypeError(f"{type(outcome).__name__} is not kept")
    return Answer(status, orjson.dumps(body))


def _send(answer: Answer, headers: dict[str, str] | None = None) -> Response:
    media = PROBLEM if answer.status_code >= 400 else "application/json"
    return Response(answer.body, status_code=answer.status_code, media_type=media, headers=headers)


def _existing(outcome: NumberTaken) -> dict[str, str] | None:
    """The stored invoice that holds the number; None when the number clashed within the request."""
    return {"id": str(outcome.existing_id), "number": outcome.number} if outcome.existing_id else None


def _invoice_id(outcome: IssueOutcome) -> str | None:
    match outcome:
        case Created(invoice) | Existing(invoice, _):
            return str(invoice.id)
        case NumberTaken(existing_id=existing_id) if existing_id is not None:
            return str(existing_id)
    return None


def _item(index: int, outcome: IssueOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "status": ITEM_STATUS[type(outcome)]}
    match outcome:
        case Created(invoice):
            out["invoice"] = invoice.model_dump(mode="json")
        case Existing(invoice, detail):
            out.update(invoice=invoice.model_dump(mode="json"), detail=detail)
        case NumberTaken(_, detail):
            if (existing := _existing(outcome)) is not None:
                out["invoice"] = existing
            out["detail"] = detail
        case Invalid(errors):
            out["errors"] = [e.as_dict() for e in errors]
    return out


def _imported(outcome: Imported) -> dict[str, Any]:
    t = outcome.tally
    return {
        "rows": outcome.rows, "invoices": len(outcome.invoices), "created": t.created, "existing": t.existing,
        "conflicts": t.conflicts, "rejected": outcome.rejected, "errors": [e.as_dict() for e in outcome.errors],
        "results": [{"number": i.number, "rows": list(i.rows), "status": ITEM_STATUS[type(i.outcome)],
                     "id": _invoice_id(i.outcome),
                     "detail": i.outcome.detail if isinstance(i.outcome, Existing | NumberTaken) else None}
                    for i in outcome.invoices],
    }


def tenants_case_view(case: CaseView) -> dict[str, Any]:
    # Tenant ids are internal: a tenant knows itself by its API key.
    return case.model_dump(mode="json", exclude={"tenant_id"})


def _tenant(tenant: Tenant) -> dict[str, str]:
    return {"id": str(tenant.id), "name": tenant.name, "tax_id": tenant.tax_id}


def found(item: FoundInvoice) -> dict[str, Any]:
    return {"id": str(item.id), "number": item.number, "seller_tax_id": item.seller_tax_id, "status": item.status,
            "issue_date": item.issue_date.isoformat(), "tenant": item.tenant}
