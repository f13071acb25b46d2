"""Event types (facts, past tense; commands imperative) and their payloads. The type string carries
the version. Every event travels in the envelope of shared.envelope, keyed by invoice id."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ALERT_CLOSED", "ALERT_KINDS", "ALERT_ORPHAN", "ALERT_RECOVERED", "ALERT_REJECTED", "ALERT_RESOLVED",
    "ALERT_STUCK", "ALERT_TYPES", "CASE_UPDATED", "INVOICE_AWAITING_VISIBILITY", "INVOICE_CONFIRMED",
    "INVOICE_GAP_FOUND", "INVOICE_ISSUED", "INVOICE_REJECTED", "INVOICE_STUCK", "INVOICE_SUBMISSION_FAILED",
    "INVOICE_SUBMITTED", "INVOICE_VOIDED", "ISSUER_SOURCE", "Issued", "NOTIFICATION_FAILED", "NOTIFICATION_SENT",
    "NOTIFICATION_TYPES", "NOTIFIER_SOURCE", "RECONCILER_SOURCE", "RECONCILIATION_TYPES", "RESYNC_INVOICE",
    "SYNC_RESULT_TYPES", "SYNC_SOURCE",
]

ISSUER_SOURCE = "fapiao/issuer"
SYNC_SOURCE = "fapiao/sync"
RECONCILER_SOURCE = "fapiao/reconciler"
NOTIFIER_SOURCE = "fapiao/notifier"

# --- invoice.events.v1 (issuer) ---------------------------------------------------------------

INVOICE_ISSUED = "cn.fapiao.invoice.issued.v1"
"""data: {invoice_id, tenant_id, seller_tax_id, number, content_hash, accepted_at, invoice: <canonical invoice>}"""


class Issued(BaseModel):
    """The `issued` payload as its consumers (sync, reconciler) read it; fields added later are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    invoice_id: uuid.UUID
    tenant_id: uuid.UUID
    seller_tax_id: str = Field(min_length=18, max_length=18)
    number: str = Field(pattern=r"^[0-9]{20}$")
    content_hash: str = Field(min_length=64, max_length=64)
    accepted_at: datetime
    invoice: dict[str, Any]

INVOICE_VOIDED = "cn.fapiao.invoice.voided.v1"
"""data: {invoice_id, tenant_id, seller_tax_id, number, reason, voided_at}"""

# --- invoice.sync-results.v1 (sync): one event per attempt ----------------------------------

INVOICE_SUBMITTED = "cn.fapiao.invoice.submitted.v1"
"""data: {invoice_id, seller_tax_id, number, attempt, receipt_no, how: created|duplicate|read_back|repaired,
latency_ms, at}"""

INVOICE_SUBMISSION_FAILED = "cn.fapiao.invoice.submission-failed.v1"
"""data: {invoice_id, seller_tax_id, number, attempt, error, ambiguous, latency_ms, next_attempt_at, at}"""

INVOICE_REJECTED = "cn.fapiao.invoice.rejected.v1"
"""data: {invoice_id, seller_tax_id, number, attempt, reason_code, reason, reasons: [{code, path, message}],
latency_ms, at}"""

SYNC_RESULT_TYPES = frozenset({INVOICE_SUBMITTED, INVOICE_SUBMISSION_FAILED, INVOICE_REJECTED})

# --- invoice.resync-requests.v1 (reconciler) -------------------------------------------------

RESYNC_INVOICE = "cn.fapiao.invoice.resync.v1"
"""command data: {invoice_id, seller_tax_id, number, reason, requested_by}; the invoice content comes from the
sync service's own record of the issued event."""

# --- invoice.reconciliation.v1 (reconciler -> issuer's status view) --------------------------
# `sequence` counts the reconciler's own events per invoice (independent of the sync results' sequence).
# Times are ISO 8601 UTC; durations in seconds. `case_no` is null while no case is open.
# Every event also carries `ledger_state` (pending|awaiting|gap|stuck|confirmed|rejected|voided: the
# reconciler's finding as of this event) and `sync_seq` (the last sync result it had applied), from which the
# issuer derives its status; `restated: true` marks an event re-sent because the status self-check found the
# issuer disagreeing with the ledger.

INVOICE_CONFIRMED = "cn.fapiao.invoice.confirmed.v1"
"""data: {invoice_id, seller_tax_id, number, receipt_no, acked_at, confirmed_at, visible_after_seconds,
how: check|sweep|case, recovered: bool (it had been stuck), case_no, case_status: resolved|null}"""

INVOICE_AWAITING_VISIBILITY = "cn.fapiao.invoice.awaiting-visibility.v1"
"""Acknowledged but not yet visible, still within the SLA (sent once per acknowledgement).
data: {invoice_id, seller_tax_id, number, receipt_no, acked_at, sla_seconds, deadline, next_check_at, checks}"""

INVOICE_GAP_FOUND = "cn.fapiao.invoice.gap-found.v1"
"""A gap and the resync (补录) requested for it.
data: {invoice_id, seller_tax_id, number, kind: missing|mismatch, detail, reopened: bool (it had been confirmed),
acked_at, sla_seconds, resync: n, max_resyncs, resync_at, next_check_at, case_no}"""

INVOICE_STUCK = "cn.fapiao.invoice.stuck.v1"
"""Past FAPIAO_STUCK_AFTER (time or resyncs): a case is open and an alert raised.
data: {invoice_id, seller_tax_id, number, case_no, reason, accepted_at, stuck_at, stuck_after_seconds, resyncs,
max_resyncs, last_error, next_check_at, alert_id}"""

CASE_UPDATED = "cn.fapiao.case.updated.v1"
"""A case was opened, resolved or closed. data: {invoice_id, case_no, status: open|resolved|closed, opened_by:
system|tenant, at, resolution}"""

RECONCILIATION_TYPES = frozenset({INVOICE_CONFIRMED, INVOICE_AWAITING_VISIBILITY, INVOICE_GAP_FOUND, INVOICE_STUCK,
                                  CASE_UPDATED})

# --- invoice.alerts.v1 (reconciler -> notifier) ------------------------------------------------
# One event per invoice per transition. The envelope id is derived from (invoice, transition, case), so a
# re-sent alert carries the same id and the notifier can drop it. Orphans have no invoice id: their subject
# and key are "orphan:<seller tax id>:<number>".
# data: {alert_id, kind: stuck|recovered|rejected|orphan|resolved|closed, tenant_id, seller_tax_id, invoice_id, number,
# issue_date, total, buyer_name, buyer_tax_id, reason, next_action, case_no, at}

ALERT_STUCK = "cn.fapiao.alert.stuck.v1"
ALERT_RECOVERED = "cn.fapiao.alert.recovered.v1"
ALERT_REJECTED = "cn.fapiao.alert.rejected.v1"
ALERT_ORPHAN = "cn.fapiao.alert.orphan.v1"
ALERT_RESOLVED = "cn.fapiao.alert.case-resolved.v1"
"""A case the seller opened (the invoice was never stuck) is resolved: the invoice is visible now."""
ALERT_CLOSED = "cn.fapiao.alert.case-closed.v1"
"""An open case ended without the invoice appearing: the seller voided it."""
ALERT_TYPES = frozenset({ALERT_STUCK, ALERT_RECOVERED, ALERT_REJECTED, ALERT_ORPHAN, ALERT_RESOLVED, ALERT_CLOSED})
ALERT_KINDS = {ALERT_STUCK: "stuck", ALERT_RECOVERED: "recovered", ALERT_REJECTED: "rejected",
               ALERT_ORPHAN: "orphan", ALERT_RESOLVED: "resolved", ALERT_CLOSED: "closed"}

# --- invoice.notifications.v1 (notifier -> issuer's timeline) ------------------------------------
# One event per invoice named in a delivery that ended (a digest names many), keyed by invoice id.
# data: {invoice_id, delivery_id, channel: webhook|email, alert_kind, alert_id, case_no, digest: bool,
# alert_count, attempts, at, target (the webhook host or the masked addresses), error (exhausted only)}

NOTIFICATION_SENT = "cn.fapiao.notification.sent.v1"
NOTIFICATION_FAILED = "cn.fapiao.notification.failed.v1"
NOTIFICATION_TYPES = frozenset({NOTIFICATION_SENT, NOTIFICATION_FAILED})
