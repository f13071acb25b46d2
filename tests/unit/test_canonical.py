"""canonical() / content_hash(): equal invoices hash equal whatever the spelling; different ones do not."""

from __future__ import annotations

import hashlib
import re

import orjson

from services.issuer.rules import canonical, content_hash
from services.issuer.schemas import InvoiceCreate

from .factories import BUYER_TAX_ID, make_invoice, make_line


def _hash(raw: dict) -> str:  # type: ignore[type-arg]
    return content_hash(canonical(InvoiceCreate.model_validate(raw)))


def test_hash_is_a_stable_sha256_hex() -> None:
    raw = make_invoice()
    digest = _hash(raw)
    assert re.fullmatch(r"[0-9a-f]{64}", digest), digest
    assert _hash(make_invoice()) == digest


def test_quantity_2_and_2_0_give_the_same_hash() -> None:
    a = make_invoice(lines=[make_line(quantity="2")])
    b = make_invoice(lines=[make_line(quantity="2.0")])
    c = make_invoice(lines=[make_line(quantity="2.00000000")])
    assert _hash(a) == _hash(b) == _hash(c)


def test_unit_price_and_rate_spellings_give_the_same_hash() -> None:
    a = make_invoice(lines=[make_line(unit_price="100.00", tax_rate="0.13")])
    b = make_invoice(lines=[make_line(unit_price="100", tax_rate="0.130")])
    assert _hash(a) == _hash(b)


def test_the_document_keeps_the_scale_it_was_sent_with_only_the_hash_ignores_it() -> None:
    sent = make_invoice(lines=[make_line(quantity="2.000", unit_price="100.00", tax_rate="0.130")])
    doc = canonical(InvoiceCreate.model_validate(sent))
    line = doc["lines"][0]  # type: ignore[index]
    assert (line["quantity"], line["unit_price"], line["tax_rate"]) == ("2.000", "100.00", "0.130")
    assert (line["amount"], doc["total"]) == ("200.00", "226.00")
    plain = canonical(InvoiceCreate.model_validate(make_invoice(lines=[make_line(quantity="2", unit_price="100",
                                                                                   tax_rate="0.13")])))
    assert doc != plain and content_hash(doc) == content_hash(plain)
    assert content_hash(doc) != content_hash({**doc, "lines": [{**line, "unit_price": "100.01"}]})


def test_hashes_stored_before_decimals_kept_their_scale_are_still_the_same() -> None:
    """Until now the document itself was normalised ("100.00" stored as "100") and hashed as it was: the hash
    of a document as sent must equal that older hash, or every stored invoice would look changed."""
    sent = canonical(InvoiceCreate.model_validate(
        make_invoice(lines=[make_line(quantity="2.50", unit_price="100.00", amount="250.00", tax_rate="0.060",
                                      tax_amount="15.00")], total_amount="250.00", total_tax="15.00",
                     total="265.00")))
    normalised = {**sent, "lines": [{**ln, "quantity": "2.5", "unit_price": "100", "tax_rate": "0.06"}
                                    for ln in sent["lines"]]}  # type: ignore[attr-defined]
    older = hashlib.sha256(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert content_hash(sent) == older == content_hash(normalised)


def test_the_hash_never_expands_a_huge_exponent() -> None:
    doc = canonical(InvoiceCreate.model_validate(make_invoice()))
    hostile = {**doc, "lines": [{**doc["lines"][0], "quantity": "1e999999999"}]}  # type: ignore[index]
    assert len(content_hash(hostile)) == 64


def test_tax_id_case_whitespace_and_empty_buyer_tax_id_normalise() -> None:
    a = make_invoice(buyer={"tax_id": BUYER_TAX_ID, "name": "B"})
    b = make_invoice(buyer={"tax_id": " " + BUYER_TAX_ID.lower(), "name": "B"})
    assert _hash(a) == _hash(b)
    c = make_invoice(kind="ordinary", buyer={"tax_id": "", "name": "B"})
    d = make_invoice(kind="ordinary", buyer={"name": "B"})
    assert _hash(c) == _hash(d)
    e = make_invoice(remarks="")
    f = make_invoice(remarks=None)
    assert _hash(e) == _hash(f)


def test_key_order_of_the_input_does_not_matter() -> None:
    raw = make_invoice()
    reordered = dict(reversed(list(raw.items())))
    assert _hash(raw) == _hash(reordered)


def test_a_different_amount_gives_a_different_hash() -> None:
    a = make_invoice()
    b = make_invoice(lines=[make_line(amount="200.01")], total_amount="200.01", total="226.01")
    assert _hash(a) != _hash(b)


def test_other_differences_change_the_hash() -> None:
    base = _hash(make_invoice())
    variants = [
        make_invoice(total="226.01"),
        make_invoice(kind="ordinary"),
        make_invoice(remarks="PO 4712"),
        make_invoice(buyer={"tax_id": BUYER_TAX_ID, "name": "Other buyer"}),
        make_invoice(lines=[make_line(description="Consulting services.")]),
        make_invoice(lines=[make_line(quantity="3")]),
        make_invoice(lines=[make_line(), make_line()]),
        make_invoice(number=make_invoice()["number"][:-1] + "9"),
    ]
    hashes = {_hash(v) for v in variants}
    assert base not in hashes
    assert len(hashes) == len(variants)


def test_canonical_contains_every_business_field() -> None:
    doc = canonical(InvoiceCreate.model_validate(make_invoice()))
    assert set(doc) == {"number", "kind", "issue_date", "seller", "buyer", "lines", "total_amount", "total_tax",
                        "total", "currency", "remarks"}
    assert set(doc["lines"][0]) == {"description", "tax_code", "quantity", "unit_price", "amount",  # type: ignore[index]
                                    "tax_rate", "tax_amount"}
