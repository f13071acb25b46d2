"""What clients send, kept as sent or refused whole: decimals keep their scale, a CSV that cannot be read is
refused with 422 naming the row (nothing written), and the import honours an Idempotency-Key."""

from __future__ import annotations

import asyncio
import uuid

from tests import factories

CSV = {"Content-Type": "text/csv"}


def _csv(docs: list[dict], *, tweak=None) -> str:  # type: ignore[no-untyped-def]
    from services.issuer.csv_import import COLUMNS

    rows = [",".join(COLUMNS)]
    for d in docs:
        for ln in d["lines"]:
            cells = [d["number"], d["kind"], d["issue_date"], d["buyer"]["tax_id"] or "", d["buyer"]["name"],
                     ln["description"], ln["tax_code"], ln["quantity"], ln["unit_price"], ln["amount"],
                     ln["tax_rate"], ln["tax_amount"], d.get("remarks") or ""]
            rows.append(",".join(cells))
    if tweak is not None:
        rows = tweak(rows)
    return "\n".join(rows) + "\n"


async def _numbers_stored(issuer, tenant, docs: list[dict]) -> list[str]:  # type: ignore[no-untyped-def]
    found = []
    for d in docs:
        r = await issuer.client.get("/v1/invoices", params={"number": d["number"]}, headers=tenant.headers)
        assert r.status_code == 200, r.text
        found += [i["number"] for i in r.json()["items"]]
    return found


# --- decimals ------------------------------------------------------------------------------------

async def test_decimals_come_back_with_the_scale_they_were_sent_with(issuer, tenant):
    doc = factories.invoice(tenant.tax_id, lines=[factories.line(quantity="2.000", unit_price="100.00",
                                                                 rate="0.130")])
    r = await issuer.client.post("/v1/invoices", json=doc, headers=tenant.headers)
    assert r.status_code == 201, r.text
    got = (await issuer.client.get(f"/v1/invoices/{r.json()['id']}", headers=tenant.headers)).json()
    line = got["invoice"]["lines"][0]
    assert (line["quantity"], line["unit_price"], line["tax_rate"]) == ("2.000", "100.00", "0.130")
    assert (line["amount"], got["invoice"]["total"], got["total"]) == ("200.00", "226.00", "226.00")

    # Duplicate detection does not depend on the scale: 2 x 100 at 0.13 is the invoice already issued.
    respelled = {**doc, "lines": [{**doc["lines"][0], "quantity": "2", "unit_price": "100", "tax_rate": "0.13"}]}
    again = await issuer.client.post("/v1/invoices", json=respelled, headers=tenant.headers)
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"], again.text
    kept = (await issuer.client.get(f"/v1/invoices/{r.json()['id']}", headers=tenant.headers)).json()
    assert kept["invoice"]["lines"][0]["unit_price"] == "100.00", "the first spelling stays"
    other = factories.invoice(tenant.tax_id, number=doc["number"], lines=[factories.line(unit_price="100.005")])
    clash = await issuer.client.post("/v1/invoices", json=other, headers=tenant.headers)
    assert clash.status_code == 409, clash.text


async def test_an_imported_unit_price_keeps_its_scale(issuer, tenant):
    doc = factories.invoice(tenant.tax_id, lines=[factories.line(quantity="2.50", unit_price="80.000")])
    r = await issuer.client.post("/v1/invoices/import", content=_csv([doc]), headers={**tenant.headers, **CSV})
    assert r.status_code == 200 and r.json()["created"] == 1, r.text
    got = (await issuer.client.get(f"/v1/invoices/{r.json()['results'][0]['id']}", headers=tenant.headers)).json()
    assert (got["invoice"]["lines"][0]["quantity"], got["invoice"]["lines"][0]["unit_price"]) == ("2.50", "80.000")


# --- a file that cannot be read is refused whole ---------------------------------------------------

async def test_an_oversized_cell_is_422_naming_row_and_column_and_nothing_is_written(issuer, tenant):
    docs = [factories.invoice(tenant.tax_id) for _ in range(3)]
    for size in (2001, 131_073, 1_000_000):  # 131,073 was a 500 (csv.Error: field larger than field limit)
        docs[1]["remarks"] = "x" * size
        r = await issuer.client.post("/v1/invoices/import", content=_csv(docs), headers={**tenant.headers, **CSV})
        assert r.status_code == 422, (size, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/problem+json")
        [error] = r.json()["errors"]
        assert (error["row"], error["column"], error["path"]) == (3, "remarks", "row 3, column remarks"), error
        assert "row 3" in r.json()["detail"]
    assert await _numbers_stored(issuer, tenant, docs) == [], "nothing of a refused file is kept"


async def test_an_unclosed_quote_is_422_naming_the_row_where_it_opens(issuer, tenant):
    docs = [factories.invoice(tenant.tax_id) for _ in range(500)]

    def open_quote(rows: list[str]) -> list[str]:
        rows[5] = rows[5].replace(docs[4]["buyer"]["name"], '"' + docs[4]["buyer"]["name"])
        return rows

    for body in (_csv(docs, tweak=open_quote), _csv(docs[:10], tweak=open_quote)):  # swallowing much, or to the end
        r = await issuer.client.post("/v1/invoices/import", content=body, headers={**tenant.headers, **CSV})
        assert r.status_code == 422, r.text[:300]
        [error] = r.json()["errors"]
        assert (error["row"], error["column"]) == (6, "buyer_name"), error
        assert "quote" in error["reason"], error
    assert await _numbers_stored(issuer, tenant, docs[:10]) == []


async def test_a_row_with_more_cells_than_the_header_is_422_naming_the_row(issuer, tenant):
    first = factories.invoice(tenant.tax_id, lines=[factories.line(), factories.line(description="培训")])
    second = factories.invoice(tenant.tax_id)

    def extra_cell(rows: list[str]) -> list[str]:
        rows[2] += ",unexpected"  # the second line of the first invoice
        return rows

    r = await issuer.client.post("/v1/invoices/import", content=_csv([first, second], tweak=extra_cell),
                                 headers={**tenant.headers, **CSV})
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["row"] == 3 and "14 cells" in error["reason"], error
    assert await _numbers_stored(issuer, tenant, [first, second]) == [], "no invoice one line short"


# --- Idempotency-Key ---------------------------------------------------------------------------------

async def test_import_with_an_idempotency_key_replays_the_first_answer(issuer, tenant):
    docs = [factories.invoice(tenant.tax_id) for _ in range(3)]
    docs[2]["lines"][0]["amount"] = "1.00"  # one rejected row: its fate is part of the stored answer
    body = _csv(docs).encode()
    headers = {**tenant.headers, **CSV, "Idempotency-Key": f"import-{uuid.uuid4()}"}
    first = await issuer.client.post("/v1/invoices/import", content=body, headers=headers)
    assert first.status_code == 200 and first.json()["created"] == 2 and first.json()["rejected"] == 1, first.text
    assert "idempotent-replayed" not in first.headers

    # Concurrent repeats (a client retrying after a dropped connection) get the same bytes; nothing is issued twice.
    repeats = await asyncio.gather(*[issuer.client.post("/v1/invoices/import", content=body, headers=headers)
                                     for _ in range(5)])
    assert {r.status_code for r in repeats} == {200}
    assert {r.content for r in repeats} == {first.content}, "the first answer, byte for byte"
    assert all(r.headers["idempotent-replayed"] == "true" for r in repeats)
    assert sorted(await _numbers_stored(issuer, tenant, docs)) == sorted(d["number"] for d in docs[:2])

    other = await issuer.client.post("/v1/invoices/import", content=_csv([factories.invoice(tenant.tax_id)]),
                                     headers=headers)
    assert other.status_code == 422 and other.json()["errors"][0]["path"] == "Idempotency-Key", other.text
    # The key belongs to the import: the same key on POST /v1/invoices is another request.
    single = await issuer.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id), headers={
        **tenant.headers, "Idempotency-Key": headers["Idempotency-Key"]})
    assert single.status_code == 422 and single.json()["errors"][0]["path"] == "Idempotency-Key"


async def test_a_refused_file_does_not_use_up_the_key(issuer, tenant):
    key = f"import-{uuid.uuid4()}"
    headers = {**tenant.headers, **CSV, "Idempotency-Key": key}
    doc = factories.invoice(tenant.tax_id)
    broken = await issuer.client.post("/v1/invoices/import", content=_csv([doc]) + '"unclosed\n', headers=headers)
    assert broken.status_code == 422
    fixed = await issuer.client.post("/v1/invoices/import", content=_csv([doc]), headers=headers)
    assert fixed.status_code == 200 and fixed.json()["created"] == 1, fixed.text
    bad_key = await issuer.client.post("/v1/invoices/import", content=_csv([doc]),
                                       headers={**tenant.headers, **CSV, "Idempotency-Key": "has space"})
    assert bad_key.status_code == 422
