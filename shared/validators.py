"""Field validators the HTTP doors and the CLI share: text that PostgreSQL jsonb and the content hash can
hold, money as bounded decimal strings (see shared.money), and calendar months."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from pydantic import BeforeValidator, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

from shared.errors import FieldError, ValidationFailed
from shared.money import AMOUNT_PATTERN, DECIMAL_PATTERN, parse_amount, parse_decimal

__all__ = [
    "AMOUNT_PATTERN", "AMOUNT_SCHEMA", "CLEAN_NAME", "CLEAN_TEXT", "DECIMAL_PATTERN", "DECIMAL_SCHEMA", "FIRST_MONTH",
    "IsoDate", "LAST_MONTH", "MONTH_PATTERN", "MONTH_RULE", "NAME_PATTERN", "TEXT_PATTERN", "JsonPattern",
    "amount_text", "clean_text", "decimal_text", "must_be_string", "parse_month",
]

_SURROGATES = re.compile("[\ud800-\udfff]")
# Lone surrogates are refused too, but are not Unicode text at all: a pattern cannot (and need not) name them.
_NOT_TEXT = "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f"
TEXT_PATTERN = f"^[^{_NOT_TEXT}]*$"
"""What clean_text lets through, as a JSON-schema pattern (the OpenAPI documents say it on every text field)."""
NAME_PATTERN = f"^[^{_NOT_TEXT}]*[^\\s{_NOT_TEXT}][^{_NOT_TEXT}]*$"
"""Text with at least one character that is not white space (what a required name is once stripped)."""


class _CleanText:
    """`Annotated[str, CLEAN_TEXT]`: clean_text after the string checks, and its pattern in the JSON schema."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(clean_text, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out = handler(schema)
        out.setdefault("pattern", self.pattern)
        return out


CLEAN_TEXT = _CleanText(TEXT_PATTERN)
CLEAN_NAME = _CleanText(NAME_PATTERN)


class JsonPattern:
    """`Annotated[str, …, JsonPattern(p)]`: says in the JSON schema what a validator of the field checks in code,
    so the OpenAPI document is as strict as the validator (it validates nothing itself)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out = handler(schema)
        out["pattern"] = self.pattern
        return out


AMOUNT_SCHEMA = JsonPattern(AMOUNT_PATTERN)
DECIMAL_SCHEMA = JsonPattern(DECIMAL_PATTERN)


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def _iso_date(value: Any) -> Any:
    """Only YYYY-MM-DD: pydantic's lax date would also take 1700000000 or "0.0" as a time stamp."""
    if isinstance(value, str) and not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date as YYYY-MM-DD, e.g. 2026-11-30")
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("must be a date as YYYY-MM-DD (a string), not a number")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
"""A calendar date written YYYY-MM-DD (JSON schema: format date), and nothing else."""


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
