"""One content fingerprint for an invoice, computed the same way by the issuer, the tax store and
the reconciler: SHA-256 over the canonical document serialised with sorted keys.

The document itself keeps every decimal exactly as it was sent ("100.00" stays "100.00"); only the hash
treats spellings of the same number alike. Inside the hash a line's quantity, unit price and tax rate are
written without trailing zeros ("100.00" and "100" hash the same), so a resubmission that spells a number
differently is the same invoice. Amounts always carry exactly two places and are hashed as they are.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import orjson

from shared.money import parse_decimal

__all__ = ["SCALE_FREE", "content_hash", "hash_form"]

SCALE_FREE = ("quantity", "unit_price", "tax_rate")  # line fields whose scale does not change the invoice


def _scale_free(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        number: Decimal = parse_decimal(value)  # bounded: a huge exponent is never expanded
    except ValueError:
        return value  # not a bounded decimal: hashed as sent (validation refuses it anyway)
    return format(number.normalize(), "f")


def hash_form(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as the hash sees it: the scale-free line fields without trailing zeros."""
    lines = doc.get("lines")
    if not isinstance(lines, list):
        return doc
    return {**doc, "lines": [
        {**ln, **{k: _scale_free(ln[k]) for k in SCALE_FREE if k in ln}} if isinstance(ln, dict) else ln
        for ln in lines
    ]}


def content_hash(doc: dict[str, Any]) -> str:
    """Equal documents (as parsed JSON) give equal hashes, whatever their key order and however their
    quantities, unit prices and tax rates are scaled."""
    return hashlib.sha256(orjson.dumps(hash_form(doc), option=orjson.OPT_SORT_KEYS)).hexdigest()
