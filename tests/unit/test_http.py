"""field_path: pydantic error locations to the paths the API reports."""

from __future__ import annotations

import pytest

from shared.http import field_path


@pytest.mark.parametrize(("loc", "path"), [
    (("body", "lines", 0, "amount"), "lines[0].amount"),
    (["body", "lines", 12, "tax_amount"], "lines[12].tax_amount"),
    (("body", "seller", "tax_id"), "seller.tax_id"),
    (("body", "total"), "total"),
    (("query", "limit"), "limit"),
    (("path", "invoice_id"), "invoice_id"),
    (("header", "idempotency-key"), "idempotency-key"),
    (("lines", 0, "description"), "lines[0].description"),
    (("body",), "(body)"),
    ((), "(body)"),
    (("body", "invoices", 3, "lines", 0, "amount"), "invoices[3].lines[0].amount"),
    (("body", "lines", 0, "function-after[_amount(), str]"), "lines[0]"),
    (("body", "total", "function-before[_must_be_string(), str]"), "total"),
    ((0,), "[0]"),
])
def test_field_path(loc: tuple, path: str) -> None:  # type: ignore[type-arg]
    assert field_path(loc) == path


def test_body_is_only_dropped_at_the_start() -> None:
    assert field_path(("body", "meta", "body")) == "meta.body"
