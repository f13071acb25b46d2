"""Test data for the pure-logic unit tests: a valid invoice, and helpers to validate one."""

from __future__ import annotations

import copy
import uuid
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from services.issuer.invoices.issuing import validate_item
from services.issuer.schemas import InvoiceCreate
from services.issuer.tenants import Tenant
from shared.errors import FieldError

TZ = ZoneInfo("Asia/Shanghai")
SELLER_TAX_ID = "914403001922038216"
BUYER_TAX_ID = "91440300708461136T"
OTHER_VALID_TAX_ID = "91330100716105852F"
WINDOW_DAYS = 365
TENANT = Tenant(uuid.UUID("00000000-0000-4000-8000-000000000001"), "Shenzhen Seller Co.", SELLER_TAX_ID)


def today_cn() -> date:
    return datetime.now(TZ).date()


# One "today" for the whole run, so a test crossing midnight stays consistent with itself.
TODAY = today_cn()


def number_for(issue: date, serial: int = 1) -> str:
    """A 20-digit number whose first two digits are the year of `issue`."""
    return f"{issue.year % 100:02d}{serial:018d}"


def make_line(**overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "description": "Consulting services",
        "tax_code": "3040201000000000000",
        "quantity": "2",
        "unit_price": "100.00",
        "amount": "200.00",
        "tax_rate": "0.13",
        "tax_amount": "26.00",
    }
    line.update(overrides)
    return line


def make_invoice(**overrides: Any) -> dict[str, Any]:
    """A valid invoice as the ERP would POST it; keyword arguments replace top-level fields.

    The number follows issue_date's year unless `number` is given.
    """
    issue = overrides.get("issue_date", TODAY)
    issue_d = issue if isinstance(issue, date) else None
    doc: dict[str, Any] = {
        "number": number_for(issue_d or TODAY),
        "kind": "special",
        "issue_date": (issue_d or TODAY).isoformat(),
        "seller": {"tax_id": SELLER_TAX_ID, "name": "Shenzhen Seller Co."},
        "buyer": {"tax_id": BUYER_TAX_ID, "name": "Shenzhen Buyer Ltd."},
        "lines": [make_line()],
        "total_amount": "200.00",
        "total_tax": "26.00",
        "total": "226.00",
        "currency": "CNY",
        "remarks": "PO 4711",
    }
    for key, value in overrides.items():
        doc[key] = value.isoformat() if key == "issue_date" and isinstance(value, date) else copy.deepcopy(value)
    return doc


def validate(raw: Any, *, today: date = TODAY, tenant: Tenant = TENANT,
             window_days: int = WINDOW_DAYS) -> InvoiceCreate | list[FieldError]:
    return validate_item(raw, tenant=tenant, today=today, window_days=window_days)


def errors_of(raw: Any, **kwargs: Any) -> list[FieldError]:
    result = validate(raw, **kwargs)
    assert isinstance(result, list), f"expected validation errors, got a valid invoice: {result!r}"
    assert result, "an empty error list must never be returned"
    return result


def paths_of(raw: Any, **kwargs: Any) -> set[str]:
    return {e.path for e in errors_of(raw, **kwargs)}


def accepted(raw: Any, **kwargs: Any) -> InvoiceCreate:
    result = validate(raw, **kwargs)
    assert isinstance(result, InvoiceCreate), f"expected a valid invoice, got errors: {result!r}"
    return result
