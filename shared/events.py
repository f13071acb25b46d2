"""Event types (facts, past tense; commands imperative) and their payloads, one frozen model each.

The type string carries the version. Every event travels in the envelope of shared.envelope, keyed by invoice
id; `EVENT_TYPES` maps each type to its model, and shared.topics says which topic carries which types. A
consumer is handed the model, never the raw dict (shared.kafka.HandlerTable): a payload that fails its model is
dead-lettered with the field named.

Required fields are the ones every consumer needs; a field some consumer can do without is optional (`None`
when absent), so a sparser producer (an older version, a test) is still understood. Where a consumer stores or
renders text, the model holds it to what PostgreSQL and the views can take (clean_text, lengths, literals).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from shared.validators import clean_text

__all__ = [
    "ALERT_CLOSED", "ALERT_KINDS", "ALERT_ORPHAN", "ALERT_RECOVERED", "ALERT_REJECTED", "ALERT_RESOLVED",
    "ALERT_REVIEW_DENIED", "ALERT_REVIEW_OVERDUE", "ALERT_STUCK", "ALERT_TYPES", "CASE_UPDATED", "EVENT_TYPES",
    "INVOICE_AWAITING_VISIBILITY", "INVOICE_CONFIRMED", "INVOICE_GAP_FOUND", "INVOICE_ISSUED", "INVOICE_REJECTED",
    "INVOICE_REVIEW_UPDATED", "INVOICE_STUCK", "INVOICE_SUBMISSION_FAILED", "INVOICE_SUBMITTED", "INVOICE_VOIDED",
    "ISSUER_SOURCE", "NOTIFICATION_FAILED", "NOTIFICATION_SENT", "NOTIFICATION_TYPES", "NOTIFIER_SOURCE",
    "RECONCILER_SOURCE", "RECONCILIATION_TYPES", "RED_LETTER_DECIDE", "RED_LETTER_FORM_UPDATED",
    "RED_LETTER_REQUESTED", "RESYNC_INVOICE", "SYNC_RESULT_TYPES", "SYNC_SOURCE", "AlertRaised",
    "CaseClosedAlertRaised", "CaseResolvedAlertRaised", "CaseUpdated", "Event", "InvoiceAwaitingVisibility",
    "InvoiceConfirmed", "InvoiceGapFound", "InvoiceIssued", "InvoiceRejected", "InvoiceReviewUpdated", "InvoiceStuck",
    "InvoiceSubmissionFailed", "InvoiceSubmitted", "InvoiceVoided", "Issued", "NotificationFailed",
    "NotificationSent", "OrphanAlertRaised", "PayloadError", "ReconciliationEvent", "RecoveredAlertRaised",
    "RedInvoiceMissingAlertRaised", "RedLetterDecisionRequested", "RedLetterFormUpdated", "RedLetterLine",
    "RedLetterRequested", "RejectedAlertRaised", "ResyncRequested", "ReviewDeniedAlertRaised",
    "ReviewOverdueAlertRaised", "StuckAlertRaised", "SyncResult", "model_for", "parse_payload"
]

ISSUER_SOURCE = "fapiao/issuer"
SYNC_SOURCE = "fapiao/sync"
RECONCILER_SOURCE = "fapiao/reconciler"
NOTIFIER_SOURCE = "fapiao/notifier"


class PayloadError(ValueError):
    """The payload does not fit its event type's model (or its envelope): dead-letter it, saying why."""


class Event(BaseModel):
    """One event type's payload. `TYPE` is the envelope type it travels as."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    TYPE: ClassVar[str]

    def check_envelope(self, *, subject: str, tenant: str) -> None:
        """Raise PayloadError when the payload contradicts its envelope (by default nothing to compare)."""


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


Time = Annotated[datetime | None, AfterValidator(_utc)]
Text = Annotated[str, AfterValidator(clean_text)]
Seconds = Annotated[float | None, Field(ge=0)]
Count = Annotated[int | None, Field(ge=0)]
TaxId = Annotated[str, StringConstraints(min_length=18, max_length=18)]
Number = Annotated[str, StringConstraints(pattern=r"^[0-9]{20}$")]
CaseNo = Annotated[str, StringConstraints(max_length=32), AfterValidator(clean_text)]
ReceiptNo = Annotated[str, StringConstraints(max_length=64), AfterValidator(clean_text)]
LedgerState = Literal["pending", "awaiting", "gap", "stuck", "confirmed", "rejected", "voided", "review", "denied"]
GapKind = Literal["missing", "mismatch"]
CaseStatus = Literal["open", "resolved", "closed"]


# --- invoice.events.v1 (issuer) ---------------------------------------------------------------

INVOICE_ISSUED = "cn.fapiao.invoice.issued.v1"
INVOICE_VOIDED = "cn.fapiao.invoice.voided.v1"


class InvoiceIssued(Event):
    """An invoice was accepted and numbered; `invoice` is the canonical invoice (what the store gets)."""

    TYPE: ClassVar[str] = INVOICE_ISSUED

    invoice_id: uuid.UUID
    tenant_id: uuid.UUID
    seller_tax_id: TaxId
    number: Number
    content_hash: str = Field(min_length=64, max_length=64)
    accepted_at: datetime
    invoice: dict[str, Any]
    red_letter_of: Number | None = None  # a red invoice: the blue original's number (the store needs it)

    def check_envelope(self, *, subject: str, tenant: str) -> None:
        if str(self.invoice_id) != subject:
            raise PayloadError("data.invoice_id differs from the envelope subject")


Issued = InvoiceIssued
"""The name this model had before every event type had one."""


class InvoiceVoided(Event):
    """The seller voided (废弃) an invoice the authority had not accepted (rejected or stuck)."""

    TYPE: ClassVar[str] = INVOICE_VOIDED

    invoice_id: uuid.UUID
    tenant_id: uuid.UUID
    seller_tax_id: str
    number: str
    reason: str
    voided_at: datetime


# --- red letters (issuer -> sync on invoice.events.v1; sync -> issuer on invoice.sync-results.v1) ----------

RED_LETTER_REQUESTED = "cn.fapiao.red-letter.requested.v1"
RED_LETTER_DECIDE = "cn.fapiao.red-letter.decide.v1"
RED_LETTER_FORM_UPDATED = "cn.fapiao.red-letter.form-updated.v1"
ReasonCode = Literal["01", "02", "03", "04"]


class RedLetterLine(BaseModel):
    """Part of one blue line to reverse (its index, the negative amount, for returns the negative quantity)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    line: int = Field(ge=0, le=999)
    amount: str = Field(pattern=r"^-[0-9]{1,12}\.[0-9]{2}$")
    quantity: str | None = Field(default=None, pattern=r"^-[0-9]{1,12}(\.[0-9]{1,8})?$")


class RedLetterRequested(Event):
    """The seller asked for a red-letter confirmation form (红字发票信息确认单) on a blue invoice. Keyed by the blue
    invoice's id; `form_id` (the issuer's) is the store's `request_id`, so every retry makes one form."""

    TYPE: ClassVar[str] = RED_LETTER_REQUESTED

    form_id: uuid.UUID
    invoice_id: uuid.UUID
    tenant_id: uuid.UUID
    seller_tax_id: TaxId
    number: Number
    requested_by: TaxId
    reason_code: ReasonCode
    lines: list[RedLetterLine] | None = None  # None: all that is left
    note: Text | None = None

    def check_envelope(self, *, subject: str, tenant: str) -> None:
        if str(self.invoice_id) != subject:
            raise PayloadError("data.invoice_id differs from the envelope subject")


class RedLetterDecisionRequested(Event):
    """A command: the counterparty (a tenant here, the buyer) confirms or rejects a pending form at the store.
    Keyed by the blue invoice's id; `decision_id` makes a redelivery one decision."""

    TYPE: ClassVar[str] = RED_LETTER_DECIDE

    decision_id: uuid.UUID
    form_id: uuid.UUID
    form_no: str = Field(pattern=r"^HZ[0-9]{18}$")
    invoice_id: uuid.UUID
    by: TaxId
    confirm: bool
    note: Text | None = None


class RedLetterFormUpdated(Event):
    """What the sync service learned of a form at the store: made, decided, void, or refused for good (`failed`,
    with the store's problem). `form` is the store's view of it (shared.contracts.taxstore); `sequence` in the
    envelope counts these per form, so a late one is known as such."""

    TYPE: ClassVar[str] = RED_LETTER_FORM_UPDATED

    form_id: uuid.UUID
    invoice_id: uuid.UUID
    tenant_id: uuid.UUID
    status: Literal["pending", "confirmed", "rejected", "voided", "failed"]
    form_no: str | None = None
    form: dict[str, Any] | None = None
    error: Text | None = None
    error_code: str | None = None
    http_status: int | None = None
    at: Time = None


# --- invoice.sync-results.v1 (sync): one event per attempt ----------------------------------

INVOICE_SUBMITTED = "cn.fapiao.invoice.submitted.v1"
INVOICE_SUBMISSION_FAILED = "cn.fapiao.invoice.submission-failed.v1"
INVOICE_REJECTED = "cn.fapiao.invoice.rejected.v1"
SYNC_RESULT_TYPES = frozenset({INVOICE_SUBMITTED, INVOICE_SUBMISSION_FAILED, INVOICE_REJECTED})


class SyncResult(Event):
    """What one submission attempt learned. The sync service always sends `seller_tax_id` and `number`; the
    reconciler needs them (it may see a result before the issued event), the issuer does not."""

    invoice_id: uuid.UUID
    seller_tax_id: str | None = None
    number: str | None = None
    attempt: int = Field(ge=0)
    latency_ms: int = 0
    at: Time = None


class InvoiceSubmitted(SyncResult):
    """The tax store acknowledged the invoice (`how` it came to hold it)."""

    TYPE: ClassVar[str] = INVOICE_SUBMITTED

    receipt_no: str | None = None
    how: Literal["created", "duplicate", "read_back", "repaired"] | None = None


class InvoiceSubmissionFailed(SyncResult):
    """An attempt failed (or was held back by the open circuit: `attempted` false); `gave_up` on the last one."""

    TYPE: ClassVar[str] = INVOICE_SUBMISSION_FAILED

    error: str | None = None
    ambiguous: bool = False  # the store may have applied it: the next attempt reads back first
    http_status: int | None = None
    attempted: bool = True
    gave_up: bool = False
    next_attempt_at: Time = None


class InvoiceRejected(SyncResult):
    """The tax store refused the invoice for good (`reasons`: [{code, path, message}])."""

    TYPE: ClassVar[str] = INVOICE_REJECTED

    reason_code: str | None = None
    reason: str | None = None
    reasons: list[dict[str, Any]] = Field(default_factory=list)


# --- invoice.resync-requests.v1 (reconciler) -------------------------------------------------

RESYNC_INVOICE = "cn.fapiao.invoice.resync.v1"


class ResyncRequested(Event):
    """补录, a command: submit the invoice again (reading back first). The content comes from the sync
    service's own record of the issued event."""

    TYPE: ClassVar[str] = RESYNC_INVOICE

    invoice_id: uuid.UUID
    seller_tax_id: str
    number: str
    reason: str
    requested_by: Literal["reconciler", "operator"]
    resync: int = Field(ge=0)


# --- invoice.reconciliation.v1 (reconciler -> issuer's status view) --------------------------

INVOICE_CONFIRMED = "cn.fapiao.invoice.confirmed.v1"
INVOICE_AWAITING_VISIBILITY = "cn.fapiao.invoice.awaiting-visibility.v1"
INVOICE_GAP_FOUND = "cn.fapiao.invoice.gap-found.v1"
INVOICE_STUCK = "cn.fapiao.invoice.stuck.v1"
CASE_UPDATED = "cn.fapiao.case.updated.v1"
INVOICE_REVIEW_UPDATED = "cn.fapiao.invoice.review-updated.v1"
RECONCILIATION_TYPES = frozenset({INVOICE_CONFIRMED, INVOICE_AWAITING_VISIBILITY, INVOICE_GAP_FOUND, INVOICE_STUCK,
                                  CASE_UPDATED, INVOICE_REVIEW_UPDATED})


class ReconciliationEvent(Event):
    """A finding of the reconciler for the issuer, which stores the payload (`invoices.recon`) and renders it at
    read time: checked here so that what it renders later is well-formed. Fields not declared are kept as sent.

    `sequence` counts the reconciler's own events per invoice. Times are UTC; durations in seconds. `case_no` is
    null while no case is open. Every event carries `ledger_state` (the reconciler's finding as of this event)
    and `sync_seq` (the last sync result it had applied), from which the issuer derives its status; `restated`
    marks an event re-sent because the status self-check found the issuer disagreeing with the ledger.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    invoice_id: uuid.UUID
    seller_tax_id: str | None = None
    number: str | None = None
    ledger_state: LedgerState | None = None  # None: from before findings carried it
    sync_seq: Count = None
    restated: bool | None = None
    case_no: CaseNo | None = None
    next_check_at: Time = None


class InvoiceConfirmed(ReconciliationEvent):
    """Visible at the store with identical content (`how`: what asked for the check)."""

    TYPE: ClassVar[str] = INVOICE_CONFIRMED

    receipt_no: ReceiptNo | None = None
    acked_at: Time = None
    confirmed_at: Time = None
    visible_after_seconds: Seconds = None
    how: Text | None = None
    recovered: bool | None = None  # it had been stuck
    reopened: bool | None = None  # it had vanished after an earlier confirmation
    case_status: CaseStatus | None = None


class InvoiceAwaitingVisibility(ReconciliationEvent):
    """Acknowledged but not yet visible, still within the SLA (sent once per acknowledgement)."""

    TYPE: ClassVar[str] = INVOICE_AWAITING_VISIBILITY

    receipt_no: ReceiptNo | None = None
    acked_at: Time = None
    sla_seconds: Seconds = None
    deadline: Time = None
    checks: Count = None


class InvoiceGapFound(ReconciliationEvent):
    """A gap, and the resync (补录) requested for it if one was."""

    TYPE: ClassVar[str] = INVOICE_GAP_FOUND

    kind: GapKind
    detail: Text | None = None
    reopened: bool | None = None  # it had been confirmed
    acked_at: Time = None
    sla_seconds: Seconds = None
    resync: Count = None  # resyncs so far in this episode
    max_resyncs: Count = None
    resync_at: Time = None
    stuck_after_seconds: Seconds = None
    since: Time = None  # start of the episode
    held: bool | None = None


class InvoiceStuck(ReconciliationEvent):
    """Past FAPIAO_STUCK_AFTER (time or resyncs): a case is open and an alert raised."""

    TYPE: ClassVar[str] = INVOICE_STUCK

    reason: Text | None = None
    accepted_at: Time = None
    since: Time = None
    stuck_at: Time = None
    stuck_after_seconds: Seconds = None
    resyncs: Count = None
    max_resyncs: Count = None
    last_error: Text | None = None
    gap_kind: GapKind | None = None
    alert_id: str | None = None


class CaseUpdated(ReconciliationEvent):
    """A case was opened (by a tenant), resolved or closed."""

    TYPE: ClassVar[str] = CASE_UPDATED

    case_no: Annotated[str, StringConstraints(min_length=1, max_length=32), AfterValidator(clean_text)]
    status: CaseStatus
    opened_by: Literal["system", "tenant"] | None = None
    at: Time = None
    resolution: Text | None = None


class InvoiceReviewUpdated(ReconciliationEvent):
    """The store holds the invoice for cross-region review (跨区域审核; ledger_state review, with the bureau's
    expected time), or the bureau denied it (ledger_state denied: it does not count). Approval is a confirmation."""

    TYPE: ClassVar[str] = INVOICE_REVIEW_UPDATED

    review_status: Literal["under_review", "denied"]
    review_due_at: Time = None
    review_since: Time = None
    review_sla_seconds: Seconds = None
    review_note: Text | None = None
    receipt_no: ReceiptNo | None = None


# --- invoice.alerts.v1 (reconciler -> notifier) ------------------------------------------------

ALERT_STUCK = "cn.fapiao.alert.stuck.v1"
ALERT_RECOVERED = "cn.fapiao.alert.recovered.v1"
ALERT_REJECTED = "cn.fapiao.alert.rejected.v1"
ALERT_ORPHAN = "cn.fapiao.alert.orphan.v1"
ALERT_RESOLVED = "cn.fapiao.alert.case-resolved.v1"
ALERT_CLOSED = "cn.fapiao.alert.case-closed.v1"
ALERT_REVIEW_OVERDUE = "cn.fapiao.alert.review-overdue.v1"
ALERT_REVIEW_DENIED = "cn.fapiao.alert.review-denied.v1"
ALERT_FORM_AWAITING = "cn.fapiao.alert.form-awaiting.v1"
ALERT_FORM_ENDED = "cn.fapiao.alert.form-ended.v1"
ALERT_FORM_EXPIRING = "cn.fapiao.alert.form-expiring.v1"
ALERT_RED_MISSING = "cn.fapiao.alert.red-invoice-missing.v1"
ALERT_TYPES = frozenset({ALERT_STUCK, ALERT_RECOVERED, ALERT_REJECTED, ALERT_ORPHAN, ALERT_RESOLVED, ALERT_CLOSED,
                         ALERT_REVIEW_OVERDUE, ALERT_REVIEW_DENIED, ALERT_FORM_AWAITING, ALERT_FORM_ENDED,
                         ALERT_FORM_EXPIRING, ALERT_RED_MISSING})
ALERT_KINDS = {ALERT_STUCK: "stuck", ALERT_RECOVERED: "recovered", ALERT_REJECTED: "rejected",
               ALERT_ORPHAN: "orphan", ALERT_RESOLVED: "resolved", ALERT_CLOSED: "closed",
               ALERT_REVIEW_OVERDUE: "review_overdue", ALERT_REVIEW_DENIED: "review_denied",
               ALERT_FORM_AWAITING: "form_awaiting", ALERT_FORM_ENDED: "form_rejected",  # or form_voided
               ALERT_FORM_EXPIRING: "form_expiring", ALERT_RED_MISSING: "red_missing"}

AlertKind = Literal["stuck", "recovered", "rejected", "orphan", "resolved", "closed", "reminder", "review_overdue",
                    "review_denied", "form_awaiting", "form_rejected", "form_voided", "form_expiring",
                    "red_missing"]


class AlertRaised(Event):
    """An alert for the tenant, one per invoice per transition; checked before the notifier stores anything.

    The envelope id is derived from (invoice, transition, case), so a re-sent alert carries the same id. An orphan
    has no invoice id (subject and key "orphan:<seller tax id>:<number>") and is the only alert that carries
    `receipt_no` (the store's receipt for a number never issued here). `kind` "reminder" never travels: the
    notifier makes its reminders from a stored stuck alert.
    """

    alert_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    kind: AlertKind
    tenant_id: uuid.UUID
    seller_tax_id: TaxId
    invoice_id: uuid.UUID | None = None
    number: Number
    issue_date: str | None = Field(default=None, max_length=10)
    total: str | None = Field(default=None, max_length=24)
    buyer_name: Annotated[Text, StringConstraints(max_length=200)] | None = None
    buyer_tax_id: str | None = Field(default=None, max_length=18)
    receipt_no: str | None = Field(default=None, max_length=64)  # orphans only
    reason: Annotated[Text, StringConstraints(min_length=1, max_length=2000)]
    next_action: Annotated[Text, StringConstraints(max_length=1000)] | None = None
    case_no: Annotated[str, StringConstraints(max_length=32)] | None = None
    # Red-letter forms: the form the alert is about, and whether the tenant alerted is its seller or its buyer
    # (a buyer cannot open the seller's invoice: its links name the form, GET /v1/red-letter-forms/{form_id}).
    form_id: uuid.UUID | None = None
    role: Literal["seller", "buyer"] | None = None
    at: datetime

    def check_envelope(self, *, subject: str, tenant: str) -> None:
        if str(self.tenant_id) != tenant:
            raise PayloadError("an alert's data.tenant_id must equal the envelope's tenant")

    def public(self) -> dict[str, Any]:
        """What the tenant may see of it (webhooks, e-mails, the notification history)."""
        return self.model_dump(mode="json", exclude={"tenant_id"})


class StuckAlertRaised(AlertRaised):
    TYPE: ClassVar[str] = ALERT_STUCK


class RecoveredAlertRaised(AlertRaised):
    TYPE: ClassVar[str] = ALERT_RECOVERED


class RejectedAlertRaised(AlertRaised):
    TYPE: ClassVar[str] = ALERT_REJECTED


class OrphanAlertRaised(AlertRaised):
    TYPE: ClassVar[str] = ALERT_ORPHAN


class CaseResolvedAlertRaised(AlertRaised):
    """A case the seller opened (the invoice was never stuck) is resolved: the invoice is visible now."""

    TYPE: ClassVar[str] = ALERT_RESOLVED


class CaseClosedAlertRaised(AlertRaised):
    """An open case ended without the invoice appearing: the seller voided it."""

    TYPE: ClassVar[str] = ALERT_CLOSED


class ReviewOverdueAlertRaised(AlertRaised):
    """An invoice is held for cross-region review longer than FAPIAO_REVIEW_SLA (once per review)."""

    TYPE: ClassVar[str] = ALERT_REVIEW_OVERDUE


class ReviewDeniedAlertRaised(AlertRaised):
    """The bureau denied a held invoice: it does not count."""

    TYPE: ClassVar[str] = ALERT_REVIEW_DENIED


class FormAwaitingAlertRaised(AlertRaised):
    """A red-letter form waits for this tenant's confirmation (it is the buyer). Raised by the issuer, once per
    form; `invoice_id` is the seller's invoice, `number` its number."""

    TYPE: ClassVar[str] = ALERT_FORM_AWAITING


class FormEndedAlertRaised(AlertRaised):
    """A red-letter form of this tenant's was rejected by the buyer (kind form_rejected) or went void unconfirmed
    (form_voided): nothing was reversed. Raised by the issuer, once per form."""

    TYPE: ClassVar[str] = ALERT_FORM_ENDED


class FormExpiringAlertRaised(AlertRaised):
    """A pending red-letter form is void within FAPIAO_FORM_EXPIRY_WARNING unless confirmed: to the buyer tenant
    that must decide it, or else to the seller (to chase the buyer). Raised by the issuer, once per form."""

    TYPE: ClassVar[str] = ALERT_FORM_EXPIRING


class RedInvoiceMissingAlertRaised(AlertRaised):
    """A red-letter form the authority confirmed has no red invoice in the expected ledger past
    FAPIAO_RED_INVOICE_GRACE: the issuer never recorded it (or nobody holds it). Raised by the reconciler, once per
    form and case; `invoice_id` and `number` are the blue invoice's, `case_no` the case that follows it."""

    TYPE: ClassVar[str] = ALERT_RED_MISSING


# --- invoice.notifications.v1 (notifier -> issuer's timeline) ------------------------------------

NOTIFICATION_SENT = "cn.fapiao.notification.sent.v1"
NOTIFICATION_FAILED = "cn.fapiao.notification.failed.v1"
NOTIFICATION_TYPES = frozenset({NOTIFICATION_SENT, NOTIFICATION_FAILED})


class _Notice(Event):
    """A delivery about this invoice ended (a digest names many invoices: one event each, keyed by invoice id).
    `target`: the webhook host or the masked addresses; `error`: the last error (exhausted only)."""

    invoice_id: uuid.UUID
    delivery_id: uuid.UUID | None = None
    channel: Literal["webhook", "email"]
    alert_kind: str | None = None
    alert_id: str | None = None
    case_no: str | None = None
    digest: bool = False
    alert_count: int | None = None
    attempts: int = Field(ge=0)
    at: datetime
    target: str | None = None
    error: str | None = None


class NotificationSent(_Notice):
    TYPE: ClassVar[str] = NOTIFICATION_SENT


class NotificationFailed(_Notice):
    TYPE: ClassVar[str] = NOTIFICATION_FAILED


# --- the registry ---------------------------------------------------------------------------------

_MODELS: tuple[type[Event], ...] = (
    InvoiceIssued, InvoiceVoided, InvoiceSubmitted, InvoiceSubmissionFailed, InvoiceRejected, ResyncRequested,
    InvoiceConfirmed, InvoiceAwaitingVisibility, InvoiceGapFound, InvoiceStuck, CaseUpdated, StuckAlertRaised,
    RecoveredAlertRaised, RejectedAlertRaised, OrphanAlertRaised, CaseResolvedAlertRaised, CaseClosedAlertRaised,
    NotificationSent, NotificationFailed, RedLetterRequested, RedLetterDecisionRequested, RedLetterFormUpdated,
    InvoiceReviewUpdated, ReviewOverdueAlertRaised, ReviewDeniedAlertRaised, FormAwaitingAlertRaised,
    FormEndedAlertRaised, FormExpiringAlertRaised, RedInvoiceMissingAlertRaised,
)
EVENT_TYPES: dict[str, type[Event]] = {model.TYPE: model for model in _MODELS}
"""Every event type in the system -> its payload model."""


def model_for(event_type: str) -> type[Event] | None:
    return EVENT_TYPES.get(event_type)


def parse_payload(model: type[Event], data: dict[str, Any], *, subject: str, tenant: str) -> Event:
    """`data` as `model`, checked against its envelope; PayloadError naming the first field that fails."""
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PayloadError(f"{model.TYPE} payload: data.{where}: {first.get('msg')}{more}") from None
    event.check_envelope(subject=subject, tenant=tenant)
    return event
