"""Field validators both HTTP doors use (the issuer's API and the tax store's): text that PostgreSQL
jsonb and the content hash can hold, and money as bounded decimal strings (see shared.money)."""

from __future__ import annotations

import re
from typing import Any

from shared.money import parse_amount, parse_decimal

__all__ = ["amount_text", "clean_text", "decimal_text", "must_be_string"]

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
