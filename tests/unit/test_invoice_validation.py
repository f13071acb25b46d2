"""Design §4 validation: every rule broken on its own names the exact field path.

`validate_item` runs the structure (schemas.py) and then the cross-field rules (rules.py).
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from decimal import Decimal

import pytest

from services.issuer.invoices.issuing import validate_item
from services.issuer.schemas import InvoiceCreate
from services.issuer.tenants import Tenant
from shared.money import TAX_RATES, fmt, round_cents

from .factories import (
    BUYER_TAX_ID,
    OTHER_VALID_TAX_ID,
    SELLER_TAX_ID,
    TENANT,
    TODAY,
    WINDOW_DAYS,
    accepted,
    errors_of,
    make_invoice,
    make_line,
    number_for,
    paths_of,
    validate,
)


def _reason(raw: dict, path: str, **kwargs) -> str:  # type: ignore[type-arg,no-untyped-def]
    reasons = [e.reason for e in errors_of(raw, **kwargs) if e.path == path]
    assert reasons, f"no error for {path}"
    return reasons[0]


# --- the baseline ------------------------------------------------------------------------------

def test_factory_invoice_is_valid_and_kept_as_sent() -> None:
    raw = make_invoice()
    inv = accepted(raw)
    assert inv.number == raw["number"]
    assert inv.number[:2] == f"{TODAY.year % 100:02d}"
    assert len(inv.number) == 20
    assert inv.issue_date == TODAY
    assert inv.seller.tax_id == SELLER_TAX_ID
    assert inv.buyer.tax_id == BUYER_TAX_ID
    assert inv.lines[0].amount == "200.00"
    assert inv.lines[0].tax_amount == "26.00"
    assert (inv.total_amount, inv.total_tax, inv.total) == ("200.00", "26.00", "226.00")
    assert inv.currency == "CNY"


def test_validate_item_accepts_an_already_parsed_invoice_but_still_runs_the_rules() -> None:
    inv = InvoiceCreate.model_validate(make_invoice())
    assert validate(inv) is inv
    bad = InvoiceCreate.model_validate(make_invoice(total="227.00"))
    result = validate(bad)
    assert isinstance(result, list)
    assert {e.path for e in result} == {"total"}


def test_prefix_is_prepended_to_every_path() -> None:
    result = validate_item(make_invoice(total="227.00"), tenant=TENANT, today=TODAY, window_days=WINDOW_DAYS,
                           prefix="invoices[3].")
    assert isinstance(result, list)
    assert [e.path for e in result] == ["invoices[3].total"]
    result = validate_item(make_invoice(number="1"), tenant=TENANT, today=TODAY, window_days=WINDOW_DAYS,
                           prefix="invoices[3].")
    assert isinstance(result, list)
    assert [e.path for e in result] == ["invoices[3].number"]


def test_input_dict_is_not_mutated() -> None:
    raw = make_invoice(seller={"tax_id": " " + SELLER_TAX_ID.lower() + " ", "name": "S"})
    snapshot = repr(raw)
    validate(raw)
    assert repr(raw) == snapshot


# --- seller and buyer (USCC) -------------------------------------------------------------------

def test_seller_tax_id_with_wrong_check_char() -> None:
    raw = make_invoice(seller={"tax_id": SELLER_TAX_ID[:17] + "7", "name": "S"})
    assert paths_of(raw) == {"seller.tax_id"}
    assert "check character" in _reason(raw, "seller.tax_id")


@pytest.mark.parametrize("letter", list("IOSVZ"))
def test_seller_tax_id_with_forbidden_letter(letter: str) -> None:
    raw = make_invoice(seller={"tax_id": SELLER_TAX_ID[:17] + letter, "name": "S"})
    assert paths_of(raw) == {"seller.tax_id"}
    assert "not allowed" in _reason(raw, "seller.tax_id")


@pytest.mark.parametrize("tax_id", [SELLER_TAX_ID[:17], SELLER_TAX_ID + "0"])
def test_seller_tax_id_with_wrong_length(tax_id: str) -> None:
    raw = make_invoice(seller={"tax_id": tax_id, "name": "S"})
    assert paths_of(raw) == {"seller.tax_id"}


@pytest.mark.parametrize("seller", [{"name": "S"}, {"tax_id": None, "name": "S"}])
def test_seller_tax_id_is_required(seller: dict) -> None:  # type: ignore[type-arg]
    raw = make_invoice(seller=seller)
    assert paths_of(raw) == {"seller.tax_id"}


def test_seller_tax_id_valid_but_not_the_tenants() -> None:
    raw = make_invoice(seller={"tax_id": OTHER_VALID_TAX_ID, "name": "Somebody else"})
    assert paths_of(raw) == {"seller.tax_id"}
    assert "API key" in _reason(raw, "seller.tax_id")


def test_seller_tax_id_is_normalised_upper_case_and_stripped() -> None:
    tenant = Tenant(uuid.uuid4(), "X", "9144030071526726XG")
    inv = accepted(make_invoice(seller={"tax_id": " 9144030071526726xg ", "name": "X"}), tenant=tenant)
    assert inv.seller.tax_id == "9144030071526726XG"


@pytest.mark.parametrize("buyer", [{"name": "B"}, {"tax_id": None, "name": "B"}, {"tax_id": "", "name": "B"}])
def test_special_invoice_without_buyer_tax_id(buyer: dict) -> None:  # type: ignore[type-arg]
    raw = make_invoice(kind="special", buyer=buyer)
    assert paths_of(raw) == {"buyer.tax_id"}
    assert "special" in _reason(raw, "buyer.tax_id")


@pytest.mark.parametrize("buyer", [{"name": "B"}, {"tax_id": None, "name": "B"}, {"tax_id": "", "name": "B"}])
def test_ordinary_invoice_without_buyer_tax_id_is_accepted(buyer: dict) -> None:  # type: ignore[type-arg]
    inv = accepted(make_invoice(kind="ordinary", buyer=buyer))
    assert inv.kind == "ordinary"
    assert not inv.buyer.tax_id


@pytest.mark.parametrize("kind", ["special", "ordinary"])
def test_buyer_tax_id_with_wrong_check_char(kind: str) -> None:
    raw = make_invoice(kind=kind, buyer={"tax_id": BUYER_TAX_ID[:17] + "U", "name": "B"})
    assert paths_of(raw) == {"buyer.tax_id"}


def test_buyer_tax_id_too_long() -> None:
    raw = make_invoice(buyer={"tax_id": BUYER_TAX_ID + "X", "name": "B"})
    assert paths_of(raw) == {"buyer.tax_id"}


def test_kind_must_be_special_or_ordinary() -> None:
    assert paths_of(make_invoice(kind="normal")) == {"kind"}


# --- number ------------------------------------------------------------------------------------

@pytest.mark.parametrize("number", ["1", "2611700000000001234", "261170000000000123456", "26117000000000A12345",
                                    "2611700000000001234 ", "26117000000000012345\n", ""])
def test_number_must_be_20_digits(number: str) -> None:
    assert paths_of(make_invoice(number=number)) == {"number"}


def test_number_as_json_number_is_rejected() -> None:
    assert paths_of(make_invoice(number=26117000000000012345)) == {"number"}


def test_number_digits_1_2_must_be_the_issue_year() -> None:
    other_year = (TODAY.year + 1) % 100
    raw = make_invoice(number=f"{other_year:02d}" + "0" * 17 + "7")
    assert paths_of(raw) == {"number"}
    assert f"{TODAY.year % 100:02d}" in _reason(raw, "number")


def test_number_year_follows_issue_date_not_today() -> None:
    last_year_date = date(TODAY.year - 1, 12, 31)
    today = last_year_date + timedelta(days=10)
    inv = accepted(make_invoice(issue_date=last_year_date), today=today)
    assert inv.number[:2] == f"{last_year_date.year % 100:02d}"
    raw = make_invoice(issue_date=last_year_date, number=number_for(today))
    assert paths_of(raw, today=today) == {"number"}


# --- issue_date --------------------------------------------------------------------------------

def test_issue_date_in_the_future() -> None:
    tomorrow = TODAY + timedelta(days=1)
    raw = make_invoice(issue_date=tomorrow)
    assert paths_of(raw) == {"issue_date"}
    assert "future" in _reason(raw, "issue_date")


def test_issue_date_at_the_window_edge_is_accepted_one_day_older_is_rejected() -> None:
    edge = TODAY - timedelta(days=WINDOW_DAYS)
    accepted(make_invoice(issue_date=edge))
    raw = make_invoice(issue_date=edge - timedelta(days=1))
    assert paths_of(raw) == {"issue_date"}
    assert str(WINDOW_DAYS) in _reason(raw, "issue_date")


def test_issue_window_is_configurable() -> None:
    raw = make_invoice(issue_date=TODAY - timedelta(days=10))
    accepted(raw, window_days=10)
    assert paths_of(raw, window_days=9) == {"issue_date"}


@pytest.mark.parametrize("value", ["2026-02-30", "25.11.2026", "", "tomorrow", None])
def test_issue_date_must_be_a_date(value: object) -> None:
    raw = make_invoice()
    raw["issue_date"] = value
    assert paths_of(raw) == {"issue_date"}


# --- tax rates and line arithmetic -------------------------------------------------------------

@pytest.mark.parametrize("rate", sorted(TAX_RATES))
def test_every_listed_tax_rate_is_accepted(rate: Decimal) -> None:
    tax = round_cents(Decimal("200.00") * rate)
    raw = make_invoice(lines=[make_line(tax_rate=str(rate), tax_amount=fmt(tax))], total_tax=fmt(tax),
                       total=fmt(Decimal("200.00") + tax))
    inv = accepted(raw)
    assert Decimal(inv.lines[0].tax_rate) == rate


@pytest.mark.parametrize("rate", ["0.10", "0.17", "0.16", "0.02", "1", "0.131", "-0.13"])
def test_unlisted_tax_rate(rate: str) -> None:
    raw = make_invoice(lines=[make_line(tax_rate=rate)])
    assert paths_of(raw) == {"lines[0].tax_rate"}
    assert "0.13" in _reason(raw, "lines[0].tax_rate")


def test_tax_rate_spelled_with_trailing_zero_is_the_same_rate() -> None:
    accepted(make_invoice(lines=[make_line(tax_rate="0.130")]))


def test_line_amount_must_equal_quantity_times_unit_price() -> None:
    raw = make_invoice(lines=[make_line(quantity="3")])
    assert paths_of(raw) == {"lines[0].amount"}
    assert "300.00" in _reason(raw, "lines[0].amount")


def test_line_amount_with_fractional_quantity() -> None:
    # 1.5 x 33.33 = 49.995 -> 50.00 (half-up); tax 6.50
    line = make_line(quantity="1.5", unit_price="33.33", amount="50.00", tax_amount="6.50")
    accepted(make_invoice(lines=[line], total_amount="50.00", total_tax="6.50", total="56.50"))


def _with_tax(tax: str) -> dict:  # type: ignore[type-arg]
    total = fmt(Decimal("200.00") + Decimal(tax))
    return make_invoice(lines=[make_line(tax_amount=tax)], total_tax=tax, total=total)


@pytest.mark.parametrize("tax", ["26.01", "25.99"])
def test_tax_amount_off_by_one_cent_is_tolerated(tax: str) -> None:
    inv = accepted(_with_tax(tax))
    assert inv.lines[0].tax_amount == tax


@pytest.mark.parametrize("tax", ["26.02", "25.98", "0.00", "260.00"])
def test_tax_amount_off_by_more_than_one_cent(tax: str) -> None:
    raw = _with_tax(tax)
    assert paths_of(raw) == {"lines[0].tax_amount"}
    assert "26.00" in _reason(raw, "lines[0].tax_amount")


def test_expected_tax_is_rounded_half_up() -> None:
    # 0.50 x 0.01 = 0.005 -> 0.01 half-up (0.00 with banker's rounding); 0.03 is two cents off.
    line = make_line(quantity="1", unit_price="0.50", amount="0.50", tax_rate="0.01", tax_amount="0.03")
    raw = make_invoice(lines=[line], total_amount="0.50", total_tax="0.03", total="0.53")
    assert paths_of(raw) == {"lines[0].tax_amount"}
    assert _reason(raw, "lines[0].tax_amount").endswith("= 0.01")


@pytest.mark.parametrize("amount", ["200.01", "199.99"])
def test_line_amount_off_by_one_cent_is_tolerated(amount: str) -> None:
    raw = make_invoice(lines=[make_line(amount=amount)], total_amount=amount,
                       total=fmt(Decimal(amount) + Decimal("26.00")))
    accepted(raw)


def test_error_on_the_second_line_names_that_line() -> None:
    lines = [make_line(), make_line(quantity="1", amount="100.00", tax_amount="13.50")]
    raw = make_invoice(lines=lines, total_amount="300.00", total_tax="39.50", total="339.50")
    assert paths_of(raw) == {"lines[1].tax_amount"}


def test_zero_rate_line_with_zero_tax_is_accepted() -> None:
    line = make_line(tax_rate="0", tax_amount="0.00")
    accepted(make_invoice(lines=[line], total_tax="0.00", total="200.00"))


# --- totals ------------------------------------------------------------------------------------

def test_total_amount_must_be_the_sum_of_line_amounts() -> None:
    raw = make_invoice(total_amount="201.00", total="227.00")
    assert paths_of(raw) == {"total_amount"}
    assert "200.00" in _reason(raw, "total_amount")


def test_total_amount_has_no_tolerance() -> None:
    assert paths_of(make_invoice(total_amount="200.01", total="226.01")) == {"total_amount"}


def test_total_tax_must_be_the_sum_of_line_taxes() -> None:
    raw = make_invoice(total_tax="27.00", total="227.00")
    assert paths_of(raw) == {"total_tax"}
    assert "26.00" in _reason(raw, "total_tax")


def test_total_must_be_total_amount_plus_total_tax() -> None:
    raw = make_invoice(total="225.00")
    assert paths_of(raw) == {"total"}
    assert "226.00" in _reason(raw, "total")


def test_totals_over_several_lines() -> None:
    lines = [make_line(), make_line(quantity="1", unit_price="50.00", amount="50.00", tax_rate="0.06",
                                    tax_amount="3.00")]
    accepted(make_invoice(lines=lines, total_amount="250.00", total_tax="29.00", total="279.00"))
    assert paths_of(make_invoice(lines=lines)) == {"total_amount", "total_tax"}


# --- positive amounts --------------------------------------------------------------------------

def test_negative_quantity_and_price() -> None:
    raw = make_invoice(lines=[make_line(quantity="-2", unit_price="-100.00")])
    assert paths_of(raw) == {"lines[0].quantity", "lines[0].unit_price"}


def test_negative_amounts_are_rejected_outside_red_letter() -> None:
    line = make_line(quantity="-2", amount="-200.00", tax_amount="-26.00")
    raw = make_invoice(lines=[line], total_amount="-200.00", total_tax="-26.00", total="-226.00")
    assert paths_of(raw) == {"lines[0].quantity", "lines[0].amount", "lines[0].tax_amount", "total"}


def test_zero_amount_line_is_rejected() -> None:
    line = make_line(quantity="0", amount="0.00", tax_amount="0.00")
    raw = make_invoice(lines=[line], total_amount="0.00", total_tax="0.00", total="0.00")
    assert paths_of(raw) == {"lines[0].quantity", "lines[0].amount", "total"}


# --- money must be strings, in the right format ------------------------------------------------

@pytest.mark.parametrize(("where", "path"), [
    ("amount", "lines[0].amount"),
    ("tax_amount", "lines[0].tax_amount"),
    ("quantity", "lines[0].quantity"),
    ("unit_price", "lines[0].unit_price"),
    ("tax_rate", "lines[0].tax_rate"),
])
def test_json_number_instead_of_a_line_money_string(where: str, path: str) -> None:
    line = make_line()
    line[where] = float(line[where])
    raw = make_invoice(lines=[line])
    assert paths_of(raw) == {path}
    assert "JSON numbers" in _reason(raw, path)


@pytest.mark.parametrize("field", ["total_amount", "total_tax", "total"])
@pytest.mark.parametrize("value", [226, 226.0, True, None])
def test_json_number_instead_of_a_total_money_string(field: str, value: object) -> None:
    raw = make_invoice()
    raw[field] = value
    assert paths_of(raw) == {field}


@pytest.mark.parametrize("amount", ["200", "200.0", "200.000", "2e2", "NaN", "1" + "0" * 50 + ".00", " "])
def test_amount_format(amount: str) -> None:
    assert paths_of(make_invoice(lines=[make_line(amount=amount)])) == {"lines[0].amount"}


@pytest.mark.parametrize("quantity", ["1e5", "2.123456789", "1" + "0" * 50, "two", ""])
def test_quantity_format(quantity: str) -> None:
    assert paths_of(make_invoice(lines=[make_line(quantity=quantity)])) == {"lines[0].quantity"}


# --- currency, unknown fields ------------------------------------------------------------------

@pytest.mark.parametrize("currency", ["USD", "cny", "", None])
def test_currency_must_be_cny(currency: object) -> None:
    assert paths_of(make_invoice(currency=currency)) == {"currency"}


def test_currency_defaults_to_cny() -> None:
    raw = make_invoice()
    del raw["currency"]
    assert accepted(raw).currency == "CNY"


def test_unknown_top_level_field_is_rejected() -> None:
    raw = make_invoice(discount="10.00")
    assert paths_of(raw) == {"discount"}
    assert "not permitted" in _reason(raw, "discount")


def test_unknown_nested_fields_are_rejected() -> None:
    raw = make_invoice(lines=[make_line(color="red")], seller={"tax_id": SELLER_TAX_ID, "name": "S", "bank": "x"})
    assert paths_of(raw) == {"lines[0].color", "seller.bank"}


@pytest.mark.parametrize("field", ["number", "kind", "issue_date", "seller", "buyer", "lines", "total_amount",
                                   "total_tax", "total"])
def test_required_fields(field: str) -> None:
    raw = make_invoice()
    del raw[field]
    assert paths_of(raw) == {field}


@pytest.mark.parametrize("raw", [None, [], "invoice", 42])
def test_non_object_body(raw: object) -> None:
    errors = errors_of(raw)
    assert len(errors) == 1


# --- text: NUL, surrogates, control characters, lengths ----------------------------------------

def test_nul_byte_in_buyer_name() -> None:
    raw = make_invoice(buyer={"tax_id": BUYER_TAX_ID, "name": "Buyer\x00Ltd"})
    assert paths_of(raw) == {"buyer.name"}
    assert "NUL" in _reason(raw, "buyer.name")


def test_lone_surrogate_in_line_description() -> None:
    raw = make_invoice(lines=[make_line(description="Consulting \ud800")])
    assert paths_of(raw) == {"lines[0].description"}


@pytest.mark.parametrize("char", ["\udfff", "\udc80"])
def test_lone_low_surrogate_in_remarks(char: str) -> None:
    assert paths_of(make_invoice(remarks="ok" + char)) == {"remarks"}


def test_nul_byte_in_tax_id_and_remarks() -> None:
    raw = make_invoice(remarks="a\x00b", seller={"tax_id": SELLER_TAX_ID[:10] + "\x00", "name": "S"})
    assert paths_of(raw) == {"remarks", "seller.tax_id"}


def test_control_character_in_description() -> None:
    assert paths_of(make_invoice(lines=[make_line(description="bell\x07")])) == {"lines[0].description"}


def test_tabs_newlines_and_chinese_text_are_fine() -> None:
    line = make_line(description="咨询服务\t第一期")
    buyer = {"tax_id": BUYER_TAX_ID, "name": "深圳买方"}
    inv = accepted(make_invoice(lines=[line], remarks="第一行\n第二行", buyer=buyer))
    assert inv.lines[0].description == "咨询服务\t第一期"
    assert inv.buyer.name == "深圳买方"


def test_description_of_200_characters_is_accepted_201_rejected() -> None:
    accepted(make_invoice(lines=[make_line(description="商" * 200)]))
    raw = make_invoice(lines=[make_line(description="商" * 201)])
    assert paths_of(raw) == {"lines[0].description"}


@pytest.mark.parametrize("description", ["", "   "])
def test_description_must_not_be_blank(description: str) -> None:
    assert paths_of(make_invoice(lines=[make_line(description=description)])) == {"lines[0].description"}


def test_names_are_bounded() -> None:
    raw = make_invoice(buyer={"tax_id": BUYER_TAX_ID, "name": "B" * 201},
                       seller={"tax_id": SELLER_TAX_ID, "name": "S" * 201})
    assert paths_of(raw) == {"buyer.name", "seller.name"}


def test_remarks_are_bounded() -> None:
    accepted(make_invoice(remarks="r" * 500))
    assert paths_of(make_invoice(remarks="r" * 501)) == {"remarks"}


@pytest.mark.parametrize("tax_code", ["304020100000000000", "30402010000000000000", "304020100000000000X", ""])
def test_tax_code_must_be_19_digits(tax_code: str) -> None:
    assert paths_of(make_invoice(lines=[make_line(tax_code=tax_code)])) == {"lines[0].tax_code"}


# --- lines -------------------------------------------------------------------------------------

def test_empty_lines_list() -> None:
    raw = make_invoice(lines=[])
    assert paths_of(raw) == {"lines"}
    assert "at least 1" in _reason(raw, "lines")


def test_100_lines_accepted_101_rejected() -> None:
    line = make_line(quantity="1", unit_price="1.00", amount="1.00", tax_amount="0.13")
    accepted(make_invoice(lines=[line] * 100, total_amount="100.00", total_tax="13.00", total="113.00"))
    raw = make_invoice(lines=[line] * 101, total_amount="101.00", total_tax="13.13", total="114.13")
    assert paths_of(raw) == {"lines"}
    assert "100" in _reason(raw, "lines")


def test_lines_must_be_a_list_of_objects() -> None:
    assert paths_of(make_invoice(lines="none")) == {"lines"}
    assert paths_of(make_invoice(lines=["x"])) == {"lines[0]"}


def test_every_broken_rule_is_reported_at_once() -> None:
    raw = make_invoice(lines=[make_line(tax_rate="0.10", quantity="3")], total="1.00",
                       seller={"tax_id": OTHER_VALID_TAX_ID, "name": "S"}, buyer={"name": "B"})
    assert paths_of(raw) == {"seller.tax_id", "buyer.tax_id", "lines[0].tax_rate", "lines[0].amount", "total"}


# --- regressions: non-ASCII digits and trailing newlines ----------------------------------------

def test_number_with_non_ascii_digits_is_rejected() -> None:
    raw = make_invoice(number=number_for(TODAY)[:2] + "\u0660" * 18)  # Arabic-Indic zeros
    assert paths_of(raw) == {"number"}


def test_tax_code_with_non_ascii_digits_is_rejected() -> None:
    assert paths_of(make_invoice(lines=[make_line(tax_code="\uff11" * 19)])) == {"lines[0].tax_code"}


def test_quantity_with_non_ascii_digits_is_rejected() -> None:
    assert paths_of(make_invoice(lines=[make_line(quantity="\u0662")])) == {"lines[0].quantity"}


def test_amount_with_trailing_newline_is_rejected() -> None:
    raw = make_invoice(lines=[make_line(amount="200.00\n")])
    assert paths_of(raw) == {"lines[0].amount"}
