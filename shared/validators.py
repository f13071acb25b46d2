"""Field validators the HTTP doors and the CLI share: text that PostgreSQL jsonb and the content hash can
hold, money as bounded decimal strings (see shared.money), and calendar months."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from shared.errors import FieldError, ValidationFailed
from shared.money import parse_amount, parse_decimal

__all__ = [
    "FIRST_MONTH", "LAST_MONTH", "MONTH_PATTERN", "MONTH_RULE", "amount_text", "clean_text", "decimal_text",
    "must_be_string", "parse_month",
]

_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """No NUL (jsonb cannot hold it), no lone surrogates (orjson cannot hash them), no control characters."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if _SURROGATES.search(value):
        raise ValueError("must be valid Unicode (lone surrogate code points are not allowed)")
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        raise ValueError("must not contain control characters")
    return value


def must_be_string(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError('must be a decimal string such as "100.00" (JSON numbers are not accepted for money)')
    return value


def amount_text(value: str) -> str:
    parse_amount(value)
    return value


def decimal_text(value: str) -> str:
    parse_decimal(value)
    return value


# The months a summary can be asked for. A fixed range, not one that moves with a clock: the issuer, the
# reconciler and the CLI must agree on every month whatever their clocks and time zones say.
FIRST_MONTH = date(2000, 1, 1)
LAST_MONTH = date(2099, 12, 1)
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")  # ASCII digits only (\d would take full-width ones)
MONTH_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
"""What parse_month accepts, as a JSON-schema pattern for the OpenAPI documents."""
MONTH_RULE = f"must be a calendar month as YYYY-MM from {FIRST_MONTH:%Y-%m} to {LAST_MONTH:%Y-%m}, e.g. 2026-11"


def parse_month(value: str, *, field: str = "month") -> date:
    """'2026-11' -> date(2026, 11, 1). Anything else — another format, month 00 or 13, a year outside
    FIRST_MONTH..LAST_MONTH — is ValidationFailed (422) naming `field`, with the same reason everywhere."""
    found = _MONTH.fullmatch(value) if isinstance(value, str) and len(value) == 7 else None
    if found is not None and 1 <= int(found[2]) <= 12:
        month = date(int(found[1]), int(found[2]), 1)
        if FIRST_MONTH <= month <= LAST_MONTH:
            return month
    raise ValidationFailed([FieldError(field, MONTH_RULE)])
