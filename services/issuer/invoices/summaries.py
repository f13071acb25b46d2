"""The month's summary for the accountants: the JSON of GET /v1/summaries/{month} as a CSV or an XLSX file.

Both hold one table of figures, a row per `(section, item)` with the value here and, where the authority has
one, the value there: the counts and sums (blue, red, net), the invoices not expected at the authority, the
differences by kind and each difference, the month's invoices by state, the gaps by kind and age, the cases by
status and each case, and each day's issued and confirmed invoices. The XLSX adds a sheet each for the
differences and the cases, with their columns spelled out. A summary is small (its differences are capped at
1,000, its cases at 200), so it is built in memory; the XLSX is saved off the event loop.

Text cells are neutralised as in the invoice export (exports.neutralise): a case's note or resolution that
begins with `=` stays text. Amounts stay numbers: the decimal strings the API answers in a CSV, numbers in an
XLSX (a red total begins with `-` and is no formula).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from services.issuer.invoices.exports import neutralise

__all__ = ["CASE_COLUMNS", "DIFFERENCE_COLUMNS", "FIGURE_COLUMNS", "figures", "summary_csv", "summary_xlsx"]

FIGURE_COLUMNS = ("section", "item", "here", "authority")
DIFFERENCE_COLUMNS = ("number", "kind", "our_state", "our_total", "authority_total", "authority_receipt_no")
CASE_COLUMNS = ("case_no", "number", "status", "opened_by", "opened_at", "resolved_at", "resolution", "note")
_SUMS = (("count", "count"), ("total", "total"), ("total_amount", "total_amount"), ("total_tax", "total_tax"))


def _money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def figures(s: dict[str, Any]) -> Iterator[tuple[str, str, Any, Any]]:
    """The summary's figures as `(section, item, here, authority)`; amounts as Decimal, counts as int."""
    yield "month", s["month"], s["period"]["from"], s["period"]["to"]
    yield "seller", "tax_id", s["seller_tax_id"], None
    yield "matches", "both_sides_agree", "yes" if s["matches"] else "no", None
    for colour in ("blue", "red", "net"):
        ours, theirs = s["ours"].get(colour) or {}, s["authority"].get(colour) or {}
        for key, item in _SUMS:
            if key not in ours and key not in theirs:
                continue
            conv = int if key == "count" else _money
            yield colour, item, conv(ours[key]) if key in ours else None, conv(theirs[key]) if key in theirs else None
    for state, n in sorted((s.get("not_expected_at_authority") or {}).items()):
        yield "not_expected_at_authority", state, int(n), None
    for kind, n in sorted(s["difference_counts"].items()):
        yield "difference_count", kind, int(n), None
    for d in s["differences"]:
        ours, theirs = d.get("ours") or {}, d.get("authority") or {}
        yield f"difference:{d['kind']}", d["number"], _money(ours.get("total")), _money(theirs.get("total"))
    for state, n in (s.get("states") or {}).items():
        yield "state", state, int(n), None
    for g in s.get("gaps") or []:
        yield f"gap:{g['kind']}", g["age"], int(g["count"]), None
    cases = s.get("cases") or {}
    for status, n in (cases.get("by_status") or {}).items():
        yield "cases", status, int(n), None
    for c in cases.get("items") or []:
        yield "case", c["case_no"], c["status"], c.get("resolution")
    for day in s.get("daily") or []:
        yield "day_issued_confirmed", day["date"], int(day["issued"]), int(day["confirmed"])


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int | Decimal):
        return str(value)
    return neutralise(str(value))


def summary_csv(s: dict[str, Any]) -> bytes:
    """UTF-8 with a byte-order mark, as the invoice export: `here` is ours, `authority` the tax authority's
    (for a day: issued here, confirmed there)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(FIGURE_COLUMNS)
    for row in figures(s):
        w.writerow([_text(v) for v in row])
    return ("\ufeff" + buf.getvalue()).encode()


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, int | Decimal):
        return value
    return neutralise(str(value))


def summary_xlsx(s: dict[str, Any]) -> bytes:
    """Sheets `summary` (the figures, as in the CSV), `differences` and `cases`. Blocking: run it in a thread."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("summary")
    ws.append(list(FIGURE_COLUMNS))
    for row in figures(s):
        cells = []
        for value in row:
            cell = WriteOnlyCell(ws, value=_cell(value))
            if isinstance(value, Decimal):
                cell.number_format = "0.00"
            cells.append(cell)
        ws.append(cells)
    diffs = wb.create_sheet("differences")
    diffs.append(list(DIFFERENCE_COLUMNS))
    for d in s["differences"]:
        ours, theirs = d.get("ours") or {}, d.get("authority") or {}
        diffs.append([_cell(d["number"]), _cell(d["kind"]), _cell(ours.get("state")), _money(ours.get("total")),
                      _money(theirs.get("total")), _cell(theirs.get("receipt_no"))])
    cases = wb.create_sheet("cases")
    cases.append(list(CASE_COLUMNS))
    for c in (s.get("cases") or {}).get("items") or []:
        cases.append([_cell(c.get(k)) for k in CASE_COLUMNS])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
