"""Test data: valid USCCs, invoice numbers and invoices, random per test so tests never collide."""

from __future__ import annotations

import random
import secrets
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from shared.money import round_cents
from shared.uscc import ALPHABET, check_char


def uscc() -> str:
    """A random, well-formed USCC (registration authority 9 = enterprise, type 1 = company)."""
    body = "91" + "".join(random.choice("0123456789") for _ in range(6)) + \
        "".join(random.choice(ALPHABET) for _ in range(9))
    return body + check_char(body)


def today() -> date:
    return datetime.now(ZoneInfo("Asia/Shanghai")).date()


def number(issue: date | None = None) -> str:
    issue = issue or today()
    return f"{issue.year % 100:02d}" + "".join(secrets.choice("0123456789") for _ in range(18))


def line(quantity: str = "2", unit_price: str = "100.00", rate: str = "0.13", **over: Any) -> dict[str, Any]:
    amount = round_cents(Decimal(quantity) * Decimal(unit_price))
    tax = round_cents(amount * Decimal(rate))
    return {"description": "技术服务费 technical services", "tax_code": "3040201000000000000", "quantity": quantity,
            "unit_price": unit_price, "amount": f"{amount}", "tax_rate": rate, "tax_amount": f"{tax}", **over}


def invoice(seller_tax_id: str, *, lines: list[dict[str, Any]] | None = None, **over: Any) -> dict[str, Any]:
    lines = lines or [line()]
    total_amount = sum(Decimal(ln["amount"]) for ln in lines)
    total_tax = sum(Decimal(ln["tax_amount"]) for ln in lines)
    doc = {
        "number": number(), "kind": "special", "issue_date": today().isoformat(),
        "seller": {"tax_id": seller_tax_id, "name": "测试销方 Seller Co."},
        "buyer": {"tax_id": "91440300708461136T", "name": "深圳市腾讯计算机系统有限公司"},
        "lines": lines, "total_amount": f"{total_amount:.2f}", "total_tax": f"{total_tax:.2f}",
        "total": f"{total_amount + total_tax:.2f}", "currency": "CNY", "remarks": "测试 test",
    }
    doc.update(over)
    return doc
