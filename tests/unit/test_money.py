"""Money as Decimal strings: parsing is strict and bounded, rounding is half-up."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.money import CENT, TAX_RATES, TOLERANCE, fmt, parse_amount, parse_decimal, round_cents


@pytest.mark.parametrize(("text", "value"), [
    ("0.00", Decimal("0")),
    ("100.00", Decimal("100")),
    ("226.00", Decimal("226")),
    ("-0.01", Decimal("-0.01")),
    ("999999999999.99", Decimal("999999999999.99")),
])
def test_parse_amount_accepts_two_place_strings(text: str, value: Decimal) -> None:
    parsed = parse_amount(text)
    assert isinstance(parsed, Decimal)
    assert parsed == value


@pytest.mark.parametrize("text", [
    "", "100", "100.0", "100.000", ".50", "1e5", "1E5", "1.00e2", "+1.00", "1,000.00", "1_000.00",
    " 1.00", "1.00 ", "NaN", "Infinity", "-", "abc", "1" + "0" * 50, "1" + "0" * 50 + ".00",
    "1234567890123.00",  # 13 integer digits: over the bound
])
def test_parse_amount_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="2 decimal places"):
        parse_amount(text)


@pytest.mark.parametrize(("text", "value"), [
    ("2", Decimal("2")),
    ("2.0", Decimal("2")),
    ("1.5", Decimal("1.5")),
    ("0.13", Decimal("0.13")),
    ("-0.01", Decimal("-0.01")),
    ("0.00000001", Decimal("0.00000001")),
    ("999999999999.99999999", Decimal("999999999999.99999999")),
])
def test_parse_decimal_accepts(text: str, value: Decimal) -> None:
    assert parse_decimal(text) == value


@pytest.mark.parametrize("text", [
    "", "1e5", "1E-2", "1" + "0" * 50, "1.123456789", "1234567890123", ".5", "5.", "+2", "1_000", "NaN",
    "Infinity", "-Infinity", " 2", "2 ", "0x10", "1/2",
])
def test_parse_decimal_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="decimal string"):
        parse_decimal(text)


@pytest.mark.parametrize(("value", "rounded"), [
    ("0.125", "0.13"),
    ("0.135", "0.14"),
    ("0.145", "0.15"),
    ("2.675", "2.68"),  # a float would give 2.67
    ("0.005", "0.01"),
    ("0.004999", "0.00"),
    ("-0.125", "-0.13"),  # half away from zero
    ("26", "26.00"),
    ("25.994", "25.99"),
])
def test_round_cents_is_half_up(value: str, rounded: str) -> None:
    result = round_cents(Decimal(value))
    assert result == Decimal(rounded)
    assert str(result) == rounded
    assert result.as_tuple().exponent == -2


def test_fmt_gives_two_places() -> None:
    assert fmt(Decimal("226")) == "226.00"
    assert fmt(Decimal("0.125")) == "0.13"
    assert fmt(Decimal("1E+2")) == "100.00"


def test_constants() -> None:
    assert CENT == Decimal("0.01")
    assert TOLERANCE == Decimal("0.01")
    assert {Decimal("0"), Decimal("0.01"), Decimal("0.03"), Decimal("0.05"), Decimal("0.06"), Decimal("0.09"),
            Decimal("0.13")} == TAX_RATES
    assert Decimal("0.130") in TAX_RATES
    assert Decimal("0.10") not in TAX_RATES
    assert Decimal("0.17") not in TAX_RATES


# Regressions: `$` matched before a trailing newline and `\\d` matched any Unicode digit.
@pytest.mark.parametrize("parse", [parse_amount, parse_decimal])
@pytest.mark.parametrize("text", ["100.00\n", "100.00\r\n", "\n100.00"])
def test_newlines_are_rejected(parse, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="decimal string"):
        parse(text)


@pytest.mark.parametrize("parse", [parse_amount, parse_decimal])
@pytest.mark.parametrize("text", ["\u0661\u0660\u0660.\u0660\u0660", "\uff11\uff10\uff10.\uff10\uff10"])
def test_non_ascii_digits_are_rejected(parse, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="decimal string"):
        parse(text)
