"""CSV import of historical invoices (批量导入): one row per invoice line, rows grouped by number.

Totals are derived from the lines; the seller is the tenant. Errors in a row's values come back per row and
column, and every invoice without errors is kept. A file that cannot be read as a whole (an unclosed quote, a
cell or row past its bound, a row with more cells than the header) is refused before anything is written.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.errors import FieldError
from shared.money import parse_amount

__all__ = [
    "COLUMNS", "MAX_FIELD", "MAX_RECORD", "REQUIRED", "CsvFormatError", "CsvInvoice", "FileError", "RowError",
    "parse_csv", "read_rows", "row_errors",
]

COLUMNS = (
    "number", "kind", "issue_date", "buyer_tax_id", "buyer_name", "line_description", "line_tax_code",
    "line_quantity", "line_unit_price", "line_amount", "line_tax_rate", "line_tax_amount", "remarks",
)
REQUIRED = frozenset(COLUMNS) - {"buyer_tax_id", "remarks"}
_INVOICE_FIELDS = {"number", "kind", "issue_date", "buyer_tax_id", "buyer_name", "remarks"}
_LINE_FIELD = {
    "description": "line_description", "tax_code": "line_tax_code", "quantity": "line_quantity",
    "unit_price": "line_unit_price", "amount": "line_amount", "tax_rate": "line_tax_rate",
    "tax_amount": "line_tax_amount",
}


@dataclass(frozen=True)
class RowError:
    row: int  # 1 = the header; data starts at 2, as a spreadsheet shows it
    column: str
    reason: str
    number: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "reason": self.reason, "number": self.number}


@dataclass
class CsvInvoice:
    number: str
    rows: list[int] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileError(FieldError):
    """A FieldError that also says where in the file, for the 422 that refuses the whole file."""

    row: int | None = None
    column: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "reason": self.reason}
        for key in ("row", "column", "line"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class CsvFormatError(ValueError):
    """The file cannot be read as this CSV: the whole import is refused (nothing is written).

    `row` is the row as a spreadsheet numbers it (1 = the header), `column` the column's header name when it
    is known, `line` the line of the file where the row starts when that differs from the row.
    """

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.row, self.column, self.line = row, column, line

    def field_error(self) -> FileError:
        """The problem+json entry: path '(file)' or 'row 7, column remarks', with row and column as fields."""
        return FileError(self.where.split(" (line")[0] or "(file)", str(self), row=self.row, column=self.column,
                         line=self.line if self.line != self.row else None)

    @property
    def where(self) -> str:
        """'row 7, column remarks (line 9 of the file)', or '' for the file as a whole."""
        if self.row is None:
            return ""
        out = f"row {self.row}" + (f", column {self.column}" if self.column else "")
        return out + (f" (line {self.line} of the file)" if self.line not in (None, self.row) else "")


# Bounds on what one request may hold, checked before the csv module sees a line: a cell of more than
# MAX_FIELD characters (any real value is far shorter; descriptions stop at 200), a row of more than MAX_RECORD
# characters (every cell at its limit, quoted, with every character an escaped quote, still fits).
MAX_FIELD = 2000
MAX_RECORD = len(COLUMNS) * (2 * MAX_FIELD + 3)


class _Lines:
    """The text's lines for csv.reader, counting them and refusing a row that grows past MAX_RECORD
    (a quote that is never closed makes one row of the rest of the file)."""

    def __init__(self, text: str) -> None:
        self._lines = iter(io.StringIO(text, newline=""))
        self.line = 0  # lines handed out so far
        self.start = 1  # where the row being read starts
        self._chars = 0
        self.first = ""  # the row's first line: where a too-long cell or an unclosed quote is looked for
        self.row = 0
        self.names: list[str] = []  # the header's column names, once read

    def begin(self, row: int) -> None:
        self.row, self.start, self._chars, self.first = row, self.line + 1, 0, ""

    def column(self, index: int | None) -> str | None:
        if index is None:
            return None
        return self.names[index] if index < len(self.names) and self.names[index] else f"{index + 1} (counting from 1)"

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.line += 1
        self._chars += len(line)
        if not self.first:
            self.first = line
        if self._chars > MAX_RECORD:
            column = self.column(_culprit(self.first[:MAX_RECORD + 1]))
            if self.line > self.start:
                reason = (f"is longer than {MAX_RECORD} characters, running on from line {self.start} to line "
                          f"{self.line}: a quote (\") that is not closed swallows the lines after it")
            else:
                reason = f"is longer than {MAX_RECORD} characters" + (
                    f"; its cell in column {column} alone has more than the {MAX_FIELD} allowed" if column else "")
            raise CsvFormatError(reason, row=self.row, column=column, line=self.start)
        return line


_QUOTED = re.compile(r'"(?:[^"]|"")*"')
_PLAIN = re.compile(r"[^,\r\n]*")


def _culprit(line: str) -> int | None:
    """The index of the first cell on this line that is longer than MAX_FIELD or opens a quote it does not close."""
    pos, index = 0, 0
    while True:
        found = _QUOTED.match(line, pos) if line.startswith('"', pos) else _PLAIN.match(line, pos)
        if found is None or found.end() - pos > MAX_FIELD:
            return index
        pos = line.find(",", found.end())
        if pos < 0:
            return None
        pos, index = pos + 1, index + 1


def _csv_reason(exc: csv.Error) -> str:
    text = str(exc)
    if "unexpected end of data" in text:
        return ("has a quote (\") that is never closed: the rest of the file would become one cell; close it, "
                "or write a quote inside a quoted cell as \"\"")
    if "expected after" in text:
        return "has text after a closing quote (\"); write a quote inside a quoted cell as \"\""
    return f"cannot be read as CSV ({text})"


def read_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """(row, cells) for every row, the header first (row 1); blank rows are counted but not yielded.

    Raises CsvFormatError, naming the row (and column), for what makes the file unreadable: an unclosed or
    stray quote, a cell longer than MAX_FIELD, a row longer than MAX_RECORD, a row with more cells than the
    header. Nothing is yielded past such a row, so a caller that collects first writes nothing.
    """
    lines = _Lines(text)
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    row = 0
    while True:
        row += 1
        lines.begin(row)
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            unclosed = "unexpected end of data" in str(exc)  # then the cell whose quote opens is known
            column = lines.column(_culprit(lines.first[:MAX_RECORD + 1])) if unclosed else None
            raise CsvFormatError(_csv_reason(exc), row=row, column=column, line=lines.start) from None
        if not cells:
            continue
        for i, cell in enumerate(cells):
            if len(cell) > MAX_FIELD:
                name = lines.column(i)
                raise CsvFormatError(f"has a cell of {len(cell)} characters; at most {MAX_FIELD} are allowed"
                                     + (" (a quote that is not closed swallows the lines after it)"
                                        if "\n" in cell or "\r" in cell else ""),
                                     row=row, column=name, line=lines.start)
        if header is None:
            header = lines.names = [h.strip() for h in cells]
        elif len(cells) > len(header):
            raise CsvFormatError(f"has {len(cells)} cells but the header has {len(header)} columns: a comma in a "
                                 "value must be inside quotes", row=row, line=lines.start)
        yield row, cells


def _sum(values: list[str]) -> str:
    """Sum of amount cells, or "invalid" (the line's own check then names the bad cell)."""
    try:
        return f"{sum((parse_amount(v) for v in values), Decimal(0)):.2f}"
    except (ValueError, ArithmeticError):
        return "invalid"


def parse_csv(text: str, *, seller_tax_id: str, seller_name: str,
              max_rows: int) -> tuple[list[CsvInvoice], list[RowError]]:
    """The file's invoices and the errors of single rows; CsvFormatError when the file as a whole is refused."""
    rows = read_rows(text)
    first = next(rows, None)
    header = first[1] if first is not None else []
    header = [h.strip() for h in header]
    missing = sorted(REQUIRED - set(header))
    if missing:
        raise CsvFormatError(f"the header row lacks column(s): {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    unknown = sorted(set(header) - set(COLUMNS))
    if unknown:
        raise CsvFormatError(f"unknown column(s): {', '.join(unknown)}; expected {', '.join(COLUMNS)}")
    records = []
    for n, row_cells in rows:
        if n - 1 > max_rows:
            raise CsvFormatError(f"more than {max_rows} rows; split the file (the CLI does this for you)")
        records.append((n, dict(zip(header, row_cells, strict=False))))
    grouped: dict[str, CsvInvoice] = {}
    errors: list[RowError] = []
    for n, rec in records:
        cells = {col: (rec.get(col) or "").strip() for col in COLUMNS}  # optional columns may be absent
        number = cells["number"]
        if not number:
            errors.append(RowError(n, "number", "is required"))
            continue
        inv = grouped.get(number)
        if inv is None:
            inv = grouped[number] = CsvInvoice(number)
            inv.raw = {
                "number": number, "kind": cells["kind"], "issue_date": cells["issue_date"],
                "seller": {"tax_id": seller_tax_id, "name": seller_name},
                "buyer": {"tax_id": cells["buyer_tax_id"] or None, "name": cells["buyer_name"]},
                "lines": [], "currency": "CNY", "remarks": cells.get("remarks") or None,
            }
        else:
            for col in ("kind", "issue_date", "buyer_tax_id", "buyer_name"):
                first = inv.raw["buyer"]["tax_id" if col == "buyer_tax_id" else "name"] if col.startswith("buyer") \
                    else inv.raw[col]
                if (cells[col] or None) != (first or None):
                    errors.append(RowError(n, col, f"differs from row {inv.rows[0]} of the same invoice", number))
        inv.rows.append(n)
        inv.raw["lines"].append({k: cells[col] for k, col in _LINE_FIELD.items()})
    for inv in grouped.values():
        lines = inv.raw["lines"]
        inv.raw["total_amount"] = _sum([ln["amount"] for ln in lines])
        inv.raw["total_tax"] = _sum([ln["tax_amount"] for ln in lines])
        try:
            inv.raw["total"] = f"{Decimal(inv.raw['total_amount']) + Decimal(inv.raw['total_tax']):.2f}"
        except (ValueError, ArithmeticError):
            inv.raw["total"] = "invalid"
    return list(grouped.values()), errors


def row_errors(inv: CsvInvoice, errors: list[FieldError]) -> list[RowError]:
    """Translate invoice field paths back to the rows and columns of the file."""
    out = []
    for e in errors:
        row, column = inv.rows[0], e.path
        if e.path.startswith("lines["):
            idx = int(e.path[6:e.path.index("]")])
            row = inv.rows[idx] if idx < len(inv.rows) else inv.rows[0]
            column = _LINE_FIELD.get(e.path.split(".", 1)[-1], e.path)
        elif e.path.startswith("buyer."):
            column = "buyer_" + e.path.split(".", 1)[1].replace("name", "name")
        elif e.path in ("total_amount", "total_tax", "total"):
            column = "line_amount" if e.path == "total_amount" else "line_tax_amount"
        elif e.path.split(".")[0] not in _INVOICE_FIELDS:
            column = e.path
        out.append(RowError(row, column, e.reason, inv.number))
    return out
