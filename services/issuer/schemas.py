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

from shared.uscc import USCC_PATTERN
from shared.validators import (
    AMOUNT_SCHEMA,
    CLEAN_NAME,
    CLEAN_TEXT,
    DECIMAL_SCHEMA,
    IsoDate,
    JsonPattern,
    amount_text,
    decimal_text,
    must_be_string,
)

__all__ = [
    "BatchRequest", "CaseRequest", "InvoiceCreate", "InvoiceList", "InvoiceRead", "InvoiceView", "Line", "Party",
    "TimelineEntry", "VoidRequest",
]

Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True), CLEAN_TEXT]
Name = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=200), CLEAN_NAME]
Amount = Annotated[str, BeforeValidator(must_be_string), AfterValidator(amount_text), AMOUNT_SCHEMA]
DecimalText = Annotated[str, BeforeValidator(must_be_string), AfterValidator(decimal_text), DECIMAL_SCHEMA]
# Empty: no buyer tax id (an ordinary invoice to a person). The check character is a rule (rules.py).
TaxId = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, to_upper=True, max_length=18),
                  CLEAN_TEXT, JsonPattern(f"^({USCC_PATTERN[1:-1]})?$")]


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
    issue_date: IsoDate
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
    invoices: list[dict[str, Any]] = Field(min_length=1, description=(
        "invoices as POST /v1/invoices takes them (InvoiceCreate); each is checked on its own and answered in "
        "`results` (201, 200, 409 or 422 with its errors), so one bad invoice does not refuse the others"))


class VoidRequest(_Strict):
    reason: Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=500),
                      CLEAN_NAME]


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
    red_letter_of: str | None = None  # a red invoice: the number of the blue one it reverses


class InvoiceRead(InvoiceView):
    invoice: dict[str, Any]
    timeline: list[TimelineEntry]
    red_letter: RedLetterStanding | None = None  # red-letter forms on it, and what is left of it


class InvoiceList(BaseModel):
    items: list[InvoiceView]
    next_cursor: str | None


# --- red-letter forms (红字发票信息确认单) and verification (发票查验) ----------------------------

NegativeAmount = Annotated[str, StringConstraints(strict=True, pattern=r"^-[0-9]{1,12}\.[0-9]{2}$")]
NegativeQuantity = Annotated[str, StringConstraints(strict=True, pattern=r"^-[0-9]{1,12}(\.[0-9]{1,8})?$")]


class RedLetterLine(_Strict):
    """Part of one line of the blue invoice to reverse: its index in `lines`, the negative amount (net of tax),
    and for returned goods the negative quantity. The authority works out the tax."""

    line: int = Field(ge=0, le=999, strict=True)
    amount: NegativeAmount
    quantity: NegativeQuantity | None = None


class RedLetterCreate(_Strict):
    """Ask for a red-letter credit note on a blue invoice: all that is left of it, or parts of its lines."""

    reason_code: Literal["01", "02", "03", "04"] = Field(
        description="01 issued in error (开票有误), 02 goods returned (销货退回), 03 service stopped (服务中止), "
                    "04 sales discount (销售折让)")
    lines: list[RedLetterLine] | None = Field(default=None, min_length=1, max_length=1000,
                                              description="the parts to reverse; absent = all that is left")
    note: Annotated[Text, StringConstraints(max_length=500)] | None = None


class RedLetterDecide(_Strict):
    note: Annotated[Text, StringConstraints(max_length=500)] | None = None


class RedLetterFormView(BaseModel):
    """A red-letter form as the seller or the buyer (when it is a tenant here) sees it."""

    id: UUID
    form_no: str | None
    status: str  # requested | pending | confirmed | rejected | voided | failed
    role: Literal["seller", "buyer"]  # the reader's side of it
    invoice_id: UUID | None  # the blue invoice (None for the buyer: it is the seller's)
    seller_tax_id: str
    number: str
    buyer_tax_id: str | None
    reason_code: str
    scope: str
    lines: list[dict[str, Any]] | None
    total: str
    awaiting_confirmation_from: str | None
    expires_at: datetime | None
    red_invoice_id: UUID | None
    red_invoice_number: str | None
    decision: dict[str, Any] | None
    error: str | None
    reason: str
    next_action: str | None
    next_action_at: datetime | None
    created_at: datetime
    updated_at: datetime


class RedLetterFormList(BaseModel):
    items: list[RedLetterFormView]
    next_cursor: str | None


class RedLetterStanding(BaseModel):
    """What red letters did to an invoice: for a blue one, how much is reversed and left, and its forms; for a
    red one, the blue invoice it reverses."""

    red_letter_of: str | None
    red_lettered_total: str
    remaining_total: str
    forms: list[dict[str, Any]]


class VerifyRequest(_Strict):
    number: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9]{20}$")]
    issue_date: IsoDate
    total: Annotated[str, StringConstraints(strict=True, pattern=r"^-?[0-9]{1,12}\.[0-9]{2}$")]

InvoiceRead.model_rebuild()
