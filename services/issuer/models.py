"""The issuer's tables, all in schema `issuer`."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared.audit import audit_table
from shared.db import make_metadata, outbox_table, processed_events_table

SCHEMA = "issuer"
metadata = make_metadata(SCHEMA)

tenants = Table(
    "tenants", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("tax_id", String(18), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), ForeignKey(tenants.c.id), nullable=False, index=True),
    Column("prefix", String(16), nullable=False),  # shown in listings so a key can be recognised
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 hex; the key itself is never stored
    Column("label", String(100), nullable=False, server_default="default"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),  # none: until revoked; a rotated key keeps working until then
    Column("last_used_at", DateTime(timezone=True)),  # to the minute (written at most once a minute per key)
)

invoices = Table(
    "invoices", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("seq", BigInteger, Identity(always=True), nullable=False, unique=True),  # cursor order
    Column("tenant_id", UUID(as_uuid=True), ForeignKey(tenants.c.id), nullable=False),
    Column("seller_tax_id", String(18), nullable=False),
    Column("number", String(20), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("issue_date", Date, nullable=False),
    Column("buyer_tax_id", String(18)),
    Column("buyer_name", String(200), nullable=False),
    Column("total_amount", Numeric(16, 2), nullable=False),
    Column("total_tax", Numeric(16, 2), nullable=False),
    Column("total", Numeric(16, 2), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("content", JSONB, nullable=False),  # the canonical invoice as accepted
    Column("content_hash", String(64), nullable=False),
    Column("source", String(16), nullable=False),  # api | batch | import
    Column("status", String(20), nullable=False),
    Column("reason", Text),
    Column("next_action", Text),
    Column("next_action_at", DateTime(timezone=True)),
    Column("case_no", String(32)),
    Column("receipt_no", String(64)),
    Column("event_seq", Integer, nullable=False, server_default="1"),  # last event sequence emitted
    Column("sync_seq", Integer, nullable=False, server_default="0"),  # last sync-result sequence applied
    Column("recon", JSONB),  # the reconciler's latest findings (its events' data, merged); rendered by explain.py
    Column("recon_seq", Integer, nullable=False, server_default="0"),  # last reconciliation sequence applied
    Column("reason_source", String(16)),  # sync | reconciler: whose findings the reason above explains
    # The registers the status is derived from (lifecycle.derive): the sync service's last result with its
    # own words, and the reconciler's last finding with the sync sequence it had seen.
    Column("sync_status", String(20)),
    Column("sync_note", JSONB),  # {reason, next_action, next_action_at} of the last sync result
    Column("finding_status", String(20)),
    Column("finding_sync_seq", Integer, nullable=False, server_default="0"),
    Column("accepted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # When the invoice entered its current status: the age of every stage it can wait in (ops/waiting.py).
    Column("status_since", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("red_letter_of", String(20)),  # a red invoice (issued by the authority for a form): the blue number
    UniqueConstraint("seller_tax_id", "number"),
    Index("ix_invoices_tenant_seq", "tenant_id", "seq"),
    Index("ix_invoices_tenant_status_seq", "tenant_id", "status", "seq"),
    Index("ix_invoices_tenant_buyer_seq", "tenant_id", "buyer_tax_id", "seq"),
    Index("ix_invoices_tenant_issue_date", "tenant_id", "issue_date"),
    # What the status self-check pages through: the invoices still waiting for something.
    Index("ix_invoices_unsettled", "id", postgresql_where=text(
        "status IN ('accepted', 'published', 'submitted', 'retrying', 'stuck')")),
    # The rejected ones, which wait for the seller (ops/waiting.py).
    Index("ix_invoices_rejected", "status_since", postgresql_where=text("status = 'rejected'")),
)

# Red-letter confirmation forms (红字发票信息确认单) asked for here, as the store last reported them (services/issuer/
# invoices/redletter.py). The seller's tenant owns the row; when the buyer is a tenant too, it may read the form and
# decide it (`buyer_tenant_id`, the row-level policy admits both).
red_letter_forms = Table(
    "red_letter_forms", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),  # also the store's request_id
    Column("seq", BigInteger, Identity(always=True), nullable=False, unique=True),  # cursor order
    Column("tenant_id", UUID(as_uuid=True), ForeignKey(tenants.c.id), nullable=False),
    Column("buyer_tenant_id", UUID(as_uuid=True), ForeignKey(tenants.c.id)),
    Column("invoice_id", UUID(as_uuid=True), ForeignKey(invoices.c.id), nullable=False),  # the blue invoice
    Column("seller_tax_id", String(18), nullable=False),
    Column("number", String(20), nullable=False),  # the blue invoice's
    Column("buyer_tax_id", String(18)),
    Column("reason_code", String(2), nullable=False),
    Column("scope", String(8), nullable=False),  # full | partial
    Column("lines", JSONB),  # the parts asked for (None: all that is left)
    Column("note", Text),
    Column("total", Numeric(16, 2), nullable=False),  # negative: what it reverses (as asked; the store's once known)
    # requested (on its way to the store) | pending | confirmed | rejected | voided | failed (refused by the store)
    Column("status", String(12), nullable=False),
    Column("form_no", String(20), unique=True),
    Column("expires_at", DateTime(timezone=True)),
    Column("store", JSONB),  # the store's last view of the form
    Column("error", Text),
    Column("red_invoice_id", UUID(as_uuid=True), ForeignKey(invoices.c.id)),
    Column("decision", JSONB),  # the buyer tenant's decision on its way: {id, confirm, at}
    Column("sync_seq", Integer, nullable=False, server_default="0"),  # last form-updated sequence applied
    Column("expiry_alerted_at", DateTime(timezone=True)),  # the "expires in N hours" alert went out
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_red_letter_forms_invoice_id", "invoice_id"),
    Index("ix_red_letter_forms_tenant_seq", "tenant_id", "seq"),
    Index("ix_red_letter_forms_buyer_tenant_seq", "buyer_tenant_id", "seq"),
)

timeline = Table(
    "invoice_timeline", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("invoice_id", UUID(as_uuid=True), ForeignKey(invoices.c.id), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("kind", String(40), nullable=False),
    Column("message", Text, nullable=False),
    Column("detail", JSONB),
    Index("ix_invoice_timeline_invoice_id_id", "invoice_id", "id"),
)

idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("tenant_id", UUID(as_uuid=True), ForeignKey(tenants.c.id), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("endpoint", String(100), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", SmallInteger),
    Column("response", Text),  # the exact bytes sent, replayed verbatim
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

outbox = outbox_table(metadata)
Index("ix_outbox_unpublished", outbox.c.id, postgresql_where=outbox.c.published_at.is_(None))
processed_events = processed_events_table(metadata)

# The dashboard's readings (ops/dashboard.py), one row per sample across all issuer replicas, kept for
# FAPIAO_OPS_HISTORY: the charts survive a restart and every replica shows the same history.
ops_samples = Table(
    "ops_samples", metadata,
    Column("t", DateTime(timezone=True), primary_key=True),
    Column("point", JSONB, nullable=False),
)

audit_log = audit_table(metadata)  # what operators changed through this service (shared.audit)
