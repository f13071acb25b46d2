"""The reconciler's tables, all in schema `reconciler`.

`ledger` is the expected side: one row per issued invoice, with what the authority acknowledged and what
the reconciler last saw. Only unconfirmed rows carry a `next_check_at`, and the check round reads them
through a partial index on it, so a round costs what is unconfirmed, not what was ever issued. Confirmed
rows are revisited only by the sweep, one (seller, issue date) window at a time.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared.audit import audit_table
from shared.db import make_metadata, outbox_table

SCHEMA = "reconciler"
metadata = make_metadata(SCHEMA)

ledger = Table(
    "ledger", metadata,
    Column("invoice_id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("seller_tax_id", String(18), nullable=False),
    Column("number", String(20), nullable=False),
    # From the issued event. A sync result can arrive first: the row then starts as a placeholder
    # (content_hash null) and is never checked until the issued event fills it in.
    Column("issue_date", Date),
    Column("buyer_tax_id", String(18)),
    Column("buyer_name", String(200)),
    Column("total_amount", Numeric(16, 2)),
    Column("total_tax", Numeric(16, 2)),
    Column("total", Numeric(16, 2)),
    Column("content_hash", String(64)),
    Column("accepted_at", DateTime(timezone=True)),
    # pending (not acknowledged yet) | awaiting (acknowledged, not yet seen) | gap | stuck | confirmed
    # | rejected | voided | review (held for cross-region review) | denied (by the bureau)
    Column("state", String(16), nullable=False),
    Column("gap_kind", String(16)),  # missing | mismatch, while state is gap or stuck
    Column("reopened", Boolean, nullable=False, server_default=text("false")),  # confirmed once, then lost
    Column("since", DateTime(timezone=True)),  # start of the current unconfirmed episode (the stuck clock)
    Column("acked_at", DateTime(timezone=True)),  # the authority's latest acknowledgement (sync result)
    Column("receipt_no", String(64)),
    Column("confirmed_at", DateTime(timezone=True)),
    Column("checks", Integer, nullable=False, server_default=text("0")),  # checks since the last acknowledgement
    Column("announced_ack_at", DateTime(timezone=True)),  # the acknowledgement we said "awaiting" about
    Column("resyncs", Integer, nullable=False, server_default=text("0")),  # in the current episode
    Column("last_resync_at", DateTime(timezone=True)),
    # The store answered "already held" to a resubmission: replication lag, not loss; stop resubmitting.
    Column("held", Boolean, nullable=False, server_default=text("false")),
    Column("duplicate_acks", Integer, nullable=False, server_default=text("0")),
    Column("sync_state", String(16)),  # submitted | failed | gave_up | rejected (the sync service's last word)
    Column("last_error", Text),
    Column("next_check_at", DateTime(timezone=True)),  # null: nothing due (confirmed, rejected, voided)
    Column("check_requested_by", String(16)),  # case | admin | sweep: who asked for the next check
    Column("last_checked_at", DateTime(timezone=True)),
    Column("stuck_at", DateTime(timezone=True)),
    Column("case_no", String(32)),  # the open case, if any
    Column("sync_seq", Integer, nullable=False, server_default=text("0")),  # last sync result applied
    Column("recon_seq", Integer, nullable=False, server_default=text("0")),  # our last event about it
    # Cross-region review (state review | denied): since when it is held, the bureau's expected time, and when
    # it was alerted as held past FAPIAO_REVIEW_SLA.
    Column("review_since", DateTime(timezone=True)),
    Column("review_due_at", DateTime(timezone=True)),
    Column("review_overdue_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("seller_tax_id", "number"),
    Index("ix_ledger_due", "next_check_at", postgresql_where=text("next_check_at IS NOT NULL")),
    Index("ix_ledger_seller_issue_date", "seller_tax_id", "issue_date"),
)

cases = Table(
    "cases", metadata,
    Column("case_no", String(32), primary_key=True),  # CASE-YYYYMMDD-NNNNNN
    Column("invoice_id", UUID(as_uuid=True), nullable=False),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("seller_tax_id", String(18), nullable=False),
    Column("number", String(20), nullable=False),
    Column("status", String(16), nullable=False),  # open | resolved | closed
    Column("opened_by", String(16), nullable=False),  # system | tenant
    Column("note", Text),
    Column("opened_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolution", Text),
    # At most one open case per invoice, even with two reconcilers racing.
    Index("ux_cases_open_invoice", "invoice_id", unique=True, postgresql_where=text("status = 'open'")),
    Index("ix_cases_tenant_opened_at", "tenant_id", "opened_at"),
)

case_counters = Table(
    "case_counters", metadata,
    Column("day", Date, primary_key=True),
    Column("n", Integer, nullable=False),
)

case_history = Table(
    "case_history", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("case_no", String(32), ForeignKey(cases.c.case_no), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("kind", String(24), nullable=False),  # opened | check | resync | stuck | alert | resolved | closed
    Column("message", Text, nullable=False),
    Column("detail", JSONB),
    Index("ix_case_history_case_no_id", "case_no", "id"),
)

# The red-letter forms the authority confirmed (红字发票信息确认单): each one's red invoice is expected in the ledger.
# A form is `expected` from its confirmation, `met` once the red invoice's issued event reached the ledger, and a
# `gap` when it has not within FAPIAO_RED_INVOICE_GRACE (kind red_unrecorded: the authority holds it, the issuer
# never recorded it; red_missing: nobody does), with a case and an alert, until it is met. Only open forms carry a
# `next_check_at`.
red_letter_forms = Table(
    "red_letter_forms", metadata,
    Column("form_id", UUID(as_uuid=True), primary_key=True),  # the issuer's form id
    Column("tenant_id", UUID(as_uuid=True), nullable=False),  # the seller's
    Column("invoice_id", UUID(as_uuid=True), nullable=False),  # the blue invoice
    Column("seller_tax_id", String(18), nullable=False),
    Column("blue_number", String(20), nullable=False),
    Column("form_no", String(32)),
    Column("red_number", String(20)),  # the authority's red invoice, as the confirmed form names it
    Column("total", Numeric(16, 2)),
    Column("confirmed_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),  # expected | met | gap
    Column("gap_kind", String(16)),  # red_unrecorded | red_missing, while a gap
    Column("red_invoice_id", UUID(as_uuid=True)),  # the ledger's red invoice, once met
    Column("checks", Integer, nullable=False, server_default=text("0")),
    Column("next_check_at", DateTime(timezone=True)),
    Column("gap_at", DateTime(timezone=True)),
    Column("met_at", DateTime(timezone=True)),
    Column("case_no", String(32)),
    Column("case_own", Boolean, nullable=False, server_default=text("false")),  # opened for this form
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_red_letter_forms_due", "next_check_at", postgresql_where=text("next_check_at IS NOT NULL")),
    Index("ix_red_letter_forms_red", "seller_tax_id", "red_number"),
)

sweep_windows = Table(
    "sweep_windows", metadata,
    Column("seller_tax_id", String(18), primary_key=True),
    Column("issue_date", Date, primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("next_sweep_at", DateTime(timezone=True), nullable=False),
    Column("last_swept_at", DateTime(timezone=True)),
    Column("last_result", JSONB),
    # Until then the window is swept every FAPIAO_SWEEP_AFTER_CONFIRM, not every FAPIAO_SWEEP_INTERVAL: set
    # FAPIAO_SWEEP_HOT_FOR past each confirmation of one of its invoices.
    Column("hot_until", DateTime(timezone=True)),
    Index("ix_sweep_windows_next_sweep_at", "next_sweep_at"),
)

orphans = Table(
    "orphans", metadata,
    Column("seller_tax_id", String(18), primary_key=True),
    Column("number", String(20), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("issue_date", Date),
    Column("total", Numeric(16, 2)),
    Column("receipt_no", String(64)),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("alerted_at", DateTime(timezone=True)),
)

# Each `fapiao backup restore` of this database: invoices the authority holds from after the backup and the
# restored ledger lacks are explained as lost by the restore (sweeps.py), not as issued outside the system.
restores = Table(
    "restores", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("backup_taken_at", DateTime(timezone=True), nullable=False),
    Column("restored_at", DateTime(timezone=True), nullable=False),
    Column("backup_file", Text, nullable=False),
    Column("manifest", JSONB, nullable=False),
)

outbox = outbox_table(metadata)
Index("ix_outbox_unpublished", outbox.c.id, postgresql_where=outbox.c.published_at.is_(None))

audit_log = audit_table(metadata)  # what operators changed through this service (shared.audit)
