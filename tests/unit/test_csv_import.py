"""CSV import (批量导入): rows grouped by number, totals derived, per-row errors."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from services.issuer.csv_import import (
    COLUMNS,
    MAX_FIELD,
    MAX_RECORD,
    REQUIRED,
    CsvFormatError,
    RowError,
    parse_csv,
    read_rows,
    row_errors,
)
from shared.errors import FieldError

from .factories import BUYER_TAX_ID, SELLER_TAX_ID, TODAY, accepted, errors_of, number_for

N1 = number_for(TODAY, 1)
N2 = number_for(TODAY, 2)


def row(**overrides: Any) -> dict[str, str]:
    base = {
        "number": N1, "kind": "special", "issue_date": TODAY.isoformat(), "buyer_tax_id": BUYER_TAX_ID,
        "buyer_name": "Shenzhen Buyer Ltd.", "line_description": "Consulting", "line_tax_code": "3040201000000000000",
        "line_quantity": "2", "line_unit_price": "100.00", "line_amount": "200.00", "line_tax_rate": "0.13",
        "line_tax_amount": "26.00", "remarks": "",
    }
    base.update(overrides)
    return base


def to_csv(rows: list[dict[str, str]], columns: tuple[str, ...] | list[str] = COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def parse(text: str, max_rows: int = 1000) -> tuple[list, list[RowError]]:  # type: ignore[type-arg]
    return parse_csv(text, seller_tax_id=SELLER_TAX_ID, seller_name="Seller Co.", max_rows=max_rows)


TWO_INVOICES = [
    row(),
    row(line_description="Training", line_quantity="1", line_amount="100.00", line_tax_amount="13.00"),
    row(number=N2, kind="ordinary", buyer_tax_id="", line_amount="200.00"),
]


def test_required_columns() -> None:
    assert {"buyer_tax_id", "remarks"} == set(COLUMNS) - REQUIRED


def test_rows_are_grouped_by_number_and_totals_derived() -> None:
    invoices, errors = parse(to_csv(TWO_INVOICES))
    assert errors == []
    assert [i.number for i in invoices] == [N1, N2]
    first, second = invoices
    assert first.rows == [2, 3]
    assert second.rows == [4]
    assert len(first.raw["lines"]) == 2
    assert first.raw["lines"][1]["description"] == "Training"
    assert (first.raw["total_amount"], first.raw["total_tax"], first.raw["total"]) == ("300.00", "39.00", "339.00")
    assert (second.raw["total_amount"], second.raw["total_tax"], second.raw["total"]) == ("200.00", "26.00", "226.00")
    assert first.raw["seller"] == {"tax_id": SELLER_TAX_ID, "name": "Seller Co."}
    assert first.raw["currency"] == "CNY"
    assert first.raw["remarks"] is None
    assert second.raw["buyer"]["tax_id"] is None
    assert second.raw["kind"] == "ordinary"


def test_parsed_invoices_pass_validation() -> None:
    invoices, errors = parse(to_csv(TWO_INVOICES))
    assert errors == []
    for inv in invoices:
        created = accepted(inv.raw)
        assert created.seller.tax_id == SELLER_TAX_ID


def test_cells_are_stripped_and_header_may_be_padded() -> None:
    text = to_csv([row(buyer_name="  Buyer  ", line_amount=" 200.00 ")])
    header, rest = text.split("\r\n", 1)
    text = ",".join(f" {h} " for h in header.split(",")) + "\r\n" + rest
    invoices, errors = parse(text)
    assert errors == []
    assert invoices[0].raw["buyer"]["name"] == "Buyer"
    assert invoices[0].raw["lines"][0]["amount"] == "200.00"


def test_columns_may_come_in_any_order_and_remarks_may_be_missing() -> None:
    columns = sorted(set(COLUMNS) - {"remarks"})
    invoices, errors = parse(to_csv([row(remarks="ignored")], columns))
    assert errors == []
    assert invoices[0].raw["buyer"]["tax_id"] == BUYER_TAX_ID
    assert invoices[0].raw["remarks"] is None
    assert invoices[0].raw["total"] == "226.00"


def test_buyer_tax_id_column_may_be_missing() -> None:
    columns = sorted(REQUIRED)
    rows = [row(kind="ordinary"), row(kind="ordinary", line_description="Second")]
    invoices, errors = parse(to_csv(rows, columns))
    assert errors == []
    assert invoices[0].raw["buyer"]["tax_id"] is None
    assert invoices[0].rows == [2, 3]


@pytest.mark.parametrize("column", ["kind", "issue_date", "buyer_tax_id", "buyer_name"])
def test_a_row_with_a_different_invoice_field_for_the_same_number_is_reported(column: str) -> None:
    other = {"kind": "ordinary", "issue_date": "2020-01-01", "buyer_tax_id": "91330100716105852F",
             "buyer_name": "Someone else"}[column]
    rows = [row(), row(**{column: other}), row(number=N2)]
    invoices, errors = parse(to_csv(rows))
    assert errors == [RowError(3, column, "differs from row 2 of the same invoice", N1)]
    assert [i.number for i in invoices] == [N1, N2]


def test_empty_buyer_tax_id_in_both_rows_is_not_a_difference() -> None:
    rows = [row(kind="ordinary", buyer_tax_id=""), row(kind="ordinary", buyer_tax_id="")]
    _, errors = parse(to_csv(rows))
    assert errors == []


@pytest.mark.parametrize("missing", ["number", "line_amount", "buyer_name"])
def test_missing_header_columns_raise(missing: str) -> None:
    columns = [c for c in COLUMNS if c != missing]
    with pytest.raises(CsvFormatError, match=missing):
        parse(to_csv([row()], columns))


def test_empty_file_raises() -> None:
    with pytest.raises(CsvFormatError, match="lacks column"):
        parse("")


def test_unknown_header_column_raises() -> None:
    with pytest.raises(CsvFormatError, match="unknown column.*discount"):
        parse(to_csv([row()], [*COLUMNS, "discount"]))


def test_too_many_rows_raise() -> None:
    parse(to_csv([row()] * 3), max_rows=3)
    with pytest.raises(CsvFormatError, match="more than 3 rows"):
        parse(to_csv([row()] * 4), max_rows=3)


def test_row_without_number_is_reported_and_skipped() -> None:
    invoices, errors = parse(to_csv([row(number=""), row()]))
    assert errors == [RowError(2, "number", "is required")]
    assert [i.rows for i in invoices] == [[3]]


def _refused(text: str) -> CsvFormatError:
    with pytest.raises(CsvFormatError) as caught:
        parse(text)
    return caught.value


def test_row_with_more_cells_than_the_header_refuses_the_file_naming_the_row() -> None:
    text = to_csv([row()]) + to_csv([row(number=N2)]).split("\r\n", 1)[1].rstrip("\r\n") + ",extra\r\n"
    exc = _refused(text)
    assert (exc.row, exc.column) == (3, None)
    assert "14 cells but the header has 13" in str(exc)
    assert exc.field_error().as_dict() == {"path": "row 3", "reason": str(exc), "row": 3}


def test_a_row_with_more_cells_than_the_header_is_never_half_of_an_invoice() -> None:
    """Before: the row was skipped and its invoice created from the other rows, one line short."""
    second_line = to_csv([row(line_description="Training")]).split("\r\n", 1)[1].rstrip("\r\n")
    exc = _refused(to_csv([row()]) + second_line + ",\r\n")
    assert exc.row == 3


@pytest.mark.parametrize("size", [MAX_FIELD + 1, 131_073, 1_000_000])
def test_a_cell_past_the_bound_refuses_the_file_naming_row_and_column(size: int) -> None:
    text = to_csv([row(), row(number=N2, remarks="x" * size)])
    exc = _refused(text)  # 131,073 characters used to escape as csv.Error ("field larger than field limit")
    assert (exc.row, exc.column) == (3, "remarks")
    assert f"at most {MAX_FIELD}" in str(exc) or f"longer than {MAX_RECORD}" in str(exc)


def test_a_cell_at_the_bound_is_read() -> None:
    text = to_csv([row(remarks="备" * MAX_FIELD)])
    assert [(n, len(cells)) for n, cells in read_rows(text)] == [(1, 13), (2, 13)]


def test_an_unclosed_quote_at_the_end_refuses_the_file_naming_its_row() -> None:
    text = to_csv(TWO_INVOICES) + f'{N2},ordinary,{TODAY.isoformat()},,"Buyer,Consulting\r\n'
    exc = _refused(text)
    assert exc.row == 5 and "never closed" in str(exc)


def test_an_unclosed_quote_that_swallows_the_rest_of_the_file_is_named_by_the_row_where_it_opens() -> None:
    lines = to_csv([row(number=number_for(TODAY, i)) for i in range(1, 400)]).split("\r\n")
    lines[3] = lines[3].replace("Shenzhen Buyer Ltd.", '"Shenzhen Buyer Ltd.')
    exc = _refused("\r\n".join(lines))
    assert exc.row == 4 and exc.line == 4
    assert "quote" in str(exc)


def test_an_unclosed_quote_that_closes_later_is_caught_by_what_follows_it() -> None:
    lines = to_csv([row(number=number_for(TODAY, i)) for i in range(1, 6)]).split("\r\n")
    lines[2] = lines[2].replace("Shenzhen Buyer Ltd.", '"Shenzhen Buyer Ltd.')
    lines[4] = lines[4].replace("Shenzhen Buyer Ltd.", 'Shenzhen" Buyer Ltd.')
    exc = _refused("\r\n".join(lines))
    assert exc.row == 3 and "after a closing quote" in str(exc)


def test_quoted_cells_may_hold_commas_quotes_and_line_breaks() -> None:
    text = to_csv([row(remarks='PO 4712, "urgent"\nsecond line'), row(number=N2)])
    invoices, errors = parse(text)
    assert errors == []
    assert invoices[0].raw["remarks"] == 'PO 4712, "urgent"\nsecond line'
    assert invoices[1].rows == [3]


def test_blank_rows_are_skipped_but_counted_as_a_spreadsheet_does() -> None:
    header, first, second = to_csv([row(), row(number=N2)]).rstrip("\r\n").split("\r\n")
    invoices, errors = parse("\r\n".join([header, first, "", second]) + "\r\n")
    assert errors == [] and [i.rows for i in invoices] == [[2], [4]]


def test_a_bad_header_names_the_file_not_a_row() -> None:
    exc = _refused("number,kind\r\n1,2\r\n")
    assert exc.row is None and exc.field_error().as_dict()["path"] == "(file)"


def test_unparseable_line_amount_gives_invalid_totals_and_a_field_error() -> None:
    invoices, errors = parse(to_csv([row(line_amount="two hundred")]))
    assert errors == []
    raw = invoices[0].raw
    assert raw["total_amount"] == "invalid"
    assert raw["total"] == "invalid"
    paths = {e.path for e in errors_of(raw)}
    assert "lines[0].amount" in paths


def test_row_errors_maps_line_paths_to_rows_and_columns() -> None:
    invoices, _ = parse(to_csv(TWO_INVOICES))
    inv = invoices[0]
    mapped = row_errors(inv, [
        FieldError("lines[1].amount", "must equal quantity x unit_price = 100.00"),
        FieldError("lines[0].tax_rate", "bad rate"),
        FieldError("lines[1].description", "too long"),
    ])
    assert mapped == [
        RowError(3, "line_amount", "must equal quantity x unit_price = 100.00", N1),
        RowError(2, "line_tax_rate", "bad rate", N1),
        RowError(3, "line_description", "too long", N1),
    ]


def test_row_errors_maps_invoice_fields_to_the_first_row() -> None:
    invoices, _ = parse(to_csv(TWO_INVOICES))
    inv = invoices[0]
    mapped = row_errors(inv, [
        FieldError("buyer.tax_id", "x"), FieldError("buyer.name", "y"), FieldError("issue_date", "z"),
        FieldError("number", "n"), FieldError("total_amount", "a"), FieldError("total_tax", "t"),
    ])
    assert [(e.row, e.column) for e in mapped] == [
        (2, "buyer_tax_id"), (2, "buyer_name"), (2, "issue_date"), (2, "number"), (2, "line_amount"),
        (2, "line_tax_amount"),
    ]
    assert all(e.number == N1 for e in mapped)


def test_row_errors_end_to_end_from_validation() -> None:
    rows = [row(), row(line_quantity="1", line_amount="100.00", line_tax_amount="99.00")]
    invoices, errors = parse(to_csv(rows))
    assert errors == []
    field_errors = errors_of(invoices[0].raw)
    assert {e.path for e in field_errors} == {"lines[1].tax_amount"}
    mapped = row_errors(invoices[0], field_errors)
    assert [(e.row, e.column, e.number) for e in mapped] == [(3, "line_tax_amount", N1)]


def test_row_error_as_dict() -> None:
    assert RowError(3, "line_amount", "bad", N1).as_dict() == {
        "row": 3, "column": "line_amount", "reason": "bad", "number": N1}


def test_huge_exponent_in_a_cell_is_a_row_error_not_a_crash() -> None:
    rows = [row(line_amount="1e999999999"), row(number=N2)]
    invoices, _ = parse(to_csv(rows))
    assert [i.number for i in invoices] == [N1, N2]
    assert invoices[0].raw["total_amount"] == "invalid"
