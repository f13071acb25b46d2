"""The patterns the OpenAPI documents give for a month and an amount filter accept exactly what the validators
accept, so a client (or schemathesis) that follows the document is never surprised by a 422."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from services.issuer.api.invoices import AMOUNT_FILTER, _amount_filter
from shared.errors import ValidationFailed
from shared.validators import MONTH_PATTERN, parse_month

_MONTHISH = st.one_of(st.text(max_size=9), st.just("2026-11\n"), st.just("２０２６-11"),
                      st.from_regex(r"[0-9]{4}-[0-9]{2}", fullmatch=True),
                      st.from_regex(r"20[0-9]{2}-[01][0-9]", fullmatch=True))
_AMOUNTISH = st.one_of(st.text(max_size=16), st.from_regex(r"-?[0-9]{1,14}(\.[0-9]{1,3})?", fullmatch=True))


def _matches(pattern: str, value: str) -> bool:
    """As JSON Schema (ECMA-262) reads the pattern: its `$` does not match before a trailing newline."""
    return re.search(pattern.removesuffix("$") + r"\Z", value) is not None


def _accepts(fn, value: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        fn(value)
    except (ValidationFailed, ValueError):
        return False
    return True


@given(_MONTHISH)
def test_the_month_pattern_is_parse_month(value: str) -> None:
    assert _matches(MONTH_PATTERN, value) == _accepts(parse_month, value), value


@given(_AMOUNTISH)
def test_the_amount_filter_pattern_is_the_filter(value: str) -> None:
    assert _matches(AMOUNT_FILTER, value) == _accepts(lambda v: _amount_filter("min_total", v), value), value
