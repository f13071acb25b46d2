"""The issuer's use cases. HTTP and the CLI are two doors into these functions.

Callers own the transaction (`async with transaction(sessions) as session:`); nothing here commits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import CursorResult, and_, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.issuer import models as m
from services.issuer.explain import case_opened_message, describe_event, describe_notification, explain
from services.issuer.explain import parse_time as explain_time
from services.issuer.lifecycle import FINAL, SETTLED, VOIDABLE, Facts, Source, Status, derive, finding_of
from services.issuer.rules import canonical, check_invoice, content_hash
from services.issuer.schemas import InvoiceCreate, InvoiceRead, InvoiceView, TimelineEntry
from shared.db import mark_processed
from shared.envelope import Received, encode, new_envelope
from shared.errors import Conflict, FieldError, NotFound, ValidationFailed
from shared.events import (
    INVOICE_ISSUED,
    INVOICE_VOIDED,
    ISSUER_SOURCE,
    CaseUpdated,
    InvoiceAwaitingVisibility,
    InvoiceConfirmed,
    InvoiceIssued,
    InvoiceRejected,
    InvoiceSubmissionFailed,
    InvoiceSubmitted,
    InvoiceVoided,
    NotificationFailed,
    NotificationSent,
    ReconciliationEvent,
    SyncResult,
)
from shared.http import field_errors
from shared.outbox import PublishedRow, notify_outbox
from shared.uscc import uscc_error

__all__ = [
    "CaseSubject", "ItemResult", "ListFilters", "Schedule", "Tenant", "apply_notifications", "apply_reconciliation",
    "apply_sync_results", "authenticate", "claim_idempotency_key", "create_invoices", "create_tenant",
    "find_invoices", "get_case_subject", "get_invoice", "get_invoice_any_tenant", "get_invoice_view", "list_invoices",
    "mark_published", "ops_figures", "record_case", "request_hash", "store_idempotent_response", "validate_item",
    "void_invoice",
]

API_KEY_PREFIX = "fsk_"
_invoice_adapter = TypeAdapter(InvoiceCreate)


# --- tenants and keys -------------------------------------------------------------------------

@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    name: str
    tax_id: str


def hash_key(api_key: str) -> str:
    # Keys are 256-bit random: a plain SHA-256 is as strong as a slow KDF here and keeps auth cheap.
    return hashlib.sha256(api_key.encode()).hexdigest()


async def create_tenant(*, session: AsyncSession, name: str, tax_id: str, label: str = "default") -> tuple[Tenant, str]:
    """Register a seller enterprise and issue its first API key. The key is returned once, never stored."""
    tax_id = tax_id.strip().upper()
    if (why := uscc_error(tax_id)) is not None:
        raise ValidationFailed([FieldError("tax_id", why)])
    if not name.strip():
        raise ValidationFailed([FieldError("name", "must not be empty")])
    existing = (await session.execute(select(m.tenants.c.id).where(m.tenants.c.tax_id == tax_id))).first()
    if existing is not None:
        raise Conflict(f"a tenant with tax id {tax_id} already exists", extra={"tenant_id": str(existing.id)})
    tenant = Tenant(uuid.uuid4(), name.strip(), tax_id)
    await session.execute(m.tenants.insert().values(id=tenant.id, name=tenant.name, tax_id=tenant.tax_id))
    key = await issue_api_key(session=session, tenant_id=tenant.id, label=label)
    return tenant, key


async def issue_api_key(*, session: AsyncSession, tenant_id: uuid.UUID, label: str = "default") -> str:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    await session.execute(m.api_keys.insert().values(
        id=uuid.uuid4(), tenant_id=tenant_id, prefix=key[:12], key_hash=hash_key(key), label=label))
    return key


async def authenticate(*, session: AsyncSession | AsyncConnection, api_key: str) -> Tenant | None:
    if not api_key.startswith(API_KEY_PREFIX) or len(api_key) > 200:
        return None
    row = (await session.execute(
        select(m.tenants.c.id, m.tenants.c.name, m.tenants.c.tax_id)
        .join(m.api_keys, m.api_keys.c.tenant_id == m.tenants.c.id)
        .where(m.api_keys.c.key_hash == hash_key(api_key), m.api_keys.c.revoked_at.is_(None))
    )).first()
    return Tenant(row.id, row.name, row.tax_id) if row else None


# --- idempotency ------------------------------------------------------------------------------

def request_hash(endpoint: str, body: Any) -> str:
    import orjson

    return hashlib.sha256(endpoint.encode() + b"\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: Any


async def claim_idempotency_key(*, session: AsyncSession, tenant_id: uuid.UUID, key: str, endpoint: str,
                                req_hash: str, wait_seconds: float) -> StoredResponse | None:
    """None: this request owns the key (its response is stored by the same transaction).

    A concurrent request with the same key blocks on the row until the owner commits, then replays
    its response; if the owner takes longer than wait_seconds the repeat gets 409.
    """
    await session.execute(text("select set_config('lock_timeout', :v, true)"), {"v": f"{int(wait_seconds * 1000)}ms"})
    try:
        claimed = (await session.execute(
            pg_insert(m.idempotency_keys)
            .values(tenant_id=tenant_id, key=key, endpoint=endpoint, request_hash=req_hash)
            .on_conflict_do_nothing().returning(m.idempotency_keys.c.key)
        )).first()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":
            raise Conflict("a request with this Idempotency-Key is still being processed; retry shortly") from exc
        raise
    await session.execute(text("select set_config('lock_timeout', '0', true)"))
    if claimed is not None:
        return None
    row = (await session.execute(
        select(m.idempotency_keys).where(m.idempotency_keys.c.tenant_id == tenant_id, m.idempotency_keys.c.key == key)
    )).one()
    if row.endpoint != endpoint or row.request_hash != req_hash:
        raise ValidationFailed(
            [FieldError("Idempotency-Key", "was already used with a different request body")],
            detail="Idempotency-Key reused with a different request",
        )
    return StoredResponse(row.status_code, row.response)


async def store_idempotent_response(*, session: AsyncSession, tenant_id: uuid.UUID, key: str, status_code: int,
                                    body: str) -> None:
    await session.execute(
        update(m.idempotency_keys)
        .where(m.idempotency_keys.c.tenant_id == tenant_id, m.idempotency_keys.c.key == key)
        .values(status_code=status_code, response=body)
    )


# --- issuing ----------------------------------------------------------------------------------

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


@dataclass
class ItemResult:
    index: int
    status: int  # 201 created, 200 already had it (same content), 409 number taken, 422 invalid
    invoice: dict[str, Any] | None = None
    errors: list[FieldError] = field(default_factory=list)
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status}
        if self.invoice is not None:
            out["invoice"] = self.invoice
        if self.errors:
            out["errors"] = [e.as_dict() for e in self.errors]
        if self.detail:
            out["detail"] = self.detail
        return out


async def create_invoices(*, session: AsyncSession, tenant: Tenant,
                          items: Sequence[InvoiceCreate | list[FieldError]], source: str,
                          topic: str) -> list[ItemResult]:
    """Store valid invoices with their `issued` events in the caller's transaction, in bulk.

    The natural key (seller tax id, number) decides: a new number is created (201); the same number
    with the same content is the same invoice (200, nothing written); with other content it is 409.
    """
    results: list[ItemResult | None] = [None] * len(items)
    first_by_number: dict[str, int] = {}
    to_insert: list[dict[str, Any]] = []
    docs: dict[str, tuple[dict[str, Any], str]] = {}
    now = datetime.now(UTC)
    for i, item in enumerate(items):
        if isinstance(item, list):
            results[i] = ItemResult(i, 422, errors=item)
            continue
        doc = canonical(item)
        digest = content_hash(doc)
        if item.number in first_by_number:
            continue  # resolved against its first occurrence below
        first_by_number[item.number] = i
        docs[item.number] = (doc, digest)
        to_insert.append({
            "id": uuid.uuid4(), "tenant_id": tenant.id, "seller_tax_id": tenant.tax_id, "number": item.number,
            "kind": item.kind, "issue_date": item.issue_date, "buyer_tax_id": item.buyer.tax_id or None,
            "buyer_name": item.buyer.name, "total_amount": Decimal(item.total_amount),
            "total_tax": Decimal(item.total_tax), "total": Decimal(item.total), "currency": item.currency,
            "content": doc, "content_hash": digest, "source": source, "status": Status.ACCEPTED.value,
            "event_seq": 1, "accepted_at": now, "updated_at": now,
        })

    created: dict[str, Any] = {}
    if to_insert:
        rows = (await session.execute(
            pg_insert(m.invoices).on_conflict_do_nothing(index_elements=["seller_tax_id", "number"])
            .returning(*m.invoices.c), to_insert,
        )).all()
        created = {r.number: r for r in rows}
    missing = [n for n in first_by_number if n not in created]
    existing: dict[str, Any] = {}
    if missing:
        existing = {r.number: r for r in (await session.execute(
            select(m.invoices).where(m.invoices.c.seller_tax_id == tenant.tax_id, m.invoices.c.number.in_(missing))
        )).all()}

    for number, i in first_by_number.items():
        digest = docs[number][1]
        if number in created:
            results[i] = ItemResult(i, 201, invoice=_view(created[number]))
        elif existing[number].content_hash == digest:
            results[i] = ItemResult(i, 200, invoice=_view(existing[number]),
                                    detail="already issued with identical content; nothing changed")
        else:
            results[i] = ItemResult(i, 409, detail=f"invoice number {number} is already used with different content",
                                    invoice={"id": str(existing[number].id), "number": number})
    for i, item in enumerate(items):
        if results[i] is None:
            assert isinstance(item, InvoiceCreate)
            first = results[first_by_number[item.number]]
            assert first is not None
            if content_hash(canonical(item)) == docs[item.number][1] and first.status in (200, 201):
                results[i] = ItemResult(i, 200, invoice=first.invoice, detail="duplicate of an earlier item")
            else:
                results[i] = ItemResult(i, 409, detail=f"invoice number {item.number} is used twice in this request")

    if created:
        await _record_issued(session, tenant, list(created.values()), docs, topic)
    return [r for r in results if r is not None]


async def _record_issued(session: AsyncSession, tenant: Tenant, rows: list[Any],
                         docs: dict[str, tuple[dict[str, Any], str]], topic: str) -> None:
    timeline_rows, outbox_rows = [], []
    for r in rows:
        event = InvoiceIssued(invoice_id=r.id, tenant_id=tenant.id, seller_tax_id=r.seller_tax_id, number=r.number,
                              content_hash=r.content_hash, accepted_at=r.accepted_at, invoice=docs[r.number][0])
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
        .values(status=Status.PUBLISHED.value, updated_at=now).returning(m.invoices.c.id)
    )).all()}
    entries = [
        {"invoice_id": uuid.UUID(r.key), "kind": "published", "at": now,
         "message": f"Published to {r.topic} (partition {r.partition}, offset {r.offset})",
         "detail": {"topic": r.topic, "partition": r.partition, "offset": r.offset}}
        for r in issued if uuid.UUID(r.key) in moved
    ]
    if entries:
        await conn.execute(m.timeline.insert(), entries)


# --- reading ----------------------------------------------------------------------------------

Schedule = Callable[[Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, Mapping[str, Any]]]]
"""The reconciler's live schedule (next_check_at, resync_at) of these invoices; whatever it could get."""


async def _live(rows: Sequence[Any], schedule: Schedule | None) -> Mapping[uuid.UUID, Mapping[str, Any]]:
    """The live schedule of the rows whose explanation quotes the reconciler's times."""
    ids = [r.id for r in rows if r.reason_source == "reconciler" and Status(r.status) not in SETTLED]
    return await schedule(ids) if schedule is not None and ids else {}


def _view(row: Any, *, now: datetime | None = None, live: Mapping[str, Any] | None = None) -> dict[str, Any]:
    reason, next_action, next_action_at = explain(
        status=row.status, recon=row.recon, reason=row.reason, next_action=row.next_action,
        next_action_at=row.next_action_at, reason_source=row.reason_source, now=now or datetime.now(UTC), live=live)
    return InvoiceView(
        id=row.id, number=row.number, kind=row.kind, issue_date=row.issue_date, seller_tax_id=row.seller_tax_id,
        buyer_tax_id=row.buyer_tax_id, buyer_name=row.buyer_name, total_amount=f"{row.total_amount:.2f}",
        total_tax=f"{row.total_tax:.2f}", total=f"{row.total:.2f}", currency=row.currency, status=row.status,
        reason=reason, next_action=next_action, next_action_at=next_action_at, case_no=row.case_no,
        receipt_no=row.receipt_no,
        accepted_at=row.accepted_at, updated_at=row.updated_at,
    ).model_dump(mode="json")


async def _get_row(session: AsyncSession, tenant: Tenant, invoice_id: str, *, for_update: bool = False,
                   extra: Sequence[Any] = ()) -> Any:
    try:
        iid = uuid.UUID(invoice_id)
    except ValueError:
        raise NotFound(f"no invoice {invoice_id}") from None
    stmt = select(m.invoices, *extra).where(m.invoices.c.id == iid, m.invoices.c.tenant_id == tenant.id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    if row is None:  # another tenant's invoice is indistinguishable from none at all
        raise NotFound(f"no invoice {invoice_id}")
    return row


async def get_invoice(*, session: AsyncSession, tenant: Tenant, invoice_id: str,
                      schedule: Schedule | None = None) -> dict[str, Any]:
    # One statement, so one snapshot: under READ COMMITTED a second query could show a timeline entry
    # (say "stuck") whose status change the row read just before did not include yet.
    t = m.timeline
    entry = func.jsonb_build_object("at", t.c.at, "kind", t.c.kind, "message", t.c.message, "detail", t.c.detail)
    timeline = (select(func.coalesce(func.jsonb_agg(aggregate_order_by(entry, t.c.id)), text("'[]'::jsonb")))
                .where(t.c.invoice_id == m.invoices.c.id).scalar_subquery().label("timeline"))
    row = await _get_row(session, tenant, invoice_id, extra=[timeline])
    live = await _live([row], schedule)
    return InvoiceRead(
        **_view(row, live=live.get(row.id)), invoice=row.content,
        timeline=[TimelineEntry.model_validate(e) for e in row.timeline],
    ).model_dump(mode="json")


async def get_invoice_view(*, session: AsyncSession, tenant: Tenant, invoice_id: str,
                           schedule: Schedule | None = None) -> dict[str, Any]:
    """Where the invoice stands and why, without its content and timeline."""
    row = await _get_row(session, tenant, invoice_id)
    return _view(row, live=(await _live([row], schedule)).get(row.id))


@dataclass(frozen=True)
class ListFilters:
    status: Status | None = None
    number: str | None = None
    buyer_tax_id: str | None = None
    issued_from: date | None = None
    issued_to: date | None = None
    min_total: Decimal | None = None
    max_total: Decimal | None = None
    cursor: str | None = None
    limit: int = 50


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s") or not raw[1:].isdigit() or len(raw) > 20:
            raise ValueError
        return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed([FieldError("cursor", "is not a cursor this API returned")]) from None


async def list_invoices(*, session: AsyncSession, tenant: Tenant, filters: ListFilters,
                        schedule: Schedule | None = None) -> dict[str, Any]:
    """Newest first; `next_cursor` continues where this page ended, stable under concurrent inserts."""
    inv = m.invoices
    conds = [inv.c.tenant_id == tenant.id]
    f = filters
    if f.status is not None:
        conds.append(inv.c.status == f.status.value)
    if f.number:
        conds.append(inv.c.number == f.number)
    if f.buyer_tax_id:
        conds.append(inv.c.buyer_tax_id == f.buyer_tax_id.upper())
    if f.issued_from:
        conds.append(inv.c.issue_date >= f.issued_from)
    if f.issued_to:
        conds.append(inv.c.issue_date <= f.issued_to)
    if f.min_total is not None:
        conds.append(inv.c.total >= f.min_total)
    if f.max_total is not None:
        conds.append(inv.c.total <= f.max_total)
    if f.cursor:
        conds.append(inv.c.seq < decode_cursor(f.cursor))
    rows = (await session.execute(
        select(inv).where(and_(*conds)).order_by(inv.c.seq.desc()).limit(f.limit + 1)
    )).all()
    page = rows[: f.limit]
    live = await _live(page, schedule)
    return {
        "items": [_view(r, live=live.get(r.id)) for r in page],
        "next_cursor": encode_cursor(page[-1].seq) if len(rows) > f.limit else None,
    }


# --- voiding ----------------------------------------------------------------------------------

async def void_invoice(*, session: AsyncSession, tenant: Tenant, invoice_id: str, reason: str,
                       topic: str) -> dict[str, Any]:
    """废弃: discard an invoice the authority has not accepted (rejected or stuck)."""
    row = await _get_row(session, tenant, invoice_id, for_update=True)
    status = Status(row.status)
    if status not in VOIDABLE:
        raise Conflict(
            f"only invoices the authority has not accepted (rejected or stuck) can be voided; this one is '{status}'",
            extra={"invoice_status": status.value},
        )
    now = datetime.now(UTC)
    seq = row.event_seq + 1
    event = InvoiceVoided(invoice_id=row.id, tenant_id=tenant.id, seller_tax_id=row.seller_tax_id, number=row.number,
                          reason=reason, voided_at=now)
    envelope = new_envelope(source=ISSUER_SOURCE, event=event, subject=str(row.id), tenant=str(tenant.id),
                            sequence=seq)
    await session.execute(
        update(m.invoices).where(m.invoices.c.id == row.id)
        .values(status=Status.VOIDED.value, reason=f"Voided by the seller: {reason}", next_action=None,
                next_action_at=None, reason_source=None, event_seq=seq, updated_at=now)
    )
    await session.execute(m.timeline.insert().values(
        invoice_id=row.id, kind="voided", at=now, message=f"Voided by the seller: {reason}",
        detail={"event_id": envelope.id, "previous_status": status.value}))
    await session.execute(m.outbox.insert().values(
        topic=topic, key=str(row.id), event_id=envelope.id,
        event_type=INVOICE_VOIDED, payload=encode(envelope)))
    await notify_outbox(session, m.outbox)
    return await get_invoice(session=session, tenant=tenant, invoice_id=invoice_id)


# --- cases (owned by the reconciler; the issuer records what the tenant asked for) ---------------

@dataclass(frozen=True)
class CaseSubject:
    """What the reconciler needs to open a case for an invoice."""

    invoice_id: uuid.UUID
    seller_tax_id: str
    number: str


async def get_case_subject(*, session: AsyncSession, tenant: Tenant, invoice_id: str) -> CaseSubject:
    """The tenant's invoice a case may be opened for: 404 for anyone else's, 409 once it is voided."""
    row = await _get_row(session, tenant, invoice_id)
    if row.status == Status.VOIDED.value:
        raise Conflict("this invoice was voided; there is nothing left for the tax authority to show",
                       extra={"invoice_status": row.status})
    return CaseSubject(row.id, row.seller_tax_id, row.number)


async def record_case(*, session: AsyncSession, tenant: Tenant, invoice_id: str, case_no: str, opened: bool,
                      note: str | None = None) -> dict[str, Any]:
    """Show the case on the invoice; `opened`: this request opened it, so the timeline says so (once).

    The reconciler announces the same opening on invoice.reconciliation.v1, possibly before this runs;
    whichever comes second finds the entry and adds none.
    """
    row = await _get_row(session, tenant, invoice_id, for_update=True)
    now = datetime.now(UTC)
    if row.case_no != case_no:
        await session.execute(update(m.invoices).where(m.invoices.c.id == row.id).values(case_no=case_no,
                                                                                           updated_at=now))
    if opened and case_no not in await _cases_on_timeline(session, [row.id]):
        detail: dict[str, Any] = {"case_no": case_no, "opened_by": "tenant"}
        if note:
            detail["note"] = note
        await session.execute(m.timeline.insert().values(
            invoice_id=row.id, kind="case_opened", at=now, detail=detail,
            message=case_opened_message(case_no, opened_by="tenant")))
    return _view(await _get_row(session, tenant, invoice_id))


async def _cases_on_timeline(session: AsyncSession, ids: Sequence[uuid.UUID]) -> set[str]:
    rows = (await session.execute(
        select(m.timeline.c.detail["case_no"].astext)
        .where(m.timeline.c.invoice_id.in_(ids), m.timeline.c.kind == "case_opened")
    )).scalars().all()
    return {r for r in rows if r}


async def purge_idempotency_keys(*, session: AsyncSession, older_than_hours: int) -> int:
    result = cast("CursorResult[Any]", await session.execute(
        m.idempotency_keys.delete().where(
            m.idempotency_keys.c.created_at < func.now() - text(f"interval '{int(older_than_hours)} hours'"))
    ))
    return int(result.rowcount or 0)


# --- feedback from the sync service -----------------------------------------------------------

def _when(moment: datetime | None) -> str:
    if moment is None:
        return "?"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _sync_effect(e: SyncResult) -> tuple[Status, str, str | None, datetime | None, str, str]:
    """(target status, reason, next action, next action at, timeline kind, timeline message) of one result."""
    n = e.attempt
    latency = f"{e.latency_ms} ms"
    if isinstance(e, InvoiceSubmitted):
        receipt = e.receipt_no
        how = {"read_back": "found at the authority by read-back", "duplicate": "the authority already had it",
               "repaired": "the authority's damaged copy was restored", "created": "stored"}.get(e.how or "", "")
        reason = f"Acknowledged by the tax authority at {_when(e.at)}, receipt {receipt} (attempt {n}, {how})."
        return (Status.SUBMITTED, reason, "Check visibility at the authority (automatic).", None, "submitted",
                f"Attempt {n}: acknowledged by the tax authority, receipt {receipt} ({how}, {latency})")
    if isinstance(e, InvoiceRejected):
        code, why = e.reason_code or "REJECTED", e.reason or "no reason given"
        return (Status.REJECTED, f"Rejected by the tax authority: [{code}] {why}",
                "Correct the invoice and issue it under a new number, or void this one.", None, "rejected",
                f"Attempt {n}: rejected by the tax authority [{code}] {why}")
    assert isinstance(e, InvoiceSubmissionFailed)
    error = e.error or "unknown error"
    if e.gave_up:
        return (Status.RETRYING, f"Submission gave up after {n} attempts; last error: {error}",
                "The reconciler will check the authority and escalate (automatic).", None, "gave_up",
                f"Attempt {n} failed and was the last: {error}")
    if not e.attempted:
        reason = f"Not sent yet: {error}"
        message = f"Held back: {error}"
    else:
        unknown = " The outcome is unknown; the next attempt reads the authority back first." if e.ambiguous else ""
        reason = f"Submission attempt {n} failed: {error}.{unknown}"
        message = f"Attempt {n} failed after {latency}: {error}"
    nxt = f"Attempt {n + 1} at {_when(e.next_attempt_at)} (automatic)."
    return Status.RETRYING, reason, nxt, e.next_attempt_at, "attempt_failed", message


# --- deriving the status from the latest facts ------------------------------------------------

_STATE_COLUMNS = ("id", "status", "sync_seq", "recon_seq", "sync_status", "sync_note", "finding_status",
                  "finding_sync_seq", "recon", "receipt_no", "case_no", "reason", "next_action", "next_action_at",
                  "reason_source")
_OWN_WORDS = frozenset({Status.ACCEPTED, Status.PUBLISHED, *FINAL})


def _facts(st: dict[str, Any]) -> Facts:
    status = Status(st["status"])
    return Facts(own=status if status in _OWN_WORDS else Status.PUBLISHED,
                 sync=Status(st["sync_status"]) if st["sync_status"] else None, sync_seq=st["sync_seq"],
                 finding=Status(st["finding_status"]) if st["finding_status"] else None,
                 finding_sync_seq=st["finding_sync_seq"])


def _settle(st: dict[str, Any], now: datetime) -> Source:
    """Derive the status from the registers and let the deciding register explain it (in place)."""
    status, source = derive(_facts(st))
    st["status"] = status.value
    if source == "sync":
        note = st["sync_note"] or {}
        st.update(reason=note.get("reason"), next_action=note.get("next_action"),
                  next_action_at=explain_time(note.get("next_action_at")), reason_source="sync")
    elif source == "reconciler":
        # Stored as rendered now for anything reading the row directly; views render it live again.
        reason, nxt, nxt_at = explain(status=status, recon=st["recon"], reason=None, next_action=None,
                                      next_action_at=None, reason_source="reconciler", now=now)
        st.update(reason=reason, next_action=nxt, next_action_at=nxt_at, reason_source="reconciler")
    elif status not in FINAL:  # a final status keeps the words it was given (voided: the seller's reason)
        st.update(reason=None, next_action=None, next_action_at=None, reason_source=None)
    return source


def _no_move_note(st: dict[str, Any], source: Source) -> str:
    """Why a fact just recorded did not decide the status."""
    status = Status(st["status"])
    if source == "own":
        return f"recorded; the invoice is {status.value}, which is final"
    if status is Status.CONFIRMED:
        return "recorded; the status stays 'confirmed': the reconciler saw it visible, and only its next " \
               "finding can reopen it"
    if status is Status.STUCK:
        return "recorded; the status stays 'stuck' until the reconciler sees it visible"
    return f"recorded; the status stays '{status.value}': the reconciler's later finding already took this " \
           "result into account"


async def _lock_state(session: AsyncSession, ids: set[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    inv = m.invoices
    rows = (await session.execute(
        select(*(inv.c[c] for c in _STATE_COLUMNS)).where(inv.c.id.in_(ids)).order_by(inv.c.id).with_for_update()
    )).all()
    return {r.id: dict(r._mapping) for r in rows}


_SAVE_STATE = update(m.invoices).where(m.invoices.c.id == bindparam("b_id")).values(
    {c: bindparam(f"b_{c}") for c in _STATE_COLUMNS if c != "id"} | {"updated_at": bindparam("b_updated_at")})


async def _save_state(session: AsyncSession, states: Sequence[dict[str, Any]], now: datetime) -> None:
    if states:
        await session.execute(_SAVE_STATE, [{f"b_{c}": st[c] for c in _STATE_COLUMNS} | {"b_updated_at": now}
                                            for st in states])


async def apply_sync_results(*, session: AsyncSession, events: Sequence[Received[SyncResult]]) -> int:
    """Record what the sync service learned, in the caller's transaction; returns how many were applied.

    Each invoice's results carry an increasing `sequence`: redelivered or stale ones are skipped, so the
    handler is idempotent without a processed-events table. Every applied result becomes the sync register's
    latest word and a timeline entry; the status is then derived (lifecycle.derive), so a result the
    reconciler's later finding already accounts for — or any result after it confirmed the invoice — is
    history on the timeline and moves nothing.
    """
    ids = {uuid.UUID(r.envelope.subject) for r in events}
    if not ids:
        return 0
    state = await _lock_state(session, ids)
    timeline_rows: list[dict[str, Any]] = []
    changed: dict[uuid.UUID, dict[str, Any]] = {}
    now = datetime.now(UTC)
    for r in sorted(events, key=lambda r: (r.envelope.subject, r.envelope.sequence)):
        e, result = r.envelope, r.event
        iid = uuid.UUID(e.subject)
        st = state.get(iid)
        if st is None or e.sequence <= st["sync_seq"]:
            continue  # not ours, or already applied
        target, reason, nxt, nxt_at, kind, message = _sync_effect(result)
        st.update(sync_seq=e.sequence, sync_status=target.value, sync_note={
            "reason": reason, "next_action": nxt, "next_action_at": nxt_at.isoformat() if nxt_at else None})
        if isinstance(result, InvoiceSubmitted) and result.receipt_no:
            st["receipt_no"] = result.receipt_no
        source = _settle(st, now)
        changed[iid] = st
        if source != "sync":
            message += f" ({_no_move_note(st, source)})"
        timeline_rows.append({"invoice_id": iid, "at": now, "kind": kind, "message": message,
                              "detail": {"event_id": e.id, **e.data}})
    if not changed:
        return 0
    await _save_state(session, list(changed.values()), now)
    await session.execute(m.timeline.insert(), timeline_rows)
    return len(timeline_rows)


# --- feedback from the reconciler -------------------------------------------------------------

async def apply_reconciliation(*, session: AsyncSession, events: Sequence[Received[ReconciliationEvent]]) -> int:
    """Record what the reconciler found, in the caller's transaction; returns how many events were applied.

    Idempotent like apply_sync_results, on the reconciler's own per-invoice `sequence`. Each applied event
    merges its data into `recon` (rendered at read time by explain.py) and adds a timeline entry; a finding
    (the reconciler's ledger state, with the sync sequence it had seen) becomes the finding register's
    latest word and the status is derived again. Only a finding confirms an invoice, and only a later
    finding (a check or a sweep that sees it gone) reopens one.
    """
    ids = {uuid.UUID(r.envelope.subject) for r in events}
    if not ids:
        return 0
    state = await _lock_state(session, ids)
    opened_cases = await _cases_on_timeline(session, list(state)) if any(
        isinstance(r.event, CaseUpdated) for r in events) else set()
    timeline_rows: list[dict[str, Any]] = []
    changed: dict[uuid.UUID, dict[str, Any]] = {}
    applied = 0
    now = datetime.now(UTC)
    for r in sorted(events, key=lambda r: (r.envelope.subject, r.envelope.sequence)):
        e, found = r.envelope, r.event
        iid = uuid.UUID(e.subject)
        st = state.get(iid)
        if st is None or e.sequence <= st["recon_seq"]:
            continue  # not ours, or already applied
        # Stored as checked and normalised (times as ISO 8601 UTC), as sent otherwise; explain.py renders it.
        data = found.model_dump(mode="json", exclude_unset=True)
        is_finding, finding = finding_of(e.type, found.ledger_state)
        st["recon_seq"] = e.sequence
        changed[iid] = st
        applied += 1
        recon = {**(st["recon"] or {}), **data, "type": e.type, "applied_at": now.isoformat()}
        if isinstance(found, CaseUpdated):
            recon["case_status"] = found.status
        st["recon"] = recon
        if found.case_no and not (isinstance(found, CaseUpdated) and found.status != "open"):
            st["case_no"] = found.case_no  # a resolved or closed case stays on the invoice as history
        if isinstance(found, InvoiceConfirmed | InvoiceAwaitingVisibility) and found.receipt_no:
            st["receipt_no"] = found.receipt_no
        if is_finding and found.ledger_state is None and finding is Status.RETRYING \
                and st["finding_status"] == Status.STUCK.value:
            finding = Status.STUCK  # an older event: a gap found while stuck did not end the case
        if is_finding:
            # An event from before findings carried the sync sequence was made knowing what we know.
            seen = found.sync_seq
            st.update(finding_status=finding.value if finding else None,
                      finding_sync_seq=st["sync_seq"] if seen is None else seen)
        _settle(st, now)
        kind, message = describe_event(e.type, data, at_time=e.time)
        if kind == "case_opened":
            if data["case_no"] in opened_cases:
                continue  # the seller's request already put this opening on the timeline (record_case)
            opened_cases.add(data["case_no"])
        if found.restated:
            message += " (restated: the status self-check found the issuer disagreeing with the reconciler)"
        timeline_rows.append({"invoice_id": iid, "at": now, "kind": kind, "message": message,
                              "detail": {"event_id": e.id, **e.data}})
    if not changed:
        return 0
    await _save_state(session, list(changed.values()), now)
    if timeline_rows:
        await session.execute(m.timeline.insert(), timeline_rows)
    return applied


# --- what the notifier sent --------------------------------------------------------------------

async def apply_notifications(*, session: AsyncSession,
                              events: Sequence[Received[NotificationSent | NotificationFailed]], group: str) -> int:
    """Put "alert sent via webhook at ..." (or "could not be delivered") on each invoice's timeline, once per
    event id; notices about invoices of another tenant or unknown here are dropped."""
    ids = {uuid.UUID(r.envelope.subject) for r in events}
    owners = dict((await session.execute(
        select(m.invoices.c.id, m.invoices.c.tenant_id).where(m.invoices.c.id.in_(ids))
    )).all())
    rows = []
    for r in events:
        e = r.envelope
        iid = uuid.UUID(e.subject)
        if str(owners.get(iid)) != e.tenant:
            continue
        kind, message = describe_notification(e.type, r.event.model_dump(mode="json"))
        if not await mark_processed(session, m.processed_events, group=group, event_id=e.id):
            continue  # redelivered
        rows.append({"invoice_id": iid, "at": datetime.now(UTC), "kind": kind, "message": message,
                     "detail": {"event_id": e.id, **e.data}})
    if rows:
        await session.execute(m.timeline.insert(), rows)
    return len(rows)


# --- operators ---------------------------------------------------------------------------------

async def find_invoices(*, session: AsyncSession, number: str, seller_tax_id: str | None = None,
                        limit: int = 20) -> list[dict[str, Any]]:
    """Invoices with this number, any tenant (an operator's look-up); the seller narrows it to one."""
    inv, t = m.invoices, m.tenants
    conds = [inv.c.number == number]
    if seller_tax_id:
        conds.append(inv.c.seller_tax_id == seller_tax_id)
    rows = (await session.execute(
        select(inv.c.id, inv.c.number, inv.c.seller_tax_id, inv.c.status, inv.c.issue_date, t.c.name.label("tenant"))
        .join(t, t.c.id == inv.c.tenant_id).where(*conds).order_by(inv.c.seq).limit(limit)
    )).all()
    return [{"id": str(r.id), "number": r.number, "seller_tax_id": r.seller_tax_id, "status": r.status,
             "issue_date": r.issue_date.isoformat(), "tenant": r.tenant} for r in rows]


async def get_invoice_any_tenant(*, session: AsyncSession, invoice_id: str,
                                 schedule: Schedule | None = None) -> dict[str, Any]:
    """get_invoice for an operator: whichever tenant the invoice belongs to, named in the answer."""
    try:
        iid = uuid.UUID(invoice_id)
    except ValueError:
        raise NotFound(f"no invoice {invoice_id[:40]}") from None
    owner = (await session.execute(
        select(m.tenants.c.id, m.tenants.c.name, m.tenants.c.tax_id)
        .join(m.invoices, m.invoices.c.tenant_id == m.tenants.c.id).where(m.invoices.c.id == iid)
    )).first()
    if owner is None:
        raise NotFound(f"no invoice {invoice_id[:40]}")
    tenant = Tenant(owner.id, owner.name, owner.tax_id)
    return {**await get_invoice(session=session, tenant=tenant, invoice_id=invoice_id, schedule=schedule),
            "tenant": {"id": str(owner.id), "name": owner.name, "tax_id": owner.tax_id}}


async def ops_figures(*, session: AsyncSession, tenant_id: uuid.UUID | None, stuck_limit: int = 50,
                      with_tenants: bool = True) -> dict[str, Any]:
    """What the dashboard shows from the issuer's own ledger: invoices by status, the stuck ones with their
    reason and case (issued earliest first), and the tenants to filter by."""
    inv, t = m.invoices, m.tenants
    conds = [inv.c.tenant_id == tenant_id] if tenant_id is not None else []
    counts = {r[0]: int(r[1]) for r in (await session.execute(
        select(inv.c.status, func.count()).where(*conds).group_by(inv.c.status))).all()}
    stuck_rows = [] if not stuck_limit else (await session.execute(
        select(inv.c.id, inv.c.number, inv.c.seller_tax_id, inv.c.total, inv.c.accepted_at, inv.c.updated_at,
               inv.c.status, inv.c.recon, inv.c.reason, inv.c.next_action, inv.c.next_action_at,
               inv.c.reason_source, inv.c.case_no, t.c.name.label("tenant"))
        .join(t, t.c.id == inv.c.tenant_id).where(inv.c.status == Status.STUCK.value, *conds)
        .order_by(inv.c.accepted_at).limit(stuck_limit)
    )).all()
    now = datetime.now(UTC)
    stuck = []
    for r in stuck_rows:
        reason, nxt, _ = explain(status=r.status, recon=r.recon, reason=r.reason, next_action=r.next_action,
                                 next_action_at=r.next_action_at, reason_source=r.reason_source, now=now)
        since = explain_time((r.recon or {}).get("stuck_at")) or r.updated_at
        stuck.append({"id": str(r.id), "number": r.number, "seller_tax_id": r.seller_tax_id, "tenant": r.tenant,
                      "total": f"{r.total:.2f}", "age_seconds": round((now - r.accepted_at).total_seconds(), 1),
                      "stuck_seconds": round(max(0.0, (now - since).total_seconds()), 1),
                      "case_no": r.case_no, "reason": reason, "next_action": nxt})
    tenants = [{"id": str(r.id), "name": r.name, "tax_id": r.tax_id} for r in (await session.execute(
        select(t.c.id, t.c.name, t.c.tax_id).order_by(t.c.name).limit(500))).all()] if with_tenants else []
    return {"counts": counts, "total": sum(counts.values()), "stuck": stuck, "stuck_total": counts.get("stuck", 0),
            "tenants": tenants}
