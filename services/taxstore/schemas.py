"""Shapes the tax store accepts. The invoice document is checked here only for structure (which
fields, which types, which formats); what it means (USCC, arithmetic, red letters) is rules.py.

Documents are validated, never rewritten: the store keeps and hashes the dict exactly as received,
so nothing here strips, upper-cases or normalises a value.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)

from shared.validators import AMOUNT_SCHEMA, CLEAN_TEXT, DECIMAL_SCHEMA, JsonPattern, amount_text, decimal_text

__all__ = [
    "BatchRequest", "InvoiceDoc", "InvoiceKey", "LoseRequest", "SellerPut", "SubmissionDoc",
]

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def _iso_date(value: str) -> str:
    if not _ISO_DATE.fullmatch(value):
        raise ValueError("must be an ISO date, YYYY-MM-DD")
    date.fromisoformat(value)  # ValueError for 2026-02-30
    return value


Text = Annotated[str, Strict(), CLEAN_TEXT]
Name = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=200), CLEAN_TEXT]
Amount = Annotated[str, Strict(), AfterValidator(amount_text), AMOUNT_SCHEMA]
DecimalText = Annotated[str, Strict(), AfterValidator(decimal_text), DECIMAL_SCHEMA]
IsoDate = Annotated[str, Strict(), AfterValidator(_iso_date), JsonPattern("^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
Number = Annotated[str, Strict(), StringConstraints(pattern=r"^[0-9]{20}$")]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=2000)


class SellerDoc(_Doc):
    tax_id: Text
    name: Name


class BuyerDoc(_Doc):
    tax_id: Text | None = None
    name: Name


class LineDoc(_Doc):
    description: Name
    tax_code: Annotated[str, Strict(), StringConstraints(pattern=r"^[0-9]{19}$")]
    quantity: DecimalText
    unit_price: DecimalText
    amount: Amount
    tax_rate: DecimalText
    tax_amount: Amount


class InvoiceDoc(_Doc):
    """The canonical invoice document as the issuer emits it (services.issuer.rules.canonical)."""

    number: Text  # its format is a rule (NUMBER_INVALID), not structure
    kind: Literal["special", "ordinary"]
    issue_date: IsoDate
    seller: SellerDoc
    buyer: BuyerDoc
    lines: list[LineDoc] = Field(min_length=1, max_length=1000)
    total_amount: Amount
    total_tax: Amount
    total: Amount
    currency: Literal["CNY"]
    remarks: Annotated[str, Strict(), StringConstraints(max_length=500), CLEAN_TEXT] | None = None


class SubmissionDoc(_Doc):
    invoice: InvoiceDoc
    red_letter_of: Number | None = Field(default=None, description="number of the invoice this one reverses (红字)")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Items stay untyped here so one malformed submission is rejected on its own, not the whole batch.
    submissions: list[Any] = Field(min_length=1, description=(
        "submissions, each a SubmissionDoc; any item is taken, and one that is not well formed gets its own "
        "result (rejected, reason MALFORMED) while the others are stored"))


class InvoiceKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seller_tax_id: str = Field(pattern=r"^[0-9A-Za-z]{1,18}$")
    number: str = Field(pattern=r"^[0-9A-Za-z]{1,20}$")


class LoseRequest(BaseModel):
    """Either `count` random invoices (optionally of one seller) or the listed `invoices`."""

    # What _one_way checks, in the schema too.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["count"], "properties": {"count": {"type": "integer"}, "invoices": {"type": "null"}}},
        {"required": ["invoices"], "properties": {"invoices": {"type": "array"}, "count": {"type": "null"},
                                                  "seller_tax_id": {"type": "null"}}}]})
    count: int | None = Field(default=None, ge=1, le=100_000)
    seller_tax_id: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{1,18}$")
    invoices: list[InvoiceKey] | None = Field(default=None, min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _one_way(self) -> LoseRequest:
        if (self.count is None) == (self.invoices is None):
            raise ValueError("give either count (with an optional seller_tax_id) or invoices")
        if self.invoices is not None and self.seller_tax_id is not None:
            raise ValueError("seller_tax_id restricts count only; name each invoice's seller in invoices")
        return self


class SellerPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=200), CLEAN_TEXT]
