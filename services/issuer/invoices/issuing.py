"""Issuing invoices: one, or a batch, each stored with its `issued` event in one transaction (the outbox relay
then brings the event to Kafka and marks the invoice published).

The natural key (seller tax id, number) decides: a new number is created; the same number with the same
content is the same invoice (nothing written); with other content the number is taken.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.issuer import models as m
from services.issuer.idempotency import KeyReused, Once, Replayed, at_most_once
from services.issuer.invoices.outcomes import (
    BatchIssued,
    Created,
    Existing,
    Invalid,
    IssueOutcome,
    NumberTaken,
    TooLarge,
)
from services.issuer.invoices.reading import view
from services.issuer.lifecycle import Status
from services.issuer.rules import canonical, check_invoice, content_hash
from services.issuer.schemas import InvoiceCreate
from services.issuer.tenants import Tenant
from shared.db import columns_except
from shared.envelope import encode, new_envelope
from shared.errors import FieldError, field_errors
from shared.events import INVOICE_ISSUED, ISSUER_SOURCE, InvoiceIssued
from shared.outbox import PublishedRow, notify_outbox

__all__ = ["Issuing", "create_invoices", "issue_batch", "issue_invoice", "mark_published", "validate_item"]

_invoice_adapter = TypeAdapter(InvoiceCreate)


@dataclass(frozen=True)
class Issuing:
    """What issuing needs of the deployment: the calendar's today, how old an issue date may be, where the
    issued events go, and how many invoices one request may carry."""

    today: date
    window_days: int
    topic: str
    batch_max: int


def validate_item(raw: Any, *, tenant: Tenant, today: date, window_days: int,
                  prefix: str = "") -> InvoiceCreate | list[FieldError]:
    """Structure (schemas) then rules; every problem with its path."""
    if isinstance(raw, InvoiceCreate):
        inv = raw
    else:
        try:
            inv = _invoice_adapter.validate_python(raw)
        except ValidationError as exc:
            return field_errors(exc.errors(), prefix=prefix)
    errors = check_invoice(inv, seller_tax_id=tenant.tax_id, today=today, window_days=window_days)
    if errors:
        return [FieldError(prefix + e.path, e.reason) for e in errors]
    return inv


async def issue_invoice(*, session: AsyncSession, tenant: Tenant, invoice: InvoiceCreate, issuing: Issuing,
                        once: Once | None = None) -> IssueOutcome | Replayed | KeyReused:
    """One invoice. An invalid one is refused before its Idempotency-Key is claimed: nothing is kept for it."""
    checked = validate_item(invoice, tenant=tenant, today=issuing.today, window_days=issuing.window_days)
    if isinstance(checked, list):
        return Invalid(tuple(checked))

    async def run() -> IssueOutcome:
        [outcome] = await create_invoices(session=session, tenant=tenant, items=[checked], source="api",
                                          topic=issuing.topic)
        return outcome

    return await at_most_once(session=session, tenant_id=tenant.id, once=once, run=run)


async def issue_batch(*, session: AsyncSession, tenant: Tenant, invoices: Sequence[Any], issuing: Issuing,
                      once: Once | None = None) -> BatchIssued | TooLarge | Replayed | KeyReused:
    """Up to `batch_max` invoices in one transaction, an outcome per item; a bad item sinks no other."""
    if len(invoices) > issuing.batch_max:
        return TooLarge(f"a batch holds at most {issuing.batch_max} invoices, got {len(invoices)}")
    items = [validate_item(raw, tenant=tenant, today=issuing.today, window_days=issuing.window_days)
             for raw in invoices]

    async def run() -> BatchIssued:
        return BatchIssued(tuple(await create_invoices(session=session, tenant=tenant, items=items, source="batch",
                                                       topic=issuing.topic)))

    return await at_most_once(session=session, tenant_id=tenant.id, once=once, run=run)


async def create_invoices(*, session: AsyncSession, tenant: Tenant,
                          items: Sequence[InvoiceCreate | list[FieldError]], source: str,
                          topic: str) -> list[IssueOutcome]:
    """Store the valid items with their `issued` events in the caller's transaction, in bulk; an outcome per
    item, in order. A number repeated in the request is decided by its first occurrence."""
    first: dict[str, InvoiceCreate] = {}
    for item in items:
        if isinstance(item, InvoiceCreate):
            first.setdefault(item.number, item)
    docs = {number: canonical(inv) for number, inv in first.items()}
    digests = {number: content_hash(doc) for number, doc in docs.items()}
    created = await _insert(session, tenant, first, docs, digests, source)
    missing = [n for n in first if n not in created]
    existing = {r.number: r for r in (await session.execute(
        select(m.invoices).where(m.invoices.c.seller_tax_id == tenant.tax_id, m.invoices.c.number.in_(missing))
    )).all()} if missing else {}
    decided = {number: _decide(number, created.get(number), existing.get(number), digests[number])
               for number in first}
    outcomes: list[IssueOutcome] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, list):
            outcomes.append(Invalid(tuple(item)))
        elif item.number not in seen:
            seen.add(item.number)
            outcomes.append(decided[item.number])
        else:
            outcomes.append(_repeated(item, decided[item.number], digests[item.number]))
    if created:
        await _record_issued(session, tenant, list(created.values()), docs, topic)
    return outcomes


def _decide(number: str, created: Any, existing: Any, digest: str) -> IssueOutcome:
    if created is not None:
        return Created(view(created))
    if existing.content_hash == digest:
        return Existing(view(existing), "already issued with identical content; nothing changed")
    return NumberTaken(number, f"invoice number {number} is already used with different content", existing.id)


def _repeated(item: InvoiceCreate, first: IssueOutcome, digest: str) -> IssueOutcome:
    """A later occurrence of a number in the same request: the same invoice again, or a clash."""
    if content_hash(canonical(item)) == digest and isinstance(first, Created | Existing):
        return Existing(first.invoice, "duplicate of an earlier item")
    return NumberTaken(item.number, f"invoice number {item.number} is used twice in this request")


async def _insert(session: AsyncSession, tenant: Tenant, invoices: dict[str, InvoiceCreate],
                  docs: dict[str, dict[str, Any]], digests: dict[str, str], source: str) -> dict[str, Any]:
    """The rows inserted, by number; a number the seller already used is left as it is."""
    if not invoices:
        return {}
    now = datetime.now(UTC)
    rows = [{
        "id": uuid.uuid4(), "tenant_id": tenant.id, "seller_tax_id": tenant.tax_id, "number": number,
        "kind": inv.kind, "issue_date": inv.issue_date, "buyer_tax_id": inv.buyer.tax_id or None,
        "buyer_name": inv.buyer.name, "total_amount": Decimal(inv.total_amount),
        "total_tax": Decimal(inv.total_tax), "total": Decimal(inv.total), "currency": inv.currency,
        "content": docs[number], "content_hash": digests[number], "source": source,
        "status": Status.ACCEPTED.value, "event_seq": 1, "accepted_at": now, "updated_at": now, "status_since": now,
    } for number, inv in invoices.items()]
    inserted = (await session.execute(
        pg_insert(m.invoices).on_conflict_do_nothing(index_elements=["seller_tax_id", "number"])
        .returning(*_NOT_CONTENT), rows,
    )).all()
    return {r.number: r for r in inserted}


_NOT_CONTENT = columns_except(m.invoices, "content")  # the caller holds the document


async def _record_issued(session: AsyncSession, tenant: Tenant, rows: list[Any], docs: dict[str, dict[str, Any]],
                         topic: str) -> None:
    timeline_rows, outbox_rows = [], []
    for r in rows:
        event = InvoiceIssued(invoice_id=r.id, tenant_id=tenant.id, seller_tax_id=r.seller_tax_id, number=r.number,
                              content_hash=r.content_hash, accepted_at=r.accepted_at, invoice=docs[r.number])
        envelope = new_envelope(source=ISSUER_SOURCE, event=event, subject=str(r.id), tenant=str(tenant.id),
                                sequence=1)
        outbox_rows.append({"topic": topic, "key": str(r.id), "event_id": envelope.id, "event_type": INVOICE_ISSUED,
                            "payload": encode(envelope)})
        timeline_rows.append({"invoice_id": r.id, "kind": "accepted", "at": r.accepted_at,
                              "message": f"Accepted via {r.source}; event {envelope.id} queued for {topic}",
                              "detail": {"event_id": envelope.id, "content_hash": r.content_hash}})
    await session.execute(m.timeline.insert(), timeline_rows)
    await session.execute(m.outbox.insert(), outbox_rows)
    await notify_outbox(session, m.outbox)


async def mark_published(conn: AsyncConnection, rows: Sequence[PublishedRow]) -> None:
    """Outbox relay callback, in the relay's transaction: accepted -> published, with where it landed."""
    issued = [r for r in rows if r.event_type == INVOICE_ISSUED]
    if not issued:
        return
    ids = [uuid.UUID(r.key) for r in issued]
    now = datetime.now(UTC)
    moved = {row.id for row in (await conn.execute(
        update(m.invoices).where(m.invoices.c.id.in_(ids), m.invoices.c.status == Status.ACCEPTED.value)
        .values(status=Status.PUBLISHED.value, updated_at=now, status_since=now).returning(m.invoices.c.id)
    )).all()}
    entries = [
        {"invoice_id": uuid.UUID(r.key), "kind": "published", "at": now,
         "message": f"Published to {r.topic} (partition {r.partition}, offset {r.offset})",
         "detail": {"topic": r.topic, "partition": r.partition, "offset": r.offset}}
        for r in issued if uuid.UUID(r.key) in moved
    ]
    if entries:
        await conn.execute(m.timeline.insert(), entries)
