"""Cross-field invoice rules (design §4): the seller, the number, the dates, the arithmetic.

Pure functions: given a structurally valid invoice, list every rule it breaks with the exact field
path. Nothing here touches the database.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from services.issuer.schemas import InvoiceCreate
from shared.content import content_hash
from shared.errors import FieldError
from shared.money import TAX_RATES, TOLERANCE, fmt, round_cents
from shared.uscc import uscc_error

__all__ = ["canonical", "check_invoice", "content_hash"]


def check_invoice(inv: InvoiceCreate, *, seller_tax_id: str, today: date, window_days: int,
                  allow_negative: bool = False) -> list[FieldError]:
    errors: list[FieldError] = []
    add = lambda path, reason: errors.append(FieldError(path, reason))  # noqa: E731

    if inv.seller.tax_id is None:
        add("seller.tax_id", "is required")
    elif (why := uscc_error(inv.seller.tax_id)) is not None:
        add("seller.tax_id", why)
    elif inv.seller.tax_id != seller_tax_id:
        add("seller.tax_id", "must be the tax id of the enterprise this API key belongs to")

    if inv.buyer.tax_id is None or inv.buyer.tax_id == "":
        if inv.kind == "special":
            add("buyer.tax_id", "is required on a special VAT invoice (专票)")
    elif (why := uscc_error(inv.buyer.tax_id)) is not None:
        add("buyer.tax_id", why)

    if inv.number[:2] != f"{inv.issue_date.year % 100:02d}":
        add("number", f"digits 1-2 must be the year of issue_date ({inv.issue_date.year % 100:02d})")

    if inv.issue_date > today:
        add("issue_date", f"is in the future (today is {today.isoformat()})")
    elif inv.issue_date < today - timedelta(days=window_days):
        add("issue_date", f"is older than the accepted window of {window_days} days")

    sum_amount = Decimal(0)
    sum_tax = Decimal(0)
    for i, line in enumerate(inv.lines):
        p = f"lines[{i}]"
        qty, price = Decimal(line.quantity), Decimal(line.unit_price)
        amount, tax, rate = Decimal(line.amount), Decimal(line.tax_amount), Decimal(line.tax_rate)
        sum_amount += amount
        sum_tax += tax
        if rate not in TAX_RATES:
            add(f"{p}.tax_rate", f"must be one of {', '.join(sorted(str(r) for r in TAX_RATES))}")
        if not allow_negative:
            if qty <= 0:
                add(f"{p}.quantity", "must be positive")
            if price <= 0:
                add(f"{p}.unit_price", "must be positive")
            if amount <= 0:
                add(f"{p}.amount", "must be positive")
            if tax < 0:
                add(f"{p}.tax_amount", "must not be negative")
        expected_amount = round_cents(qty * price)
        if abs(amount - expected_amount) > TOLERANCE:
            add(f"{p}.amount", f"must equal quantity x unit_price = {fmt(expected_amount)}")
        if rate in TAX_RATES:
            expected_tax = round_cents(amount * rate)
            if abs(tax - expected_tax) > TOLERANCE:
                add(f"{p}.tax_amount", f"must equal round(amount x tax_rate, 2) = {fmt(expected_tax)}")

    total_amount, total_tax, total = Decimal(inv.total_amount), Decimal(inv.total_tax), Decimal(inv.total)
    if total_amount != sum_amount:
        add("total_amount", f"must equal the sum of line amounts ({fmt(sum_amount)})")
    if total_tax != sum_tax:
        add("total_tax", f"must equal the sum of line tax amounts ({fmt(sum_tax)})")
    if total != total_amount + total_tax:
        add("total", f"must equal total_amount + total_tax ({fmt(total_amount + total_tax)})")
    if not allow_negative and total <= 0:
        add("total", "must be positive")
    return errors


def canonical(inv: InvoiceCreate) -> dict[str, object]:
    """The invoice in one canonical form: what is stored, published and shown back.

    Spellings that mean the same are made one (tax ids upper-case and stripped, an empty buyer tax id or
    remark is null); decimals keep the scale they were sent with ("100.00" stays "100.00"). content_hash()
    treats 100 and 100.00 alike, so duplicate detection does not depend on the scale.
    """
    return {
        "number": inv.number,
        "kind": inv.kind,
        "issue_date": inv.issue_date.isoformat(),
        "seller": {"tax_id": inv.seller.tax_id, "name": inv.seller.name},
        "buyer": {"tax_id": inv.buyer.tax_id or None, "name": inv.buyer.name},
        "lines": [
            {
                "description": ln.description, "tax_code": ln.tax_code, "quantity": ln.quantity,
                "unit_price": ln.unit_price, "amount": ln.amount, "tax_rate": ln.tax_rate,
                "tax_amount": ln.tax_amount,
            }
            for ln in inv.lines
        ],
        "total_amount": inv.total_amount,
        "total_tax": inv.total_tax,
        "total": inv.total,
        "currency": inv.currency,
        "remarks": inv.remarks or None,
    }

