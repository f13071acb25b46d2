"""The notifier's tables, all in schema `notifier`.

An alert is taken in once (`alerts`, keyed by its id, which the reconciler derives from the invoice and the
transition), becomes one `items` row per subscription that wants it, and items are grouped into
`deliveries`: one message to one subscription, single or digest. A delivery's schedule lives here, not in
memory: `next_attempt_at` (partial index over pending ones) and every attempt in `attempts`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from shared.audit import audit_table
from shared.db import make_metadata, outbox_table

SCHEMA = "notifier"
metadata = make_metadata(SCHEMA)

subscriptions = Table(
    "subscriptions", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("channel", String(8), nullable=False),  # webhook | email
    Column("url", Text),  # webhook
    Column("emails", ARRAY(String(254))),  # email
    Column("kinds", ARRAY(String(16)), nullable=False),  # alert kinds wanted: stuck, recovered, ...
    Column("description", String(200)),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Index("ix_subscriptions_tenant_id", "tenant_id", postgresql_where=text("deleted_at IS NULL")),
)

signing_secrets = Table(
    "signing_secrets", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("subscription_id", UUID(as_uuid=True), ForeignKey(subscriptions.c.id), nullable=False),
    Column("sealed", LargeBinary, nullable=False),  # encrypted (signing.SecretBox), never in clear
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),  # null: current; set: the old secret during a rotation
    Index("ix_signing_secrets_subscription_id", "subscription_id"),
)

alerts = Table(
    "alerts", metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("event_type", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # stuck | recovered | rejected | orphan | resolved | reminder
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("invoice_id", UUID(as_uuid=True)),  # null for orphans
    Column("case_no", String(32)),
    Column("number", String(20)),
    Column("data", JSONB, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_alerts_tenant_invoice", "tenant_id", "invoice_id"),
)

items = Table(
    "items", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("subscription_id", UUID(as_uuid=True), ForeignKey(subscriptions.c.id), nullable=False),
    Column("alert_id", String(64), ForeignKey(alerts.c.alert_id), nullable=False),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("invoice_id", UUID(as_uuid=True)),
    # pending (waiting for its digest window) | batched (in a delivery) | muted | dropped (subscription gone)
    Column("status", String(8), nullable=False),
    Column("delivery_id", UUID(as_uuid=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("subscription_id", "alert_id"),
    Index("ix_items_pending", "subscription_id", "created_at", postgresql_where=text("status = 'pending'")),
    Index("ix_items_tenant_invoice", "tenant_id", "invoice_id"),
    Index("ix_items_delivery_id", "delivery_id"),
)

deliveries = Table(
    "deliveries", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),  # the webhook-id is "msg_" + its hex
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("subscription_id", UUID(as_uuid=True), ForeignKey(subscriptions.c.id), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("kind", String(8), nullable=False),  # single | digest | ping
    Column("alert_count", Integer, nullable=False),
    Column("status", String(10), nullable=False),  # pending | delivered | exhausted | cancelled
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # Attempts made before the latest manual retry; the budget (FAPIAO_MAX_ATTEMPTS) counts from here.
    Column("retried_from", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True)),  # while pending; also the lease of a claimed one
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Index("ix_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    Index("ix_deliveries_tenant_created_at", "tenant_id", "created_at"),
)

attempts = Table(
    "attempts", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("delivery_id", UUID(as_uuid=True), ForeignKey(deliveries.c.id), nullable=False),
    Column("n", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("outcome", String(10), nullable=False),  # delivered | failed | exhausted
    Column("status_code", Integer),  # HTTP status, or the SMTP reply code
    Column("latency_ms", Integer),
    Column("error", Text),
    Index("ix_attempts_delivery_id_n", "delivery_id", "n"),
)

mutes = Table(
    "mutes", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("invoice_id", UUID(as_uuid=True)),
    Column("case_no", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("lifted_at", DateTime(timezone=True)),
    Column("lifted_by", String(16)),  # tenant | resolution
    Index("ux_mutes_invoice", "tenant_id", "invoice_id", unique=True,
          postgresql_where=text("lifted_at IS NULL AND invoice_id IS NOT NULL")),
    Index("ux_mutes_case", "tenant_id", "case_no", unique=True,
          postgresql_where=text("lifted_at IS NULL AND case_no IS NOT NULL")),
)

# Stuck invoices whose case is still open: the reminder loop's worklist (one row per invoice).
open_cases = Table(
    "open_cases", metadata,
    Column("invoice_id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("case_no", String(32)),
    Column("stuck_alert_id", String(64), nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("remind_at", DateTime(timezone=True), nullable=False),
    Column("reminders", Integer, nullable=False, server_default=text("0")),
    Index("ix_open_cases_remind_at", "remind_at"),
)

outbox = outbox_table(metadata)
Index("ix_outbox_unpublished", outbox.c.id, postgresql_where=outbox.c.published_at.is_(None))

audit_log = audit_table(metadata)  # what operators changed through this service (shared.audit)
