"""Unified Social Credit Code (统一社会信用代码), GB 32100-2015."""

from __future__ import annotations

__all__ = ["ALPHABET", "USCC_PATTERN", "check_char", "is_valid_uscc", "uscc_error"]

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 characters: no I, O, S, V, Z
USCC_PATTERN = "^[0-9A-HJ-NPQRTUWXY]{18}$"
"""The characters of a USCC (its check character is beyond a pattern: uscc_error says when it is wrong)."""
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
_WEIGHTS = [pow(3, i, 31) for i in range(17)]  # 1, 3, 9, 27, 19, 26, 16, ...


def check_char(first17: str) -> str:
    """The check character for the first 17 characters of a USCC."""
    total = sum(_INDEX[c] * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def uscc_error(code: str) -> str | None:
    """Why `code` is not a valid USCC, or None when it is."""
    if len(code) != 18:
        return f"must be 18 characters, got {len(code)}"
    bad = sorted({c for c in code if c not in _INDEX})
    if bad:
        return f"contains characters not allowed in a USCC: {''.join(bad)!r} (allowed: digits and {ALPHABET[10:]})"
    expected = check_char(code[:17])
    if code[17] != expected:
        return f"check character is {code[17]!r}, expected {expected!r}"
    return None


def is_valid_uscc(code: str) -> bool:
    return uscc_error(code) is None
