"""Schemathesis hooks for tests/integration/test_schemathesis.py (loaded by the `st` process through
SCHEMATHESIS_HOOKS; the test passes the values below in its environment).

An OpenAPI document can say what each field looks like, not how fields relate: an invoice's amounts must
add up, a USCC ends in a check character, the seller is the tenant that holds the API key, a cursor is one
the API handed out. Schema-valid data that breaks such a rule is rightly refused with 422, naming the field,
and schemathesis's positive_data_acceptance check would count that as a mismatch. So, for cases generated to
be schema-valid only, these hooks make the generated values also obey those rules, keeping every field the
schema lets schemathesis vary; negative cases are left exactly as generated.

Two more changes keep the run about the API and not its fault injection: the store's drill knobs are set to
harmless values (a real fault makes the store answer 5xx on purpose), and webhook URLs point at a receiver
that exists (the notifier resolves and calls them).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

from shared.money import TAX_RATES, fmt, round_cents
from shared.uscc import ALPHABET, check_char

SELLER = os.environ.get("FAPIAO_ST_SELLER", "")  # the tenant's USCC, registered at the store
WEBHOOK = os.environ.get("FAPIAO_ST_WEBHOOK_URL", "")
BUYER = "91110108MA01ABCD0" + check_char("91110108MA01ABCD0")


def _positive(case: Any, location: ParameterLocation) -> bool:
    meta = getattr(case, "meta", None)
    if meta is None:
        return False
    info = meta.components.get(location)
    return info is not None and info.mode.is_positive


def _not_negative(case: Any, location: ParameterLocation) -> bool:
    """Meant to be valid there: generated positive, or filled in by the stateful phase from an earlier answer
    (an inferred link may carry a value that is no USCC at all)."""
    meta = getattr(case, "meta", None)
    info = meta.components.get(location) if meta is not None else None
    return info is None or info.mode.is_positive


def _uscc(value: Any) -> str:
    """A valid USCC from a generated one (its first 17 characters kept), or BUYER."""
    if isinstance(value, str) and len(value) == 18 and all(c in ALPHABET for c in value.upper()):
        head = value.upper()[:17]
        return head + check_char(head)
    return BUYER


def _decimal(value: Any, *, ceiling: Decimal, default: str) -> tuple[str, Decimal]:
    try:
        d = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return default, Decimal(default)
    if not Decimal(0) < d <= ceiling:
        return default, Decimal(default)
    return value, d


def _today() -> datetime:
    return datetime.now(UTC) + timedelta(hours=8) - timedelta(days=1)  # yesterday in China: inside any window


def _invoice(inv: Any, *, canonical: bool) -> Any:
    """An invoice (the issuer's InvoiceCreate or the store's canonical document) that obeys the rules."""
    if not isinstance(inv, dict):
        return inv
    day = _today().date()
    inv["issue_date"] = day.isoformat()
    digits = "".join(c for c in str(inv.get("number")) if c in "0123456789")[-18:].rjust(18, "0")
    inv["number"] = f"{day.year % 100:02d}{digits}"  # the issuer's pattern asks for 20 digits; the store's rule too
    if isinstance(inv.get("seller"), dict):
        inv["seller"]["tax_id"] = SELLER
    buyer = inv.get("buyer")
    if isinstance(buyer, dict) and (buyer.get("tax_id") or inv.get("kind") == "special"):
        buyer["tax_id"] = _uscc(buyer.get("tax_id"))
    total_amount = total_tax = Decimal(0)
    for line in inv.get("lines") or []:
        if not isinstance(line, dict):
            continue
        line["quantity"], q = _decimal(line.get("quantity"), ceiling=Decimal(10_000), default="1")
        line["unit_price"], p = _decimal(line.get("unit_price"), ceiling=Decimal(1_000_000), default="100")
        amount = round_cents(q * p)
        if amount <= 0:
            line["quantity"], line["unit_price"], amount = "1", "1", Decimal("1.00")
        try:
            rate = Decimal(line.get("tax_rate"))
        except (InvalidOperation, TypeError, ValueError):
            rate = Decimal(-1)
        if rate not in TAX_RATES:
            line["tax_rate"], rate = "0.13", Decimal("0.13")
        tax = round_cents(amount * rate)
        line["amount"], line["tax_amount"] = fmt(amount), fmt(tax)
        total_amount += amount
        total_tax += tax
    inv["total_amount"], inv["total_tax"], inv["total"] = fmt(total_amount), fmt(total_tax), fmt(
        total_amount + total_tax)
    if canonical:
        inv["currency"] = "CNY"
    return inv


def _csv(number_seed: str) -> str:
    """A small valid import file: one invoice of two lines."""
    day = _today().date()
    digits = "".join(c for c in number_seed if c.isdigit())[-18:].rjust(18, "0")
    number = f"{day.year % 100:02d}{digits}"
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["number", "kind", "issue_date", "buyer_tax_id", "buyer_name", "line_description", "line_tax_code",
                "line_quantity", "line_unit_price", "line_amount", "line_tax_rate", "line_tax_amount", "remarks"])
    for i in (1, 2):
        w.writerow([number, "special", day.isoformat(), BUYER, "买方 Buyer Co.", f"服务 {i}", "3040201000000000000",
                    "2", "50.00", "100.00", "0.06", "6.00", ""])
    return out.getvalue()


_HARMLESS = {"latency_ms": 0, "latency_jitter_ms": 0, "error_rate": 0.0, "timeout_rate": 0.0, "drop_rate": 0.0,
             "visibility_delay_ms": 0, "corrupt_rate": 0.0, "outage": False}


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    op = context.operation
    method, path = op.method.upper(), op.path
    if _positive(case, ParameterLocation.QUERY) and isinstance(case.query, dict) and "cursor" in case.query:
        del case.query["cursor"]  # only the API can mint one; paging is tested with real cursors elsewhere
    if _not_negative(case, ParameterLocation.PATH) and isinstance(case.path_parameters, dict) and \
            method == "PUT" and path == "/admin/sellers/{tax_id}":
        case.path_parameters["tax_id"] = _uscc(case.path_parameters.get("tax_id"))
    if not _positive(case, ParameterLocation.BODY):
        return case
    body = case.body
    headers = case.headers if case.headers is not None else {}  # a case-insensitive mapping, not always a dict
    key = next((k for k in headers if k.lower() == "idempotency-key"), None)
    if key is not None and isinstance(headers[key], str) and 1 <= len(headers[key]) <= 200:
        # A key names one request: reusing it with another body, or on another resource (the path's ids are part
        # of the request), is refused (422, as the IETF draft says). Schemathesis draws keys from a small space;
        # one per path and body keeps every repeat a true repeat.
        params = sorted((case.path_parameters or {}).items()) if isinstance(case.path_parameters, dict) else None
        headers[key] = "st-" + hashlib.sha256(repr((path, params, body)).encode()).hexdigest()[:32]
    if method == "POST" and path == "/v1/invoices" and isinstance(body, dict):
        if "invoice" in body:  # the store's submission
            body["invoice"] = _invoice(body["invoice"], canonical=True)
            body["red_letter_of"] = None
        else:
            _invoice(body, canonical=False)
    elif method == "POST" and path == "/v1/invoices/batch" and isinstance(body, dict):
        for item in body.get("invoices") or []:
            _invoice(item, canonical=False)
        for item in body.get("submissions") or []:
            if isinstance(item, dict):
                item["invoice"] = _invoice(item.get("invoice"), canonical=True)
                item["red_letter_of"] = None
    elif method == "POST" and path == "/v1/invoices/import":
        case.body = _csv(str(body))
    elif method == "POST" and path.endswith("/red-letter") and isinstance(body, dict) and \
            isinstance(body.get("lines"), list) and body["lines"]:
        # Parts of an invoice the schema cannot see: each line named once, inside the invoice's lines, and no
        # more than is left of it. Line 0 exists on every invoice; one cent of it is left unless it is all gone
        # (then the answer is 409, which the check accepts).
        first = body["lines"][0]
        part = {k: v for k, v in first.items() if k == "quantity"} if isinstance(first, dict) else {}
        body["lines"] = [{"line": 0, "amount": "-0.01", **part}]
    elif method == "POST" and path == "/admin/tenants" and isinstance(body, dict):
        body["tax_id"] = _uscc(body.get("tax_id"))
    elif method == "PUT" and path.endswith("/faults") and isinstance(body, dict):
        body.update({k: v for k, v in _HARMLESS.items() if k in body})
    elif "subscriptions" in path and method in {"POST", "PATCH"} and isinstance(body, dict) and \
            isinstance(body.get("url"), str):
        body["url"] = WEBHOOK
    return case
