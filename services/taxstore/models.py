"""The tax store's tables, all in schema `taxstore`. `content` is what the authority holds, which the
corrupt fault may make differ from what was submitted: both hashes are kept so the difference can be
seen and an identical resubmission can repair it."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Index,
    Numeric,
    Sequence,
    String,
    Table,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.audit import audit_table
from shared.db import make_metadata

SCHEMA = "taxstore"
metadata = make_metadata(SCHEMA)

# Receipt numbers: one value per accepted submission, dropped ones included (they get a real-looking receipt).
receipt_seq = Sequence("receipt_seq", metadata=metadata)

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
    Index("ix_invoices_seller_tax_id_issue_date_number", "seller_tax_id", "issue_date", "number"),
    # Invoice numbers are unique nationwide: a red letter names its original by number alone.
    Index("ix_invoices_number", "number"),
)
Index("ix_invoices_red_letter_of", invoices.c.red_letter_of, postgresql_where=invoices.c.red_letter_of.is_not(None))

sellers = Table(
    "sellers", metadata,
    Column("tax_id", String(18), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

audit_log = audit_table(metadata)  # what operators changed through this service (shared.audit)
