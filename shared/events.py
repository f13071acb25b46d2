"""Event types (facts, past tense; commands imperative) and their payloads. The type string carries
the version. Every event travels in the envelope of shared.envelope, keyed by invoice id."""

from __future__ import annotations

__all__ = [
    "INVOICE_ISSUED", "INVOICE_REJECTED", "INVOICE_SUBMISSION_FAILED", "INVOICE_SUBMITTED", "INVOICE_VOIDED",
    "ISSUER_SOURCE", "RESYNC_INVOICE", "SYNC_RESULT_TYPES", "SYNC_SOURCE",
]

ISSUER_SOURCE = "fapiao/issuer"
SYNC_SOURCE = "fapiao/sync"

# --- invoice.events.v1 (issuer) ---------------------------------------------------------------

INVOICE_ISSUED = "cn.fapiao.invoice.issued.v1"
"""data: {invoice_id, tenant_id, seller_tax_id, number, content_hash, accepted_at, invoice: <canonical invoice>}"""

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
