"""The invoice list for the accountants: CSV or XLSX, with the list's filters, streamed.

Rows are read in pages of EXPORT_PAGE by the list's own order (newest first, by `seq`), each page in a
transaction of its own (pinned to the tenant, services/issuer/row_security.py), and written out as they come:
100,000 invoices never sit in memory at once. An XLSX is built by openpyxl's write-only workbook (rows go to a
temporary file) and then streamed from that file.

Spreadsheet formula injection: a text cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is
written with a leading apostrophe (the OWASP advice), so a buyer named `=HYPERLINK(…)` stays text. Amounts and
dates are not text: in an XLSX they are numbers and dates, in a CSV the decimal strings the API answers.
"""

from __future__ import annotations

import asyncio
import csv
import io
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.issuer import models as m
from services.issuer import row_security
from services.issuer.invoices.reading import ListFilters, list_conditions, view
from services.issuer.tenants import Tenant

__all__ = ["COLUMNS", "EXPORT_PAGE", "csv_chunks", "neutralise", "xlsx_chunks"]

EXPORT_PAGE = 1000
COLUMNS = ("number", "kind", "issue_date", "buyer_tax_id", "buyer_name", "total_amount", "total_tax", "total",
           "currency", "status", "reason", "next_action", "receipt_no", "case_no", "accepted_at", "updated_at")
_MONEY = {"total_amount", "total_tax", "total"}
_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: str) -> str:
    """A cell a spreadsheet would read as a formula, made plain text."""
    return "'" + value if value.startswith(_DANGEROUS) else value


async def _records(sessions: async_sessionmaker[AsyncSession], tenant: Tenant,
                   filters: ListFilters) -> AsyncIterator[dict[str, Any]]:
    inv = m.invoices
    conds = list_conditions(tenant, filters)
    after: int | None = None
    while True:
        async with sessions() as session, session.begin():
            await row_security.pin_session(session, tenant.id)  # the policies too, not only the filters
            page = (await session.execute(
                select(inv).where(and_(*conds, *([inv.c.seq < after] if after is not None else [])))
                .order_by(inv.c.seq.desc()).limit(EXPORT_PAGE))).all()
        for row in page:
            shown = view(row).model_dump()
            yield {c: shown.get(c) for c in COLUMNS}
        if len(page) < EXPORT_PAGE:
            return
        after = page[-1].seq


def _text(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if column in _MONEY:
        return str(value)
    return neutralise(str(value))


async def csv_chunks(sessions: async_sessionmaker[AsyncSession], tenant: Tenant,
                     filters: ListFilters) -> AsyncIterator[bytes]:
    """UTF-8 with a byte-order mark (so Excel reads the Chinese right), a header, one line per invoice."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    yield ("\ufeff" + buf.getvalue()).encode()
    count = 0
    buf.seek(0)
    buf.truncate()
    async for record in _records(sessions, tenant, filters):
        w.writerow([_text(c, record[c]) for c in COLUMNS])
        count += 1
        if count % 500 == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def _cell(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _MONEY:
        return Decimal(str(value))
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)  # Excel has no time zones: UTC, as the header says
    if isinstance(value, date):
        return value
    return neutralise(str(value))


async def xlsx_chunks(sessions: async_sessionmaker[AsyncSession], tenant: Tenant,
                      filters: ListFilters) -> AsyncIterator[bytes]:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("invoices")
    ws.append([c if not c.endswith("_at") else f"{c} (UTC)" for c in COLUMNS])
    async for record in _records(sessions, tenant, filters):
        row = []
        for c in COLUMNS:
            cell = WriteOnlyCell(ws, value=_cell(c, record[c]))
            if c in _MONEY:
                cell.number_format = "0.00"
            elif c.endswith("_at"):
                cell.number_format = "yyyy-mm-dd hh:mm:ss"
            elif c == "issue_date":
                cell.number_format = "yyyy-mm-dd"
            row.append(cell)
        ws.append(row)
    with tempfile.TemporaryFile() as f:
        await asyncio.to_thread(wb.save, f)  # the zip is written in one go: not on the event loop
        f.seek(0)
        for chunk in _read(f):
            yield chunk


def _read(f: Any) -> Iterator[bytes]:
    while chunk := f.read(1 << 16):
        yield chunk
