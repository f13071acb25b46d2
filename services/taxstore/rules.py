"""How the authority re-validates a submission, as pure functions: an authority never trusts the
issuer's checks, and its rejections must be deterministic and permanent, so a client can tell a
rejection (stop, tell a human) from a fault (retry).

Stages, each run only when the previous one passed, every broken rule of the failing stage reported:
structure (MALFORMED) here, then the document rules here, then the registry checks that need the
database (service.py: SELLER_NOT_REGISTERED, RED_LETTER_*). The first reason's code is the headline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from services.taxstore.schemas import InvoiceDoc, SubmissionDoc
from shared.content import content_hash
from shared.http import field_path
from shared.money import TAX_RATES, TOLERANCE, fmt, round_cents
from shared.uscc import uscc_error

__all__ = ["CORRUPTION", "Reason", "Submission", "corrupt", "parse_submission"]

MALFORMED = "MALFORMED"
NUMBER_INVALID = "NUMBER_INVALID"
SELLER_TAX_ID_INVALID = "SELLER_TAX_ID_INVALID"
BUYER_TAX_ID_INVALID = "BUYER_TAX_ID_INVALID"
TAX_RATE_INVALID = "TAX_RATE_INVALID"
LINE_AMOUNT_MISMATCH = "LINE_AMOUNT_MISMATCH"
LINE_TAX_MISMATCH = "LINE_TAX_MISMATCH"
TOTAL_MISMATCH = "TOTAL_MISMATCH"
AMOUNT_NOT_POSITIVE = "AMOUNT_NOT_POSITIVE"
RED_LETTER_NOT_NEGATIVE = "RED_LETTER_NOT_NEGATIVE"
SELLER_NOT_REGISTERED = "SELLER_NOT_REGISTERED"
RED_LETTER_ORIGINAL_NOT_FOUND = "RED_LETTER_ORIGINAL_NOT_FOUND"
RED_LETTER_EXCEEDS_ORIGINAL = "RED_LETTER_EXCEEDS_ORIGINAL"
RED_LETTER_SELLER_MISMATCH = "RED_LETTER_SELLER_MISMATCH"

CORRUPTION = Decimal("1.00")  # what the corrupt fault adds to a stored total
_NUMBER = re.compile(r"[0-9]{20}", re.ASCII)


@dataclass(frozen=True)
class Reason:
    code: str
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "path": self.path, "message": self.message}


@dataclass(frozen=True)
class Submission:
    """A structurally sound submission whose document rules all pass."""

    doc: dict[str, Any]  # exactly as received
    digest: str  # content_hash(doc): equals the issuer's hash of the same canonical document
    seller_tax_id: str
    number: str
    kind: str  # blue | red
    invoice_type: str  # special | ordinary
    issue_date: date
    buyer_tax_id: str | None
    total: Decimal
    red_letter_of: str | None

    @property
    def key(self) -> tuple[str, str]:
        return self.seller_tax_id, self.number


def _printable(text: str) -> str:
    # A path can echo a client's key; a lone surrogate in it would make the answer unencodable.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_submission(raw: Any) -> Submission | list[Reason]:
    """Structure, then the document rules; the reasons of the first stage that fails."""
    if not isinstance(raw, dict):
        return [Reason(MALFORMED, "(submission)", "must be an object {\"invoice\": {...}, \"red_letter_of\": ...}")]
    try:
        sub = SubmissionDoc.model_validate(raw)
    except ValidationError as exc:
        return [Reason(MALFORMED, _printable(field_path(e["loc"])), str(e["msg"]).removeprefix("Value error, "))
                for e in exc.errors()]
    red = sub.red_letter_of is not None
    reasons = check_document(sub.invoice, red=red)
    if reasons:
        return reasons
    inv = sub.invoice
    doc = raw["invoice"]
    return Submission(
        doc=doc, digest=content_hash(doc), seller_tax_id=inv.seller.tax_id, number=inv.number,
        kind="red" if red else "blue", invoice_type=inv.kind, issue_date=date.fromisoformat(inv.issue_date),
        buyer_tax_id=inv.buyer.tax_id or None, total=Decimal(inv.total), red_letter_of=sub.red_letter_of,
    )


def check_document(inv: InvoiceDoc, *, red: bool) -> list[Reason]:
    """Every document rule `inv` breaks. Paths are relative to the submission (`invoice.…`)."""
    reasons: list[Reason] = []

    def add(code: str, path: str, message: str) -> None:
        reasons.append(Reason(code, f"invoice.{path}", message))

    issue_year = inv.issue_date[2:4]
    if not _NUMBER.fullmatch(inv.number):
        add(NUMBER_INVALID, "number", "must be the 20-digit invoice number")
    elif inv.number[:2] != issue_year:
        add(NUMBER_INVALID, "number", f"digits 1-2 must be the year of issue_date ({issue_year})")

    if (why := uscc_error(inv.seller.tax_id)) is not None:
        add(SELLER_TAX_ID_INVALID, "seller.tax_id", why)

    if not inv.buyer.tax_id:
        if inv.kind == "special":
            add(BUYER_TAX_ID_INVALID, "buyer.tax_id", "is required on a special VAT invoice (专票)")
    elif (why := uscc_error(inv.buyer.tax_id)) is not None:
        add(BUYER_TAX_ID_INVALID, "buyer.tax_id", why)

    sum_amount = Decimal(0)
    sum_tax = Decimal(0)
    for i, line in enumerate(inv.lines):
        p = f"lines[{i}]"
        qty, price = Decimal(line.quantity), Decimal(line.unit_price)
        amount, tax, rate = Decimal(line.amount), Decimal(line.tax_amount), Decimal(line.tax_rate)
        sum_amount += amount
        sum_tax += tax
        if rate not in TAX_RATES:
            add(TAX_RATE_INVALID, f"{p}.tax_rate", f"must be one of {', '.join(sorted(str(r) for r in TAX_RATES))}")
        expected_amount = round_cents(qty * price)
        if abs(amount - expected_amount) > TOLERANCE:
            add(LINE_AMOUNT_MISMATCH, f"{p}.amount", f"must equal quantity x unit_price = {fmt(expected_amount)}")
        if rate in TAX_RATES:
            expected_tax = round_cents(amount * rate)
            if abs(tax - expected_tax) > TOLERANCE:
                add(LINE_TAX_MISMATCH, f"{p}.tax_amount",
                    f"must equal round(amount x tax_rate, 2) = {fmt(expected_tax)}")
        if red:
            if amount >= 0:
                add(RED_LETTER_NOT_NEGATIVE, f"{p}.amount", "must be negative on a red-letter invoice")
            if tax > 0:
                add(RED_LETTER_NOT_NEGATIVE, f"{p}.tax_amount", "must not be positive on a red-letter invoice")
        else:
            if amount <= 0:
                add(AMOUNT_NOT_POSITIVE, f"{p}.amount", "must be positive (a reversal is a red-letter invoice)")
            if tax < 0:
                add(AMOUNT_NOT_POSITIVE, f"{p}.tax_amount", "must not be negative")

    total_amount, total_tax, total = Decimal(inv.total_amount), Decimal(inv.total_tax), Decimal(inv.total)
    if total_amount != sum_amount:
        add(TOTAL_MISMATCH, "total_amount", f"must equal the sum of line amounts ({fmt(sum_amount)})")
    if total_tax != sum_tax:
        add(TOTAL_MISMATCH, "total_tax", f"must equal the sum of line tax amounts ({fmt(sum_tax)})")
    if total != total_amount + total_tax:
        add(TOTAL_MISMATCH, "total", f"must equal total_amount + total_tax ({fmt(total_amount + total_tax)})")
    if red and total >= 0:
        add(RED_LETTER_NOT_NEGATIVE, "total", "must be negative on a red-letter invoice")
    elif not red and total <= 0:
        add(AMOUNT_NOT_POSITIVE, "total", "must be positive")
    return reasons


def corrupt(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as the corrupt fault stores it: the same, with a total off by CORRUPTION."""
    return {**doc, "total": fmt(Decimal(doc["total"]) + CORRUPTION)}
