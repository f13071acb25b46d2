"""The sync service's tables, all in schema `sync`: what it must submit, what happened, and its outbox."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared.audit import audit_table
from shared.db import make_metadata, outbox_table

SCHEMA = "sync"
metadata = make_metadata(SCHEMA)

submissions = Table(
    "submissions", metadata,
    Column("invoice_id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("seller_tax_id", String(18), nullable=False),
    Column("number", String(20), nullable=False),
    Column("content", JSONB, nullable=False),
    Column("content_hash", String(64), nullable=False),
    # retrying | submitted | rejected | voided | gave_up. A row is written as `retrying` with a lease
    # *before* its first request, so a crash mid-request leaves a due, ambiguous row: read back first.
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("ambiguous", Boolean, nullable=False, server_default=text("false")),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("receipt_no", String(64)),
    Column("reason_code", String(64)),
    Column("issued_seq", Integer, nullable=False),  # sequence of the last issuer event applied
    Column("result_seq", Integer, nullable=False, server_default=text("0")),  # sequence of our last result event
    Column("accepted_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("submitted_at", DateTime(timezone=True)),
    Column("red_letter_of", String(20)),  # a red invoice: the blue original's number, sent with every submission
    Index("ix_submissions_due", "next_attempt_at", postgresql_where=text("status = 'retrying'")),
    Index("ix_submissions_seller_number", "seller_tax_id", "number"),
)

attempts = Table(
    "attempts", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("invoice_id", UUID(as_uuid=True), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("outcome", String(24), nullable=False),  # created | duplicate | repaired | read_back | failed | rejected
    Column("http_status", SmallInteger),
    Column("latency_ms", Integer),
    Column("detail", Text),
    Index("ix_attempts_invoice_id_id", "invoice_id", "id"),
)

# Red-letter form writes to make at the store (create, confirm, reject) and the forms to watch until they are
# decided: one row per write, retried like a submission (every write is idempotent at the store), then kept
# `watching` (polled) while the form is pending, so a decision made elsewhere or the window's end is learned.
form_ops = Table(
    "form_ops", metadata,
    Column("op_id", UUID(as_uuid=True), primary_key=True),  # the form id (create) or the decision id
    Column("form_id", UUID(as_uuid=True), nullable=False),
    Column("invoice_id", UUID(as_uuid=True), nullable=False),  # the blue invoice
    Column("tenant_id", UUID(as_uuid=True), nullable=False),  # the seller's
    Column("op", String(8), nullable=False),  # create | confirm | reject
    Column("party_tax_id", String(18), nullable=False),  # who reads the form (its requester or decider)
    Column("body", JSONB, nullable=False),  # the request as the store takes it
    Column("form_no", String(20)),
    Column("status", String(12), nullable=False),  # retrying | watching | done
    Column("store_status", String(12)),  # the form's status as last reported
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_form_ops_due", "next_attempt_at", postgresql_where=text("status IN ('retrying', 'watching')")),
)

# The per-form sequence of the form-updated events (the issuer skips a late one).
form_seqs = Table(
    "form_seqs", metadata,
    Column("form_id", UUID(as_uuid=True), primary_key=True),
    Column("seq", Integer, nullable=False),
)

outbox = outbox_table(metadata)
Index("ix_outbox_unpublished", outbox.c.id, postgresql_where=outbox.c.published_at.is_(None))

audit_log = audit_table(metadata)  # what operators changed through this service (shared.audit)
