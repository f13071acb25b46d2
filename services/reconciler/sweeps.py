"""Sweeps: confirmed invoices can vanish or change at the store long after their check, so each (seller, issue
date) window is listed at the store again at its turn and compared with the ledger. A confirmation makes its
window hot for a while (`hot_until`): swept every few seconds meanwhile instead of hourly. Numbers the store
holds that were never issued here are orphans, alerted once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, case, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.reconciler import models as m
from services.reconciler.writes import ALERT_NS, Topics, Writes
from shared.events import OrphanAlertRaised

__all__ = ["Swept", "apply_sweep", "claim_sweep_windows", "heat", "sweep_now"]


@dataclass(frozen=True)
class Swept:
    """One window compared: how many invoices the store listed and the ledger holds, and what differed."""

    listed: int
    ours: int
    vanished: int  # confirmed here, not listed
    changed: int  # confirmed here, listed with other content
    seen_unconfirmed: int  # not confirmed yet, but listed
    orphans: int  # listed, never issued here

    @property
    def rechecks(self) -> int:
        """The invoices this sweep has checked at once."""
        return self.vanished + self.changed + self.seen_unconfirmed


async def heat(session: AsyncSession, windows: list[tuple[str, date]], now: datetime, after: float,
               hot_for: float) -> None:
    """A confirmation makes its window hot: swept within `after`, and every `after` until `hot_for` from now."""
    sw = m.sweep_windows
    soon, until = now + timedelta(seconds=after), now + timedelta(seconds=hot_for)
    await session.execute(
        update(sw).where(tuple_(sw.c.seller_tax_id, sw.c.issue_date).in_(windows))
        .values(hot_until=func.greatest(func.coalesce(sw.c.hot_until, until), until),
                next_sweep_at=func.least(sw.c.next_sweep_at, soon)))


async def claim_sweep_windows(*, session: AsyncSession, limit: int, interval: float,
                              hot_interval: float | None = None) -> list[Any]:
    """The (seller, issue date) windows due for a sweep, pushed to their next turn: `hot_interval` away while the
    window is hot (a recent confirmation), else `interval`."""
    sw = m.sweep_windows
    due = (select(sw.c.seller_tax_id, sw.c.issue_date).where(sw.c.next_sweep_at <= func.now())
           .order_by(sw.c.next_sweep_at).limit(limit).with_for_update(skip_locked=True)).subquery()
    step: ColumnElement[Any] = func.make_interval(0, 0, 0, 0, 0, 0, interval)
    if hot_interval is not None:
        step = case((sw.c.hot_until > func.now(), func.make_interval(0, 0, 0, 0, 0, 0, hot_interval)), else_=step)
    return list((await session.execute(
        update(sw).where(sw.c.seller_tax_id == due.c.seller_tax_id, sw.c.issue_date == due.c.issue_date)
        .values(next_sweep_at=func.now() + step)
        .returning(sw.c.seller_tax_id, sw.c.issue_date, sw.c.tenant_id)
    )).all())


async def apply_sweep(*, session: AsyncSession, seller_tax_id: str, issue_date: date, tenant_id: uuid.UUID,
                      store: dict[str, Any], orphan_grace: float, topics: Topics) -> Swept:
    """Compare one window's ledger with the store's listing of it (number -> StoreView).

    Confirmed invoices that are gone or changed, and unconfirmed ones the listing shows, are checked at once
    (the check decides and acts); numbers the store holds that were never issued here are orphans, alerted
    once when still unknown after the grace period.
    """
    led = m.ledger
    rows = (await session.execute(
        select(led.c.invoice_id, led.c.number, led.c.state, led.c.content_hash)
        .where(led.c.seller_tax_id == seller_tax_id, led.c.issue_date == issue_date)
    )).all()
    now = datetime.now(UTC)
    ours = {r.number: r for r in rows}
    vanished: list[uuid.UUID] = []
    changed: list[uuid.UUID] = []
    seen_unconfirmed: list[uuid.UUID] = []
    for r in rows:
        v = store.get(r.number)
        if r.state == "confirmed":
            if v is None:
                vanished.append(r.invoice_id)
            elif v.content_hash != r.content_hash:
                changed.append(r.invoice_id)
        elif r.state in ("pending", "awaiting", "gap", "stuck") and v is not None:
            seen_unconfirmed.append(r.invoice_id)
    if recheck := vanished + changed + seen_unconfirmed:
        await session.execute(
            update(led).where(led.c.invoice_id.in_(recheck))
            .values(next_check_at=func.now(), check_requested_by="sweep"))
    unknown = [n for n in store if n not in ours]
    if unknown:
        # Issued here under another date (or not yet seen by this service)? Then it is not an orphan.
        known = set((await session.execute(
            select(led.c.number).where(led.c.seller_tax_id == seller_tax_id, led.c.number.in_(unknown))
        )).scalars())
        unknown = [n for n in unknown if n not in known]
    if unknown:
        await _record_orphans(session, seller_tax_id, tenant_id, [store[n] for n in unknown], now, orphan_grace,
                              topics)
    result = Swept(listed=len(store), ours=len(rows), vanished=len(vanished), changed=len(changed),
                   seen_unconfirmed=len(seen_unconfirmed), orphans=len(unknown))
    await session.execute(
        update(m.sweep_windows).where(m.sweep_windows.c.seller_tax_id == seller_tax_id,
                                      m.sweep_windows.c.issue_date == issue_date)
        .values(last_swept_at=now, last_result=asdict(result)))
    return result


async def _record_orphans(session: AsyncSession, seller_tax_id: str, tenant_id: uuid.UUID, views: list[Any],
                          now: datetime, grace: float, topics: Topics) -> None:
    o = m.orphans
    stmt = pg_insert(o)
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[o.c.seller_tax_id, o.c.number], set_={"last_seen_at": stmt.excluded.last_seen_at}), [
        {"seller_tax_id": seller_tax_id, "number": v.number, "tenant_id": tenant_id, "issue_date": v.issue_date,
         "total": v.total, "receipt_no": v.receipt_no, "first_seen_at": now, "last_seen_at": now} for v in views])
    due = (await session.execute(
        update(o).where(o.c.seller_tax_id == seller_tax_id, o.c.number.in_([v.number for v in views]),
                        o.c.alerted_at.is_(None), o.c.first_seen_at <= now - timedelta(seconds=grace))
        .values(alerted_at=now).returning(o)
    )).all()
    restores = (await session.execute(
        select(m.restores.c.backup_taken_at, m.restores.c.restored_at).order_by(m.restores.c.id.desc()).limit(20)
    )).all()
    w = Writes(topics)
    for r in due:
        subject = f"orphan:{r.seller_tax_id}:{r.number}"
        reason, next_action = _orphan_words(r, restores)
        w.raw_alert(OrphanAlertRaised, str(uuid.uuid5(ALERT_NS, subject)), subject=subject, tenant=str(r.tenant_id),
                    data={"kind": "orphan", "tenant_id": str(r.tenant_id), "seller_tax_id": r.seller_tax_id,
                          "invoice_id": None, "number": r.number, "issue_date": r.issue_date, "total": r.total,
                          "buyer_name": None, "buyer_tax_id": None, "receipt_no": r.receipt_no,
                          "reason": reason, "next_action": next_action,
                          "case_no": None, "at": now})
    await w.flush(session)


def _orphan_words(r: Any, restores: Sequence[Any]) -> tuple[str, str]:
    """Why the authority holds an invoice this system does not know, and what to do. An invoice issued between a
    backup and the restore of it (a day either side: the backup's time is to the second, an issue date to the
    day, in its own time zone) is most likely one the restore took away; any other is foreign."""
    day = timedelta(days=1)
    restore = next((x for x in restores if r.issue_date is not None and
                    x.backup_taken_at.date() - day <= r.issue_date <= x.restored_at.date() + day), None)
    if restore is not None:
        return (f"The tax authority holds invoice {r.number} under your tax id (receipt {r.receipt_no}), issued "
                f"{r.issue_date}; this system's database was restored at {restore.restored_at:%Y-%m-%d %H:%M} UTC "
                f"from a backup taken at {restore.backup_taken_at:%Y-%m-%d %H:%M} UTC, and no longer has it.",
                "Re-issue it from the ERP with the same number and content: Fapiao Sync records it again and the "
                "authority answers with its original receipt.")
    return (f"The tax authority holds invoice {r.number} under your tax id (receipt {r.receipt_no}), but it was "
            "never issued through Fapiao Sync.",
            "Check whether it was issued outside this system; red-letter it if it is not yours.")


async def sweep_now(*, session: AsyncSession, seller_tax_id: str | None) -> int:
    """Make every window (of one seller) due for a sweep now."""
    sw = m.sweep_windows
    stmt = update(sw).values(next_sweep_at=func.now())
    if seller_tax_id:
        stmt = stmt.where(sw.c.seller_tax_id == seller_tax_id)
    return int(cast("CursorResult[Any]", await session.execute(stmt)).rowcount or 0)
