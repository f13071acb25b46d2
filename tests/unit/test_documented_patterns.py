"""The patterns the OpenAPI documents give (a month, an amount filter, text, names, amounts, decimals, USCCs,
dates) accept exactly what the validators accept, so a client (or schemathesis) that follows the document is
never surprised by a 422."""

from __future__ import annotations

import re
from datetime import date

from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from services.issuer.api.invoices import AMOUNT_FILTER, _amount_filter
from shared.errors import ValidationFailed
from shared.money import AMOUNT_PATTERN, DECIMAL_PATTERN, parse_amount, parse_decimal
from shared.uscc import USCC_PATTERN, check_char, uscc_error
from shared.validators import MONTH_PATTERN, NAME_PATTERN, TEXT_PATTERN, IsoDate, clean_text, parse_month

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
    except (ValidationFailed, ValueError, ValidationError):
        return False
    return True


@given(_MONTHISH)
def test_the_month_pattern_is_parse_month(value: str) -> None:
    assert _matches(MONTH_PATTERN, value) == _accepts(parse_month, value), value


@given(_AMOUNTISH)
def test_the_amount_filter_pattern_is_the_filter(value: str) -> None:
    assert _matches(AMOUNT_FILTER, value) == _accepts(lambda v: _amount_filter("min_total", v), value), value


# --- the patterns the models carry into the documents (shared.validators, shared.money, shared.uscc) --------

_TEXTISH = st.one_of(st.text(max_size=12), st.text(alphabet=st.characters(max_codepoint=0x3000), max_size=8),
                     st.sampled_from([" ", "\t\n", "a\x00", "a\x07b", "\u3000", " x ", "\x7f"]))


@given(_TEXTISH)
def test_the_text_pattern_is_clean_text(value: str) -> None:
    assert _matches(TEXT_PATTERN, value) == _accepts(clean_text, value), repr(value)


@given(_TEXTISH)
def test_the_name_pattern_is_a_stripped_name(value: str) -> None:
    # A name is clean text with something left once white space is stripped (the issuer's models strip).
    assert _matches(NAME_PATTERN, value) == (_accepts(clean_text, value) and value.strip() != ""), repr(value)


@given(_AMOUNTISH)
def test_the_amount_and_decimal_patterns_are_the_parsers(value: str) -> None:
    assert _matches(AMOUNT_PATTERN, value) == _accepts(parse_amount, value), value
    assert _matches(DECIMAL_PATTERN, value) == _accepts(parse_decimal, value), value


@given(st.one_of(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=17, max_size=19),
                 st.text(max_size=18)))
def test_a_code_with_the_right_check_character_is_valid_exactly_when_it_matches_the_uscc_pattern(value: str) -> None:
    fixed = value[:17] + check_char(value[:17]) if _matches(r"^[0-9A-HJ-NPQRTUWXY]{17}", value[:17]) else value
    assert _matches(USCC_PATTERN, fixed) == (uscc_error(fixed) is None), fixed


@given(st.one_of(st.text(max_size=11), st.dates().map(str), st.integers(), st.floats(allow_nan=False),
                 st.sampled_from(["0.0", "1700000000", "2026-02-30", "2026-1-5", "2026-12-03T00:00:00"])))
def test_a_date_is_only_yyyy_mm_dd(value: object) -> None:
    taken = _accepts(TypeAdapter(IsoDate).validate_python, value)  # type: ignore[arg-type]
    iso = isinstance(value, str) and _matches(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", value)
    assert taken == (iso and _accepts(date.fromisoformat, value)), value  # type: ignore[arg-type]
