"""Request and response shapes of the ERP-facing API. Structure and formats live here; the rules
that relate fields to each other (arithmetic, dates, the seller) live in rules.py."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from shared.validators import amount_text, clean_text, decimal_text, must_be_string

__all__ = [
    "BatchRequest", "CaseRequest", "InvoiceCreate", "InvoiceList", "InvoiceRead", "InvoiceView", "Line", "Party",
    "TimelineEntry", "VoidRequest",
]

Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True), AfterValidator(clean_text)]
Name = Annotated[Text, StringConstraints(min_length=1, max_length=200)]
Amount = Annotated[str, BeforeValidator(must_be_string), AfterValidator(amount_text)]
DecimalText = Annotated[str, BeforeValidator(must_be_string), AfterValidator(decimal_text)]
TaxId = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, to_upper=True, max_length=18),
                  AfterValidator(clean_text)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=2000)


class Party(_Strict):
    tax_id: TaxId | None = Field(default=None, description="USCC (统一社会信用代码)")
    name: Name


class Line(_Strict):
    description: Name
    tax_code: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9]{19}$")] = Field(
        description="19-digit tax classification code (税收分类编码)")
    quantity: DecimalText
    unit_price: DecimalText
    amount: Amount
    tax_rate: DecimalText
    tax_amount: Amount


class InvoiceCreate(_Strict):
    number: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9]{20}$")] = Field(
        description="20-digit fully digital invoice number (数电票号码)")
    kind: Literal["special", "ordinary"]
    issue_date: date
    seller: Party
    buyer: Party
    lines: list[Line] = Field(min_length=1, max_length=100)
    total_amount: Amount
    total_tax: Amount
    total: Amount
    currency: Literal["CNY"] = "CNY"
    remarks: Annotated[Text, StringConstraints(max_length=500)] | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Items are validated one by one (rules.py) so a bad item does not sink the whole batch.
    invoices: list[dict[str, Any]] = Field(min_length=1)


class VoidRequest(_Strict):
    reason: Annotated[Text, StringConstraints(min_length=1, max_length=500)]


class CaseRequest(_Strict):
    note: Annotated[Text, StringConstraints(max_length=500)] | None = Field(
        default=None, description="what the seller sees, e.g. 'the buyer cannot find it in the tax system'")


class TimelineEntry(BaseModel):
    at: datetime
    kind: str
    message: str
    detail: dict[str, Any] | None = None


class InvoiceView(BaseModel):
    """An invoice with where it stands and why."""

    id: UUID
    number: str
    kind: str
    issue_date: date
    seller_tax_id: str
    buyer_tax_id: str | None
    buyer_name: str
    total_amount: str
    total_tax: str
    total: str
    currency: str
    status: str
    reason: str | None
    next_action: str | None
    next_action_at: datetime | None
    case_no: str | None
    receipt_no: str | None
    accepted_at: datetime
    updated_at: datetime


class InvoiceRead(InvoiceView):
    invoice: dict[str, Any]
    timeline: list[TimelineEntry]


class InvoiceList(BaseModel):
    items: list[InvoiceView]
    next_cursor: str | None
