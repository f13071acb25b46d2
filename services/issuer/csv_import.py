"""CSV import of historical invoices (批量导入): one row per invoice line, rows grouped by number.

Totals are derived from the lines; the seller is the tenant. Errors come back per row and column, and
every invoice without errors is kept.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.errors import FieldError
from shared.money import parse_amount

__all__ = ["COLUMNS", "CsvInvoice", "REQUIRED", "RowError", "parse_csv", "row_errors"]

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


class CsvFormatError(ValueError):
    pass


def _sum(values: list[str]) -> str:
    """Sum of amount cells, or "invalid" (the line's own check then names the bad cell)."""
    try:
        return f"{sum((parse_amount(v) for v in values), Decimal(0)):.2f}"
    except (ValueError, ArithmeticError):
        return "invalid"


def parse_csv(text: str, *, seller_tax_id: str, seller_name: str,
              max_rows: int) -> tuple[list[CsvInvoice], list[RowError]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = sorted(REQUIRED - set(header))
    if missing:
        raise CsvFormatError(f"the header row lacks column(s): {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    unknown = sorted(set(header) - set(COLUMNS))
    if unknown:
        raise CsvFormatError(f"unknown column(s): {', '.join(unknown)}; expected {', '.join(COLUMNS)}")
    reader.fieldnames = header
    grouped: dict[str, CsvInvoice] = {}
    errors: list[RowError] = []
    for n, rec in enumerate(reader, start=2):
        if n - 1 > max_rows:
            raise CsvFormatError(f"more than {max_rows} rows; split the file (the CLI does this for you)")
        if None in rec:
            errors.append(RowError(n, "(row)", "has more cells than the header"))
            continue
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
