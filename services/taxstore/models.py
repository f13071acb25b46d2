"""The tax store's tables, all in schema `taxstore`. `content` is what the authority holds, which the
corrupt fault may make differ from what was submitted: both hashes are kept so the difference can be
seen and an identical resubmission can repair it."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Numeric,
    Sequence,
    String,
    Table,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.audit import audit_table
from shared.db import make_metadata

SCHEMA = "taxstore"
metadata = make_metadata(SCHEMA)

# Receipt numbers: one value per accepted submission, dropped ones included (they get a real-looking receipt).
receipt_seq = Sequence("receipt_seq", metadata=metadata)
# Red-letter confirmation forms, and the numbers the authority gives the red invoices it issues for them.
form_seq = Sequence("form_seq", metadata=metadata)
red_number_seq = Sequence("red_number_seq", metadata=metadata)

invoices = Table(
    "invoices", metadata,
    Column("seller_tax_id", String(18), primary_key=True),
    Column("number", String(20), primary_key=True),
    Column("receipt_no", String(32), nullable=False, unique=True),
    Column("kind", String(8), nullable=False),  # blue | red (red when red_letter_of is set)
    Column("invoice_type", String(16), nullable=False),  # the document's kind: special | ordinary
    Column("issue_date", Date, nullable=False),
    Column("buyer_tax_id", String(18)),
    Column("total", Numeric(16, 2), nullable=False),  # of the stored content
    Column("content", JSONB, nullable=False),  # as stored, possibly corrupted
    Column("content_hash", String(64), nullable=False),  # of `content`
    Column("submitted_hash", String(64), nullable=False),  # of the document as the client sent it
    Column("red_letter_of", String(20)),
    Column("stored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("visible_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Cross-region review (review.py): null when the invoice was never held. `review_status` is the word
    # written last (under_review, approved, denied); while it is under_review past `review_due_at`, the
    # bureau's automatic outcome `review_auto` holds (the store has no background work: reads work it out).
    Column("review_status", String(16)),
    Column("review_due_at", DateTime(timezone=True)),
    Column("review_auto", String(16)),
    Column("reviewed_at", DateTime(timezone=True)),
    Column("review_note", String(500)),
    Index("ix_invoices_seller_tax_id_issue_date_number", "seller_tax_id", "issue_date", "number"),
    # Invoice numbers are unique nationwide: a red letter names its original by number alone.
    Index("ix_invoices_number", "number"),
)
Index("ix_invoices_red_letter_of", invoices.c.red_letter_of, postgresql_where=invoices.c.red_letter_of.is_not(None))

Index("ix_invoices_review_status", invoices.c.review_status,
      postgresql_where=invoices.c.review_status.is_not(None))

# 红字发票信息确认单: a request to reverse (part of) a blue invoice. `status` is the word written last
# (pending, confirmed, rejected); a pending form past `expires_at` is void (read time works it out, as for
# reviews). A confirmed form has its red invoice issued in the same transaction (`red_number`).
red_letter_forms = Table(
    "red_letter_forms", metadata,
    Column("form_no", String(24), primary_key=True),
    Column("seller_tax_id", String(18), nullable=False),  # of the blue invoice
    Column("blue_number", String(20), nullable=False),
    Column("buyer_tax_id", String(18)),
    Column("requested_by", String(18), nullable=False),  # the seller's or the buyer's tax id
    Column("requested_role", String(8), nullable=False),  # seller | buyer
    Column("request_id", String(64), nullable=False),  # the requester's idempotency key
    Column("request_hash", String(64), nullable=False),  # of the request as sent
    Column("reason_code", String(2), nullable=False),
    Column("scope", String(8), nullable=False),  # full | partial
    Column("lines", JSONB, nullable=False),  # [{line, quantity, unit_price, amount, tax_amount, ...}] negative
    Column("template", JSONB, nullable=False),  # the red invoice's document but number, date and remarks
    Column("total_amount", Numeric(16, 2), nullable=False),
    Column("total_tax", Numeric(16, 2), nullable=False),
    Column("total", Numeric(16, 2), nullable=False),
    Column("confirmation_required", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),
    Column("decided_at", DateTime(timezone=True)),
    Column("decided_by", String(18)),
    Column("note", String(500)),
    Column("red_number", String(20)),
    Column("red_receipt_no", String(32)),
    Column("red_content", JSONB),
    Column("red_issued_at", DateTime(timezone=True)),
    UniqueConstraint("requested_by", "request_id"),
    Index("ix_red_letter_forms_seller_tax_id_blue_number", "seller_tax_id", "blue_number"),
    Index("ix_red_letter_forms_buyer_tax_id", "buyer_tax_id"),
)

sellers = Table(
    "sellers", metadata,
    Column("tax_id", String(18), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

audit_log = audit_table(metadata)  # what operators changed through this service (shared.audit)
