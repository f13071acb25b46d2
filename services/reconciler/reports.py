"""What the ledger adds up to: the gaps by kind and age, the oldest unconfirmed invoices, counts by state, and a
seller's month here against the authority's listing of it (发票汇总确认). Read only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.reconciler import models as m
from services.reconciler.writes import jsonable

__all__ = ["GapReport", "gap_report", "list_form_gaps", "list_unconfirmed", "month_end", "month_summary",
           "status_counts"]

_AGE_BUCKETS = ((60, "lt_1m"), (600, "1m_10m"), (3600, "10m_1h"), (86400, "1h_1d"))
_UNCONFIRMED = ("pending", "awaiting", "gap", "stuck")


@dataclass(frozen=True)
class GapReport:
    by_kind_age: dict[tuple[str, str], int]  # (kind, age bucket) -> invoices
    stuck: int
    unconfirmed: int
    oldest_unconfirmed_seconds: float


async def gap_report(*, session: AsyncSession, seller_tax_id: str | None = None,
                     issued: tuple[date, date] | None = None) -> GapReport:
    """Unconfirmed invoices by kind and age bucket, counted in SQL over the partial index (unconfirmed
    rows only, whatever the size of the ledger); of one seller's invoices issued in `issued` (from, to) if given."""
    led = m.ledger
    only = []
    if seller_tax_id is not None:
        only.append(led.c.seller_tax_id == seller_tax_id)
    if issued is not None:
        only += [led.c.issue_date >= issued[0], led.c.issue_date <= issued[1]]
    age = func.extract("epoch", func.now() - func.coalesce(led.c.since, led.c.created_at))
    kind = case((led.c.state == "stuck", "stuck"), (led.c.state == "pending", "unacknowledged"),
                (led.c.state == "awaiting", "awaiting"), else_=func.coalesce(led.c.gap_kind, "missing"))
    bucket = case(*((age < limit, name) for limit, name in _AGE_BUCKETS), else_="gt_1d")
    rows = (await session.execute(
        select(kind.label("kind"), bucket.label("age"), func.count().label("n"), func.max(age).label("oldest"))
        .where(led.c.next_check_at.is_not(None), led.c.state.in_(_UNCONFIRMED), *only)
        .group_by(kind, bucket)
    )).all()
    by = {(r.kind, r.age): int(r.n) for r in rows}
    return GapReport(by_kind_age=by, stuck=sum(n for (k, _), n in by.items() if k == "stuck"),
                     unconfirmed=sum(by.values()),
                     oldest_unconfirmed_seconds=max((float(r.oldest) for r in rows), default=0.0))


async def status_counts(*, session: AsyncSession) -> dict[str, Any]:
    led, c = m.ledger, m.cases
    states = {r[0]: int(r[1]) for r in (await session.execute(
        select(led.c.state, func.count()).group_by(led.c.state))).all()}
    cases = {r[0]: int(r[1]) for r in (await session.execute(
        select(c.c.status, func.count()).group_by(c.c.status))).all()}
    orphans = int((await session.execute(select(func.count()).select_from(m.orphans))).scalar_one())
    return {"ledger": states, "cases": cases, "orphans": orphans}


async def list_unconfirmed(*, session: AsyncSession, limit: int) -> list[dict[str, Any]]:
    """The oldest unconfirmed invoices, with why and what next (unconfirmed rows only)."""
    led = m.ledger
    rows = (await session.execute(
        select(led.c.invoice_id, led.c.tenant_id, led.c.seller_tax_id, led.c.number, led.c.state, led.c.gap_kind,
               led.c.since, led.c.acked_at, led.c.resyncs, led.c.held, led.c.case_no, led.c.last_error,
               led.c.next_check_at)
        .where(led.c.next_check_at.is_not(None), led.c.state.in_(_UNCONFIRMED))
        .order_by(led.c.since.asc().nulls_last()).limit(limit)
    )).all()
    return [jsonable(dict(r._mapping)) for r in rows]


async def list_form_gaps(*, session: AsyncSession, limit: int) -> list[dict[str, Any]]:
    """Confirmed red-letter forms whose red invoice is not in the ledger past its grace (forms.py), oldest first."""
    f = m.red_letter_forms
    rows = (await session.execute(
        select(f.c.form_id, f.c.tenant_id, f.c.invoice_id, f.c.seller_tax_id, f.c.blue_number, f.c.form_no,
               f.c.red_number, f.c.gap_kind, f.c.confirmed_at, f.c.gap_at, f.c.case_no, f.c.next_check_at)
        .where(f.c.state == "gap").order_by(f.c.confirmed_at).limit(limit))).all()
    return [jsonable(dict(r._mapping)) for r in rows]


# --- the month --------------------------------------------------------------------------------

def month_end(first: date) -> date:
    """The last day of the month that starts on `first`."""
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def _sums() -> dict[str, Any]:
    return {"count": 0, "total": Decimal("0.00")}


def _ours(r: Any) -> dict[str, Any]:
    return {"invoice_id": str(r.invoice_id), "state": r.state, "total": f"{r.total:.2f}"}


async def month_summary(*, session: AsyncSession, seller_tax_id: str, month: date, store: Sequence[Any],
                        max_differences: int = 1000, timezone: str = "Asia/Shanghai",
                        max_cases: int = 200) -> dict[str, Any]:
    """发票汇总确认: one seller's month, counts and sums (blue / red / net) here vs. at the authority, and every
    difference; then what the month's report shows besides: the month's invoices by ledger state, the gaps among
    them by kind and age, their cases and outcomes, and day by day how many were issued and confirmed (a
    confirmation counted on its calendar day in `timezone`). `store` is the authority's listing of the month."""
    led = m.ledger
    last = month_end(month)
    rows = (await session.execute(
        select(led.c.invoice_id, led.c.number, led.c.state, led.c.content_hash, led.c.total_amount,
               led.c.total_tax, led.c.total, led.c.receipt_no)
        .where(led.c.seller_tax_id == seller_tax_id, led.c.issue_date >= month, led.c.issue_date <= last)
    )).all()
    ours_sums = {"blue": _sums() | {"total_amount": Decimal("0.00"), "total_tax": Decimal("0.00")},
                 "red": _sums() | {"total_amount": Decimal("0.00"), "total_tax": Decimal("0.00")}}
    not_expected = {"voided": 0, "rejected": 0}
    expected: dict[str, Any] = {}
    others: dict[str, Any] = {}
    for r in rows:
        if r.state in ("voided", "rejected"):
            not_expected[r.state] += 1
            others[r.number] = r
            continue
        expected[r.number] = r
        bucket = ours_sums["red" if r.total < 0 else "blue"]
        bucket["count"] += 1
        bucket["total"] += r.total
        bucket["total_amount"] += r.total_amount
        bucket["total_tax"] += r.total_tax
    theirs_sums, differences = _compare(expected, others, store)
    kinds: dict[str, int] = {}
    for x in differences:
        kinds[x["kind"]] = kinds.get(x["kind"], 0) + 1
    for sums in (ours_sums, theirs_sums):
        sums["net"] = {k: sums["blue"][k] + sums["red"][k] for k in sums["blue"]}
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    gaps = await gap_report(session=session, seller_tax_id=seller_tax_id, issued=(month, last))
    return jsonable({
        "seller_tax_id": seller_tax_id, "month": f"{month:%Y-%m}", "period": {"from": month, "to": last},
        "ours": ours_sums, "authority": theirs_sums, "not_expected_at_authority": not_expected,
        "matches": not differences, "difference_counts": kinds, "differences": differences[:max_differences],
        "differences_truncated": len(differences) > max_differences,
        "states": dict(sorted(states.items())),
        "gaps": [{"kind": k, "age": a, "count": n} for (k, a), n in sorted(gaps.by_kind_age.items())],
        "cases": await _month_cases(session, seller_tax_id, month, last, max_cases),
        "daily": await _daily(session, seller_tax_id, month, last, timezone),
    })


async def _month_cases(session: AsyncSession, seller_tax_id: str, first: date, last: date,
                       limit: int) -> dict[str, Any]:
    """The cases about the month's invoices: counts by status, and the newest `limit` with their outcomes."""
    led, c = m.ledger, m.cases
    about = (select(c).join(led, led.c.invoice_id == c.c.invoice_id)
             .where(c.c.seller_tax_id == seller_tax_id, led.c.issue_date >= first, led.c.issue_date <= last)
             .subquery())
    counts = {r[0]: int(r[1]) for r in (await session.execute(
        select(about.c.status, func.count()).group_by(about.c.status))).all()}
    rows = (await session.execute(
        select(about.c.case_no, about.c.number, about.c.status, about.c.opened_by, about.c.opened_at,
               about.c.resolved_at, about.c.resolution, about.c.note)
        .order_by(about.c.opened_at.desc(), about.c.case_no.desc()).limit(limit))).all()
    return {"by_status": dict(sorted(counts.items())), "total": sum(counts.values()),
            "items": [dict(r._mapping) for r in rows], "truncated": sum(counts.values()) > limit}


async def _daily(session: AsyncSession, seller_tax_id: str, first: date, last: date,
                 timezone: str) -> list[dict[str, Any]]:
    """Each day of the month: the invoices issued (by issue date) and the month's invoices confirmed that day."""
    led = m.ledger
    month_rows = (led.c.seller_tax_id == seller_tax_id, led.c.issue_date >= first, led.c.issue_date <= last)
    issued = {r[0]: int(r[1]) for r in (await session.execute(
        select(led.c.issue_date, func.count()).where(*month_rows).group_by(led.c.issue_date))).all()}
    day = func.date(func.timezone(timezone, led.c.confirmed_at))
    confirmed = {r[0]: int(r[1]) for r in (await session.execute(
        select(day, func.count()).where(*month_rows, led.c.state == "confirmed", led.c.confirmed_at.is_not(None))
        .group_by(day))).all()}
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    return [{"date": d, "issued": issued.get(d, 0), "confirmed": confirmed.get(d, 0)} for d in days]


def _compare(expected: dict[str, Any], others: dict[str, Any],
             store: Sequence[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The authority's sums, and every difference between its listing and the ledger (sorted by kind, number)."""
    theirs_sums = {"blue": _sums(), "red": _sums()}
    differences: list[dict[str, Any]] = []
    seen_numbers = set()
    for v in store:
        seen_numbers.add(v.number)
        colour = "red" if v.total < 0 or v.red_letter_of else "blue"
        theirs_sums[colour]["count"] += 1
        theirs_sums[colour]["total"] += v.total
        authority = {"total": f"{v.total:.2f}", "receipt_no": v.receipt_no}
        ours = expected.get(v.number)
        if ours is None:
            other = others.get(v.number)
            kind = f"{other.state}_here" if other is not None else "unknown_here"
            differences.append({"number": v.number, "kind": kind, "authority": authority,
                                "ours": None if other is None else _ours(other)})
        elif ours.total != v.total or ours.content_hash != v.content_hash:
            differences.append({"number": v.number, "kind": "total_differs" if ours.total != v.total else
                                "content_differs", "authority": authority, "ours": _ours(ours)})
    for number, r in expected.items():
        if number not in seen_numbers:
            differences.append({"number": number, "kind": "missing_at_authority", "authority": None,
                                "ours": _ours(r)})
    differences.sort(key=lambda x: (x["kind"], x["number"]))
    return theirs_sums, differences
