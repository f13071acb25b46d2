"""The authority's document checks, without a database: the canonical document the issuer emits
must pass untouched and hash the same, and each rule must name its code and field."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from services.issuer.rules import canonical
from services.issuer.rules import content_hash as issuer_content_hash
from services.issuer.schemas import InvoiceCreate
from services.taxstore.rules import Reason, Submission, corrupt, parse_submission
from shared.content import content_hash
from tests import factories

SELLER = "914403001922038216"


def canonical_doc(**over: Any) -> dict[str, Any]:
    return canonical(InvoiceCreate.model_validate(factories.invoice(SELLER, **over)))  # type: ignore[return-value]


def reasons(submission: Any) -> list[tuple[str, str]]:
    parsed = parse_submission(submission)
    assert isinstance(parsed, list), parsed
    return [(r.code, r.path) for r in parsed]


def test_the_issuers_canonical_document_passes_and_hashes_the_same() -> None:
    doc = canonical_doc()
    parsed = parse_submission({"invoice": doc})
    assert isinstance(parsed, Submission)
    assert parsed.digest == issuer_content_hash(doc) == content_hash(dict(reversed(list(doc.items()))))
    assert parsed.doc is doc  # kept exactly as received
    assert (parsed.kind, parsed.invoice_type, parsed.total, parsed.red_letter_of) == ("blue", "special",
                                                                                      Decimal("226.00"), None)
    assert parsed.key == (SELLER, doc["number"])


def test_another_scale_of_the_same_numbers_passes_and_hashes_the_same() -> None:
    doc = canonical_doc()  # unit_price "100.00", as the ERP sent it
    respelled = {**doc, "lines": [{**doc["lines"][0], "unit_price": "100", "quantity": "2.000"}]}
    parsed = parse_submission({"invoice": respelled})
    assert isinstance(parsed, Submission) and parsed.doc["lines"][0]["unit_price"] == "100"
    assert parsed.digest == content_hash(respelled) == issuer_content_hash(doc)


def test_an_ordinary_invoice_needs_no_buyer_tax_id() -> None:
    doc = canonical_doc(kind="ordinary", buyer={"tax_id": "", "name": "个人"})
    assert doc["buyer"]["tax_id"] is None
    assert isinstance(parse_submission({"invoice": doc}), Submission)
    assert isinstance(parse_submission({"invoice": {**doc, "buyer": {"name": "个人"}}}), Submission)
    assert reasons({"invoice": {**doc, "kind": "special"}}) == [("BUYER_TAX_ID_INVALID", "invoice.buyer.tax_id")]


def test_zero_rate_and_the_rounding_tolerance() -> None:
    zero = canonical_doc(lines=[factories.line(rate="0")])
    assert isinstance(parse_submission({"invoice": zero}), Submission)
    off_by_a_cent = canonical_doc(lines=[factories.line(quantity="3", unit_price="33.33", amount="100.00",
                                                        tax_amount="13.00")])
    assert isinstance(parse_submission({"invoice": off_by_a_cent}), Submission)  # 99.99 vs 100.00 is tolerated


def test_red_letters_are_negative_and_blue_ones_positive() -> None:
    red = canonical_doc(lines=[factories.line(quantity="-1")])
    parsed = parse_submission({"invoice": red, "red_letter_of": "2" * 20})
    assert isinstance(parsed, Submission) and parsed.kind == "red" and parsed.total == Decimal("-113.00")
    assert reasons({"invoice": red}) == [("AMOUNT_NOT_POSITIVE", "invoice.lines[0].amount"),
                                         ("AMOUNT_NOT_POSITIVE", "invoice.lines[0].tax_amount"),
                                         ("AMOUNT_NOT_POSITIVE", "invoice.total")]
    assert reasons({"invoice": canonical_doc(), "red_letter_of": "2" * 20}) == [
        ("RED_LETTER_NOT_NEGATIVE", "invoice.lines[0].amount"),
        ("RED_LETTER_NOT_NEGATIVE", "invoice.lines[0].tax_amount"), ("RED_LETTER_NOT_NEGATIVE", "invoice.total")]


@pytest.mark.parametrize(("submission", "expected"), [
    ("text", [("MALFORMED", "(submission)")]),
    ({}, [("MALFORMED", "invoice")]),
    ({"invoice": {**canonical_doc(), "\udfff": 1}}, [("MALFORMED", "invoice")]),  # an unencodable key
    ({"invoice": {**canonical_doc(), "issue_date": "2026-02-30"}}, [("MALFORMED", "invoice.issue_date")]),
    ({"invoice": {**canonical_doc(), "issue_date": "20260101"}}, [("MALFORMED", "invoice.issue_date")]),
    ({"invoice": {**canonical_doc(), "currency": "USD"}}, [("MALFORMED", "invoice.currency")]),
    ({"invoice": {**canonical_doc(), "lines": []}}, [("MALFORMED", "invoice.lines")]),
    ({"invoice": {**canonical_doc(), "number": "２６" + "0" * 18}}, [("NUMBER_INVALID", "invoice.number")]),
])
def test_structure_and_format(submission: Any, expected: list[tuple[str, str]]) -> None:
    assert reasons(submission) == expected


def test_reasons_serialise() -> None:
    assert Reason("TOTAL_MISMATCH", "invoice.total", "m").as_dict() == {
        "code": "TOTAL_MISMATCH", "path": "invoice.total", "message": "m"}


def test_corruption_changes_the_total_only() -> None:
    doc = canonical_doc()
    bad = corrupt(doc)
    assert bad["total"] == "227.00" and {k: v for k, v in bad.items() if k != "total"} == \
        {k: v for k, v in doc.items() if k != "total"}
    assert content_hash(bad) != content_hash(doc) and doc["total"] == "226.00"
