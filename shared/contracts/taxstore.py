"""The simulated tax store's contracts: its drill knobs (PUT /admin/faults: the store applies them, and the
issuer's dashboard, PUT /ops/api/faults, checks and documents the same model before it forwards a change), its
policy (PUT /admin/policy), red-letter confirmation forms, verification and cross-region review decisions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from shared.uscc import USCC_PATTERN
from shared.validators import CLEAN_TEXT, IsoDate

__all__ = ["REASON_CODES", "VERIFY_RESULTS", "FaultsUpdate", "FormCreate", "FormDecision", "FormLine", "FormStatus",
           "InvoiceRef", "JsonInt", "PolicyUpdate", "ReasonCode", "ReviewDecision", "ReviewStatus", "VerifyAnswer",
           "VerifyRequest", "VerifyResult"]


def _whole_number(value: Any) -> Any:
    """JSON has one number type: 30000.0 is the integer 30000 (JSON Schema says so too); 1.5 is not one."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_whole_number)]


class FaultsUpdate(BaseModel):
    """Any subset of the knobs; the rest keep their values."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "1" is not 1, nor true 1.0
    latency_ms: JsonInt = Field(default=0, ge=0, le=600_000)
    latency_jitter_ms: JsonInt = Field(default=0, ge=0, le=600_000)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    drop_rate: float = Field(default=0.0, ge=0, le=1)
    visibility_delay_ms: JsonInt = Field(default=0, ge=0, le=86_400_000)
    corrupt_rate: float = Field(default=0.0, ge=0, le=1)
    outage: bool = False
    seed: JsonInt | None = Field(default=None,
                                 description="re-seeds the generator when present; null = not reproducible")
    timeout_hang_ms: JsonInt = Field(default=30_000, ge=0, le=600_000)


# --- the authority's policy (PUT /admin/policy) -----------------------------------------------

Money = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,12}\.[0-9]{2}$")]


class PolicyUpdate(BaseModel):
    """Any subset of the authority's policy; the rest keep their values. Durations in seconds."""

    model_config = ConfigDict(extra="forbid", strict=True)
    confirm_window_s: float = Field(default=72 * 3600, gt=0, le=30 * 86400,
                                    description="how long a red-letter form waits for the counterparty")
    used_rate: float = Field(default=0.5, ge=0, le=1, description="share of invoices the buyer has used")
    review_threshold: Money | None = Field(default=None, description="hold cross-region invoices above this total; "
                                                                     "null = no review")
    review_delay_s: float = Field(default=86_400, ge=0, le=30 * 86400,
                                  description="after this long the bureau decides a held invoice on its own")
    review_denial_rate: float = Field(default=0.1, ge=0, le=1, description="share it then denies")
    decision_seed: JsonInt = Field(default=0, ge=0, le=2**31 - 1, description="seed of the per-invoice coins")


# --- red-letter confirmation forms (红字发票信息确认单) -----------------------------------------

REASON_CODES: dict[str, str] = {"01": "开票有误", "02": "销货退回", "03": "服务中止", "04": "销售折让"}
"""Why an invoice is reversed: 01 issued in error, 02 goods returned, 03 service stopped, 04 sales discount."""

ReasonCode = Literal["01", "02", "03", "04"]
FormStatus = Literal["pending", "confirmed", "rejected", "voided"]
TaxId = Annotated[str, StringConstraints(pattern=USCC_PATTERN)]
Number = Annotated[str, StringConstraints(pattern=r"^[0-9]{20}$")]
Note = Annotated[str, StringConstraints(max_length=500), CLEAN_TEXT]
NegativeAmount = Annotated[str, StringConstraints(pattern=r"^-[0-9]{1,12}\.[0-9]{2}$")]
NegativeQuantity = Annotated[str, StringConstraints(pattern=r"^-[0-9]{1,12}(\.[0-9]{1,8})?$")]


class InvoiceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seller_tax_id: TaxId
    number: Number


class FormLine(BaseModel):
    """Part of one line of the blue invoice to reverse: its index there, the (negative) amount, and for returned
    goods the (negative) quantity. The authority works out the tax."""

    model_config = ConfigDict(extra="forbid")
    line: int = Field(ge=0, le=999, description="index of the line in the blue invoice's `lines`")
    amount: NegativeAmount
    quantity: NegativeQuantity | None = None


class FormCreate(BaseModel):
    """Ask the authority for a red-letter form on a blue invoice, as its seller or its buyer. `request_id` is the
    requester's idempotency key: the same id with the same request answers the same form."""

    model_config = ConfigDict(extra="forbid")
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z._:-]+$")]
    invoice: InvoiceRef
    requested_by: TaxId
    reason_code: ReasonCode
    lines: list[FormLine] | None = Field(default=None, min_length=1, max_length=1000,
                                         description="the part to reverse; null or absent = all that is left")
    note: Note | None = None


class FormDecision(BaseModel):
    """The counterparty confirms or rejects a pending form."""

    model_config = ConfigDict(extra="forbid")
    by: TaxId
    note: Note | None = None


# --- verification (发票查验) ------------------------------------------------------------------

VERIFY_RESULTS: dict[str, str] = {
    "normal": "正常", "red_lettered": "已红冲", "partly_red_lettered": "部分红冲", "voided": "作废",
    "under_review": "审核中", "not_found": "查无此票",
}
VerifyResult = Literal["normal", "red_lettered", "partly_red_lettered", "voided", "under_review", "not_found"]


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: Number
    issue_date: IsoDate
    total: Annotated[str, StringConstraints(pattern=r"^-?[0-9]{1,12}\.[0-9]{2}$")]


class VerifyAnswer(BaseModel):
    """What the authority says of an invoice named by number, issue date and total."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    result: VerifyResult
    result_text: str
    number: str
    issue_date: str
    total: str
    seller_tax_id: str | None = None
    buyer_tax_id: str | None = None
    kind: str | None = None
    red_letter_of: str | None = None
    red_lettered_total: str | None = None
    remaining_total: str | None = None
    review_status: str | None = None


# --- cross-region review (admin) --------------------------------------------------------------

ReviewStatus = Literal["under_review", "approved", "denied"]


class ReviewDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "deny"]
    note: Note | None = None
