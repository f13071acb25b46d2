"""Cases: one per invoice the authority does not show as issued, opened by the system when an invoice is stuck or
by the tenant (through the issuer), closed when the invoice turns up, is voided or rejected. Case numbers are
counted per day in the deployment's time zone; every step is written to the case's history."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.reconciler import models as m
from services.reconciler.writes import Topics, Writes, iso, lock, save
from shared.contracts.cases import case_no_of
from shared.errors import NotFound
from shared.events import CaseUpdated

__all__ = ["CaseOpened", "CaseRefused", "close_case", "get_case", "list_cases", "new_case", "open_case"]


@dataclass(frozen=True)
class CaseOpened:
    case: dict[str, Any]  # get_case's view, with its history
    opened: bool  # by this request; False: the case was open already


@dataclass(frozen=True)
class CaseRefused:
    """A rejected or voided invoice: nothing to look for at the authority, no case; nothing was written."""

    invoice_state: str
    last_error: str | None


async def new_case(session: AsyncSession, w: Writes, s: dict[str, Any], *, opened_by: str, note: str | None,
                   now: datetime, timezone: str, message: str) -> str:
    day = now.astimezone(ZoneInfo(timezone)).date()
    n = (await session.execute(
        pg_insert(m.case_counters).values(day=day, n=1)
        .on_conflict_do_update(index_elements=["day"], set_={"n": m.case_counters.c.n + 1})
        .returning(m.case_counters.c.n)
    )).scalar_one()
    case_no = case_no_of(day, n)
    await session.execute(m.cases.insert().values(
        case_no=case_no, invoice_id=s["invoice_id"], tenant_id=s["tenant_id"], seller_tax_id=s["seller_tax_id"],
        number=s["number"], status="open", opened_by=opened_by, note=note, opened_at=now))
    s["case_no"] = case_no
    w.note(case_no, "opened", message, now)
    if opened_by == "tenant":
        w.event(s, CaseUpdated, {"case_no": case_no, "status": "open", "opened_by": opened_by, "at": now,
                                  "resolution": None})
    return case_no


async def close_case(session: AsyncSession, w: Writes, s: dict[str, Any], status: str, resolution: str,
                     now: datetime, *, emit: bool = True) -> None:
    case_no = s["case_no"]
    row = (await session.execute(
        update(m.cases).where(m.cases.c.case_no == case_no, m.cases.c.status == "open")
        .values(status=status, resolved_at=now, resolution=resolution).returning(m.cases.c.opened_by)
    )).first()
    s["case_no"] = None
    if row is None:
        return
    w.note(case_no, status, f"Case {status}: {resolution}.", now)
    if emit:
        w.event(s, CaseUpdated, {"case_no": case_no, "status": status, "opened_by": row.opened_by, "at": now,
                                  "resolution": resolution})


async def open_case(*, session: AsyncSession, invoice_id: uuid.UUID, tenant_id: uuid.UUID, seller_tax_id: str,
                    number: str, note: str | None, topics: Topics,
                    timezone: str = "Asia/Shanghai") -> CaseOpened | CaseRefused:
    """The tenant says the authority does not have this invoice: open a case (or return the open one) and
    check the authority now."""
    await session.execute(pg_insert(m.ledger).values(
        invoice_id=invoice_id, tenant_id=tenant_id, seller_tax_id=seller_tax_id, number=number, state="pending",
    ).on_conflict_do_nothing())
    # None: the seller's number belongs to another invoice id (the insert met the (seller, number) key).
    s = (await lock(session, [invoice_id])).get(invoice_id)
    if s is None or s["tenant_id"] != tenant_id or s["seller_tax_id"] != seller_tax_id or s["number"] != number:
        raise NotFound(f"no invoice {invoice_id}")
    if s["state"] in ("voided", "rejected"):
        return CaseRefused(s["state"], s["last_error"])
    now = datetime.now(UTC)
    w = Writes(topics)
    created = False
    if s["case_no"] is None:
        await new_case(session, w, s, opened_by="tenant", note=note, now=now, timezone=timezone,
                       message="Opened at the seller's request: the tax system does not show this invoice."
                               + (f" Note: {note}" if note else ""))
        created = True
    # Check now, whatever the schedule said (a confirmed invoice too: it may have vanished since).
    s.update(next_check_at=now, check_requested_by="case")
    w.note(s["case_no"], "check", "Immediate check of the tax authority requested.", now, trigger="case")
    await save(session, [s])
    await w.flush(session)
    return CaseOpened(await get_case(session=session, case_no=s["case_no"]), created)


def _with_invoice() -> Select[Any]:
    """Cases joined with their invoice's place in the ledger."""
    c, led = m.cases, m.ledger
    return (select(c, led.c.state.label("invoice_state"), led.c.gap_kind, led.c.receipt_no, led.c.resyncs,
                   led.c.next_check_at, led.c.last_error)
            .join(led, led.c.invoice_id == c.c.invoice_id))


async def get_case(*, session: AsyncSession, case_no: str, history: bool = True) -> dict[str, Any]:
    row = (await session.execute(_with_invoice().where(m.cases.c.case_no == case_no))).first()
    if row is None:
        raise NotFound(f"no case {case_no}")
    out = _case_view(row)
    if history:
        entries = (await session.execute(
            select(m.case_history).where(m.case_history.c.case_no == case_no).order_by(m.case_history.c.id)
        )).all()
        out["history"] = [{"at": e.at.isoformat(), "kind": e.kind, "message": e.message, "detail": e.detail}
                          for e in entries]
    return out


def _case_view(row: Any) -> dict[str, Any]:
    return {
        "case_no": row.case_no, "status": row.status, "opened_by": row.opened_by, "opened_at": iso(row.opened_at),
        "resolved_at": iso(row.resolved_at), "resolution": row.resolution, "note": row.note,
        "invoice_id": str(row.invoice_id), "tenant_id": str(row.tenant_id), "seller_tax_id": row.seller_tax_id,
        "number": row.number, "invoice_state": row.invoice_state, "gap_kind": row.gap_kind,
        "receipt_no": row.receipt_no, "resyncs": row.resyncs, "next_check_at": iso(row.next_check_at),
        "last_error": row.last_error,
    }


async def list_cases(*, session: AsyncSession, tenant_id: uuid.UUID | None, status: str | None,
                     limit: int) -> list[dict[str, Any]]:
    c = m.cases
    conds = []
    if tenant_id is not None:
        conds.append(c.c.tenant_id == tenant_id)
    if status is not None:
        conds.append(c.c.status == status)
    rows = (await session.execute(_with_invoice().where(and_(*conds)).order_by(c.c.opened_at.desc())
                                  .limit(limit))).all()
    return [_case_view(r) for r in rows]
