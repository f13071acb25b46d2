"""Money as Decimal with two places; never floats. Rounding is half-up, as the tax rules say."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

__all__ = [
    "AMOUNT_PATTERN", "CENT", "DECIMAL_PATTERN", "TOLERANCE", "TAX_RATES", "fmt", "parse_amount", "parse_decimal",
    "round_cents",
]

CENT = Decimal("0.01")
TOLERANCE = Decimal("0.01")
TAX_RATES = frozenset(Decimal(r) for r in ("0", "0.01", "0.03", "0.05", "0.06", "0.09", "0.13"))

# Bounded on purpose: a 12-digit integer part covers any real invoice and keeps arithmetic cheap.
# ASCII digits only (\d would admit full-width and Arabic-Indic digits); fullmatch, so no trailing newline.
AMOUNT_PATTERN = r"^-?[0-9]{1,12}\.[0-9]{2}$"
DECIMAL_PATTERN = r"^-?[0-9]{1,12}(\.[0-9]{1,8})?$"
_AMOUNT = re.compile(AMOUNT_PATTERN, re.ASCII)
_DECIMAL = re.compile(DECIMAL_PATTERN, re.ASCII)


def parse_amount(text: str) -> Decimal:
    """'226.00' -> Decimal; exactly two decimal places, bounded size; ValueError otherwise."""
    if not _AMOUNT.fullmatch(text):
        raise ValueError("must be a decimal string with exactly 2 decimal places, e.g. \"100.00\"")
    return Decimal(text)


def parse_decimal(text: str) -> Decimal:
    """A bounded decimal string (up to 12 integer and 8 fractional digits)."""
    if not _DECIMAL.fullmatch(text):
        raise ValueError("must be a decimal string with up to 12 integer and 8 decimal digits, e.g. \"2\" or \"1.5\"")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError("not a decimal number") from exc


def round_cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def fmt(value: Decimal) -> str:
    """Canonical 2-place string."""
    return str(round_cents(value))
