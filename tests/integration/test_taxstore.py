"""The simulated tax store against real PostgreSQL, as its clients see it: the authority's contract
(idempotency, rejections with reason codes, bulk batches, listing) and every fault it injects. The
sync and reconciler services are only as trustworthy as the faults proven here."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from fapiao.infra import free_port
from fapiao.infra.procs import spawn, stop_group
from services.issuer.rules import canonical
from services.issuer.rules import content_hash as issuer_content_hash
from services.issuer.schemas import InvoiceCreate
from services.taxstore.settings import TaxstoreSettings
from tests import factories
from tests.harness import ADMIN_TOKEN, eventually, fresh_database

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NO_FAULTS = {"latency_ms": 0, "latency_jitter_ms": 0, "error_rate": 0.0, "timeout_rate": 0.0, "drop_rate": 0.0,
             "visibility_delay_ms": 0, "corrupt_rate": 0.0, "outage": False, "seed": None, "timeout_hang_ms": 30_000}
BATCH_MAX = 300


def taxstore_settings(database_url: str, **over: Any) -> TaxstoreSettings:
    values: dict[str, Any] = {"env": "test", "database_url": database_url, "admin_token": ADMIN_TOKEN,
                              "log_json": False, "batch_max": BATCH_MAX, "max_body_bytes": 1024 * 1024}
    values.update(over)
    return TaxstoreSettings(**values)


@dataclass
class Store:
    app: Any
    client: httpx.AsyncClient

    async def faults(self, **knobs: Any) -> dict[str, Any]:
        r = await self.client.put("/admin/faults", json=knobs, headers=ADMIN)
        assert r.status_code == 200, r.text
        return r.json()

    async def stats(self) -> dict[str, Any]:
        r = await self.client.get("/admin/stats", headers=ADMIN)
        assert r.status_code == 200, r.text
        return r.json()

    async def submit(self, doc: dict[str, Any], red_letter_of: str | None = None) -> httpx.Response:
        return await self.client.post("/v1/invoices", json={"invoice": doc, "red_letter_of": red_letter_of})

    async def batch(self, submissions: list[Any]) -> list[dict[str, Any]]:
        r = await self.client.post("/v1/invoices/batch", json={"submissions": submissions})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["index"] for x in results] == list(range(len(submissions)))
        return results

    async def get(self, doc: dict[str, Any]) -> httpx.Response:
        return await self.client.get(f"/v1/invoices/{doc['seller']['tax_id']}/{doc['number']}")


async def start_taxstore(settings: TaxstoreSettings) -> tuple[Any, httpx.AsyncClient, Any]:
    from services.taxstore.app import create_app

    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://taxstore.test", timeout=30)
    return app, client, lifespan


@pytest.fixture(scope="module")
async def database_url(infra) -> str:  # type: ignore[no-untyped-def]
    return await fresh_database(infra, f"taxstore_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    app, client, lifespan = await start_taxstore(taxstore_settings(database_url))
    try:
        yield Store(app, client)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture(autouse=True)
async def clean_slate(store: Store) -> None:
    """Faults off and counters at zero before every test: each test states the faults it wants."""
    await store.faults(**NO_FAULTS)
    r = await store.client.post("/admin/stats/reset", headers=ADMIN)
    assert r.status_code == 200


def doc(seller: str | None = None, *, issue: date | None = None, **line_over: Any) -> dict[str, Any]:
    """The canonical document the issuer emits for a fresh ERP invoice (what the sync service sends)."""
    raw = factories.invoice(seller or factories.uscc(), lines=[factories.line(**line_over)])
    if issue is not None:
        raw.update(issue_date=issue.isoformat(), number=factories.number(issue))
    return canonical(InvoiceCreate.model_validate(raw))  # type: ignore[return-value]


def red(original: dict[str, Any], quantity: str = "-1") -> dict[str, Any]:
    """A red-letter document reversing part of `original` (one line of -quantity x 100.00 at 13 %)."""
    return doc(original["seller"]["tax_id"], quantity=quantity)


def _counts(stats: dict[str, Any], *names: str) -> dict[str, int]:
    return {n: stats[n] for n in names}


# --- the contract -----------------------------------------------------------------------------

async def test_content_hash_is_the_issuers_hash_of_the_same_document(store: Store) -> None:
    raw = factories.invoice(factories.uscc(), remarks="", buyer={"tax_id": "91440300708461136T", "name": "买方"})
    inv = InvoiceCreate.model_validate(raw)
    canonical_doc = canonical(inv)
    r = await store.submit(canonical_doc)  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    assert r.json()["content_hash"] == issuer_content_hash(canonical_doc)
    got = (await store.get(canonical_doc)).json()  # type: ignore[arg-type]
    assert got["content"] == canonical_doc and got["content_hash"] == issuer_content_hash(canonical_doc)


async def test_submit_is_idempotent_on_seller_number_and_content(store: Store) -> None:
    d = doc()
    first = await store.submit(d)
    assert first.status_code == 201, first.text
    receipt = first.json()
    assert receipt["receipt_no"].startswith("TS") and len(receipt["receipt_no"]) == 20
    assert receipt["duplicate"] is False and receipt["repaired"] is False
    assert (receipt["seller_tax_id"], receipt["number"]) == (d["seller"]["tax_id"], d["number"])

    again = await store.submit({k: d[k] for k in reversed(list(d))})  # key order does not matter
    assert again.status_code == 200, again.text
    assert again.json() == {**receipt, "duplicate": True}

    other = await store.submit({**d, "remarks": "changed"})
    assert other.status_code == 409, other.text
    body = other.json()
    assert body["code"] == "number_conflict"
    assert body["receipt_no"] == receipt["receipt_no"] and body["content_hash"] == receipt["content_hash"]
    assert other.headers["content-type"].startswith("application/problem+json")

    same_number_other_seller = await store.submit({**d, "seller": {**d["seller"], "tax_id": factories.uscc()}})
    assert same_number_other_seller.status_code == 201

    got = await store.get(d)
    assert got.status_code == 200
    view = got.json()
    assert view["receipt_no"] == receipt["receipt_no"] and view["content"] == d
    assert (view["kind"], view["invoice_type"], view["total"], view["red_letter_of"]) == ("blue", "special", "226.00",
                                                                                          None)
    assert view["issue_date"] == d["issue_date"] and view["visible_at"] >= view["stored_at"]
    stats = await store.stats()
    assert _counts(stats, "submissions", "stored", "duplicates", "conflicts") == \
        {"submissions": 4, "stored": 2, "duplicates": 1, "conflicts": 1}


def _set_line(d: dict[str, Any], **over: str) -> dict[str, Any]:
    return {**d, "lines": [{**d["lines"][0], **over}]}


REJECTIONS: dict[str, tuple[Any, str, str]] = {
    # name: (make(doc) -> submission, reason_code, path of the first reason)
    "missing field": (lambda d: {"invoice": {k: v for k, v in d.items() if k != "total"}}, "MALFORMED",
                      "invoice.total"),
    "money as a JSON number": (lambda d: {"invoice": _set_line(d, amount=200)}, "MALFORMED",
                               "invoice.lines[0].amount"),
    "unknown field": (lambda d: {"invoice": d, "priority": "high"}, "MALFORMED", "priority"),
    "not an object": (lambda d: {"invoice": [d]}, "MALFORMED", "invoice"),
    "NUL in a name": (lambda d: {"invoice": {**d, "buyer": {**d["buyer"], "name": "a\x00b"}}}, "MALFORMED",
                      "invoice.buyer.name"),
    "lone surrogate": (lambda d: {"invoice": {**d, "remarks": "\ud800"}}, "MALFORMED", "invoice.remarks"),
    "bad red_letter_of": (lambda d: {"invoice": d, "red_letter_of": "12"}, "MALFORMED", "red_letter_of"),
    "number not 20 digits": (lambda d: {"invoice": {**d, "number": d["number"][:19]}}, "NUMBER_INVALID",
                             "invoice.number"),
    "number of another year": (lambda d: {"invoice": {**d, "number": "00" + d["number"][2:]}}, "NUMBER_INVALID",
                               "invoice.number"),
    "seller USCC check char": (lambda d: {"invoice": {**d, "seller": {**d["seller"], "tax_id": "914403001922038217"}}},
                               "SELLER_TAX_ID_INVALID", "invoice.seller.tax_id"),
    "buyer USCC": (lambda d: {"invoice": {**d, "buyer": {**d["buyer"], "tax_id": "91440300708461136X"}}},
                   "BUYER_TAX_ID_INVALID", "invoice.buyer.tax_id"),
    "special without buyer": (lambda d: {"invoice": {**d, "buyer": {**d["buyer"], "tax_id": None}}},
                              "BUYER_TAX_ID_INVALID", "invoice.buyer.tax_id"),
    "tax rate": (lambda d: {"invoice": _set_line(d, tax_rate="0.1", tax_amount="20.00") | {
        "total_tax": "20.00", "total": "220.00"}}, "TAX_RATE_INVALID", "invoice.lines[0].tax_rate"),
    "line amount": (lambda d: {"invoice": _set_line(d, amount="250.00", tax_amount="32.50") | {
        "total_amount": "250.00", "total_tax": "32.50", "total": "282.50"}}, "LINE_AMOUNT_MISMATCH",
        "invoice.lines[0].amount"),
    "line tax": (lambda d: {"invoice": _set_line(d, tax_amount="30.00") | {"total_tax": "30.00", "total": "230.00"}},
                 "LINE_TAX_MISMATCH", "invoice.lines[0].tax_amount"),
    "sum of lines": (lambda d: {"invoice": {**d, "total_amount": "201.00", "total": "227.00"}}, "TOTAL_MISMATCH",
                     "invoice.total_amount"),
    "total": (lambda d: {"invoice": {**d, "total": "227.00"}}, "TOTAL_MISMATCH", "invoice.total"),
    "negative blue": (lambda d: {"invoice": red(d)}, "AMOUNT_NOT_POSITIVE", "invoice.lines[0].amount"),
    "positive red": (lambda d: {"invoice": d, "red_letter_of": factories.number()}, "RED_LETTER_NOT_NEGATIVE",
                     "invoice.lines[0].amount"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_authority_rejects_with_a_reason_code_and_path(store: Store, case: str) -> None:
    make, code, path = REJECTIONS[case]
    d = doc()
    # ASCII-escaped JSON, so a lone surrogate travels as the \ud800 escape a hostile client would send.
    body_bytes = json.dumps(make(d)).encode()
    r = await store.client.post("/v1/invoices", content=body_bytes, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "rejected" and body["reason_code"] == code, body
    assert body["reasons"][0] == {"code": code, "path": path, "message": body["reasons"][0]["message"]}
    assert body["reasons"][0]["message"] and body["detail"]
    assert (await store.get(d)).status_code == 404
    # Permanent: the same submission is rejected the same way again.
    again = (await store.client.post("/v1/invoices", content=body_bytes,
                                     headers={"Content-Type": "application/json"})).json()
    assert again["reasons"] == body["reasons"]
    assert (await store.stats())["rejected"] == 2


async def test_every_broken_rule_is_reported(store: Store) -> None:
    d = {**doc(), "total": "1.00", "buyer": {"tax_id": "bad", "name": "x"}}
    r = await store.submit(d)
    assert r.status_code == 422
    assert [(x["code"], x["path"]) for x in r.json()["reasons"]] == [
        ("BUYER_TAX_ID_INVALID", "invoice.buyer.tax_id"), ("TOTAL_MISMATCH", "invoice.total")]


async def test_red_letters_reverse_at_most_their_original(store: Store) -> None:
    original = doc()
    assert (await store.submit(original)).status_code == 201  # total 226.00
    number = original["number"]

    missing = await store.submit(red(original), red_letter_of=factories.number())
    assert missing.json()["reason_code"] == "RED_LETTER_ORIGINAL_NOT_FOUND"
    assert missing.json()["reasons"][0]["path"] == "red_letter_of"
    other_seller = await store.submit(red(doc()), red_letter_of=number)
    assert other_seller.json()["reason_code"] == "RED_LETTER_SELLER_MISMATCH"

    first = red(original)  # -113.00
    r = await store.submit(first, red_letter_of=number)
    assert r.status_code == 201, r.text
    view = (await store.get(first)).json()
    assert (view["kind"], view["red_letter_of"], view["total"]) == ("red", number, "-113.00")
    again = await store.submit(first, red_letter_of=number)  # its own amount is not counted twice
    assert again.status_code == 200 and again.json()["duplicate"] is True

    too_much = red(original, quantity="-1.01")  # -114.13: 227.13 > 226.00
    r = await store.submit(too_much, red_letter_of=number)
    assert r.status_code == 422 and r.json()["reason_code"] == "RED_LETTER_EXCEEDS_ORIGINAL"
    assert (await store.submit(red(original), red_letter_of=number)).status_code == 201  # exactly 226.00
    r = await store.submit(red(original, quantity="-0.01"), red_letter_of=number)
    assert r.json()["reason_code"] == "RED_LETTER_EXCEEDS_ORIGINAL"

    of_a_red = await store.submit(red(original), red_letter_of=first["number"])
    assert of_a_red.json()["reason_code"] == "RED_LETTER_ORIGINAL_NOT_FOUND"


async def test_red_letters_in_one_batch_count_earlier_items(store: Store) -> None:
    original = doc()
    n = original["number"]
    results = await store.batch([
        {"invoice": red(original), "red_letter_of": n},  # before its original: not on record yet
        {"invoice": original},
        {"invoice": red(original), "red_letter_of": n},
        {"invoice": red(original), "red_letter_of": n},
        {"invoice": red(original), "red_letter_of": n},  # 3 x 113.00 > 226.00
    ])
    assert [x["status"] for x in results] == [422, 201, 201, 201, 422]
    assert results[0]["reason_code"] == "RED_LETTER_ORIGINAL_NOT_FOUND"
    assert results[4]["reason_code"] == "RED_LETTER_EXCEEDS_ORIGINAL"


# --- batches ----------------------------------------------------------------------------------

async def test_batch_answers_each_item_in_order_with_single_endpoint_semantics(store: Store) -> None:
    seller = factories.uscc()
    existing, a, b = doc(seller), doc(seller), doc(seller)
    stored = (await store.submit(existing)).json()
    results = await store.batch([
        {"invoice": a},
        {"invoice": a},  # the same number again in one batch: a resubmission of the first
        {"invoice": {**a, "remarks": "other"}},
        {"invoice": {**b, "total": "1.00"}},
        {"invoice": existing},
        {"invoice": {**existing, "remarks": "other"}},
        {"invoice": b},
        "not a submission",
    ])
    assert [x["status"] for x in results] == [201, 200, 409, 422, 200, 409, 201, 422]
    assert results[0]["duplicate"] is False and results[1]["duplicate"] is True
    assert results[1]["receipt_no"] == results[0]["receipt_no"] == results[2]["receipt_no"]
    assert results[2]["code"] == "number_conflict" and results[2]["content_hash"] == results[0]["content_hash"]
    assert results[3]["code"] == "rejected" and results[3]["reason_code"] == "TOTAL_MISMATCH"
    assert results[3]["reasons"][0]["path"] == "invoice.total"
    assert results[4]["receipt_no"] == results[5]["receipt_no"] == stored["receipt_no"]
    assert results[6]["number"] == b["number"]  # the same number was rejected earlier: this one stands alone
    assert results[7]["reason_code"] == "MALFORMED" and results[7]["reasons"][0]["path"] == "(submission)"
    assert len({x["receipt_no"] for x in results if x["status"] == 201}) == 2
    for d in (a, b):
        assert (await store.get(d)).json()["content"] == d
    stats = await store.stats()
    assert _counts(stats, "submissions", "stored", "duplicates", "conflicts", "rejected") == \
        {"submissions": 9, "stored": 3, "duplicates": 2, "conflicts": 2, "rejected": 2}


async def test_batch_over_the_limit_is_413_and_draws_no_faults(store: Store) -> None:
    r = await store.client.post("/v1/invoices/batch", json={"submissions": [{}] * (BATCH_MAX + 1)})
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large" and r.json()["batch_max"] == BATCH_MAX
    r = await store.client.post("/v1/invoices/batch", json={"submissions": []})
    assert r.status_code == 422
    assert (await store.stats())["requests"] == 0


async def test_batch_is_a_handful_of_statements_whatever_its_size(store: Store) -> None:
    seller = factories.uscc()
    docs = [doc(seller) for _ in range(BATCH_MAX)]
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement.split(None, 1)[0].upper())

    engine = store.app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        started = time.perf_counter()
        results = await store.batch([{"invoice": d} for d in docs])
        elapsed = time.perf_counter() - started
        assert [x["status"] for x in results] == [201] * BATCH_MAX
        new_statements = list(statements)
        statements.clear()
        again = await store.batch([{"invoice": d} for d in docs])
        assert [x["status"] for x in again] == [200] * BATCH_MAX
        assert [x["receipt_no"] for x in again] == [x["receipt_no"] for x in results]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # Receipt numbers, then one INSERT for the lot; a resubmission adds one SELECT for the rows already held.
    assert new_statements == ["SELECT", "INSERT"], new_statements
    assert statements == ["SELECT", "INSERT", "SELECT"], statements
    assert elapsed < 10, f"{BATCH_MAX} invoices took {elapsed:.1f}s"


# --- reading ----------------------------------------------------------------------------------

async def test_listing_pages_by_issue_date_and_number_within_a_window(store: Store) -> None:
    seller = factories.uscc()
    today = factories.today()
    days = [today - timedelta(days=k) for k in range(5)]
    docs = [doc(seller, issue=days[i % 5]) for i in range(23)]
    assert all(x["status"] == 201 for x in await store.batch([{"invoice": d} for d in docs]))
    await store.submit(doc())  # another seller's invoice never shows up
    expected = sorted((d["issue_date"], d["number"]) for d in docs)

    seen: list[tuple[str, str]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"seller_tax_id": seller, "limit": 10}
        if cursor:
            params["cursor"] = cursor
        r = await store.client.get("/v1/invoices", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        assert all("content" not in item for item in page["items"])
        seen += [(item["issue_date"], item["number"]) for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == expected

    window = {"seller_tax_id": seller, "issued_from": days[3].isoformat(), "issued_to": days[1].isoformat(),
              "include_content": "true"}
    page = (await store.client.get("/v1/invoices", params=window)).json()
    assert [(i["issue_date"], i["number"]) for i in page["items"]] == \
        [k for k in expected if days[3].isoformat() <= k[0] <= days[1].isoformat()]
    assert page["next_cursor"] is None and len(page["items"]) > 0
    by_number = {d["number"]: d for d in docs}
    assert all(i["content"] == by_number[i["number"]] for i in page["items"])

    bad = await store.client.get("/v1/invoices", params={"seller_tax_id": seller, "cursor": "bm9wZQ"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "cursor"
    missing = await store.client.get("/v1/invoices")
    assert missing.status_code == 422 and missing.json()["errors"][0]["path"] == "seller_tax_id"
    too_many = await store.client.get("/v1/invoices", params={"seller_tax_id": seller, "limit": 1001})
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["path"] == "limit"


# --- faults -----------------------------------------------------------------------------------

async def test_visibility_delay_hides_stored_invoices_until_it_passes(store: Store) -> None:
    await store.faults(visibility_delay_ms=800)
    d = doc()
    r = await store.submit(d)
    assert r.status_code == 201
    assert (await store.get(d)).status_code == 404
    listed = await store.client.get("/v1/invoices", params={"seller_tax_id": d["seller"]["tax_id"]})
    assert listed.json()["items"] == []
    assert (await store.submit(d)).status_code == 200  # stored all along: a resubmission is a duplicate
    got = await eventually(lambda: _visible(store, d), timeout=5, interval=0.1)
    assert got["receipt_no"] == r.json()["receipt_no"]
    view = got
    assert view["visible_at"] > view["stored_at"]


async def _visible(store: Store, d: dict[str, Any]) -> dict[str, Any] | None:
    r = await store.get(d)
    return r.json() if r.status_code == 200 else None


async def test_drop_answers_stored_but_stores_nothing(store: Store) -> None:
    await store.faults(drop_rate=1.0)
    d = doc()
    r = await store.submit(d)
    assert r.status_code == 201 and r.json()["receipt_no"].startswith("TS")
    dropped_receipt = r.json()["receipt_no"]
    results = await store.batch([{"invoice": d}])  # the batch endpoint drops the same way
    assert results[0]["status"] == 201
    await store.faults(drop_rate=0.0)
    assert (await store.get(d)).status_code == 404
    stats = await store.stats()
    assert _counts(stats, "dropped", "stored") == {"dropped": 2, "stored": 0}
    resent = await store.submit(d)
    assert resent.status_code == 201 and resent.json()["receipt_no"] != dropped_receipt
    assert (await store.get(d)).status_code == 200


async def test_corruption_changes_stored_content_and_a_resubmission_repairs_it(store: Store) -> None:
    await store.faults(corrupt_rate=1.0)
    d = doc()
    r = await store.submit(d)
    assert r.status_code == 201
    receipt = r.json()
    assert receipt["content_hash"] == issuer_content_hash(d)  # the corruption is silent
    await store.faults(corrupt_rate=0.0)
    held = (await store.get(d)).json()
    assert held["content"] != d and held["content"]["total"] == "227.00" and held["total"] == "227.00"
    assert held["content_hash"] != receipt["content_hash"]
    assert held["content_hash"] == issuer_content_hash(held["content"])

    repaired = await store.submit(d)
    assert repaired.status_code == 200
    assert repaired.json() == {**receipt, "duplicate": True, "repaired": True}
    held = (await store.get(d)).json()
    assert held["content"] == d and held["content_hash"] == receipt["content_hash"] and held["total"] == "226.00"
    again = await store.submit(d)
    assert again.json()["repaired"] is False
    stats = await store.stats()
    assert _counts(stats, "stored", "corrupted", "repaired", "duplicates") == \
        {"stored": 1, "corrupted": 1, "repaired": 1, "duplicates": 1}


async def test_error_rate_answers_500_and_changes_nothing(store: Store) -> None:
    await store.faults(error_rate=1.0)
    d = doc()
    r = await store.submit(d)
    assert r.status_code == 500 and r.json()["code"] == "injected_error"
    assert (await store.client.post("/v1/invoices/batch", json={"submissions": [{"invoice": d}]})).status_code == 500
    assert (await store.get(d)).status_code == 500
    await store.faults(error_rate=0.0)
    assert (await store.get(d)).status_code == 404
    stats = await store.stats()
    assert _counts(stats, "requests", "errors", "submissions") == {"requests": 4, "errors": 3, "submissions": 0}


async def test_outage_refuses_everything_until_lifted(store: Store) -> None:
    await store.faults(outage=True, error_rate=1.0)
    d = doc()
    for r in (await store.submit(d), await store.get(d),
              await store.client.get("/v1/invoices", params={"seller_tax_id": d["seller"]["tax_id"]})):
        assert r.status_code == 503 and r.json()["code"] == "outage" and r.headers["retry-after"] == "1"
    assert (await store.client.get("/healthz")).status_code == 200
    assert (await store.client.get("/readyz")).json() == {"status": "ready", "checks": {"database": "ok"}}
    stats = await store.stats()
    assert _counts(stats, "outage_refused", "errors") == {"outage_refused": 3, "errors": 0}
    await store.faults(outage=False, error_rate=0.0)
    assert (await store.submit(d)).status_code == 201


async def _timed_out_batch(store: Store, docs: list[dict[str, Any]], seed: int) -> set[int]:
    """Submit `docs` under timeout_rate=1 with a fresh `seed`, give up on the answer as a client with a
    short timeout would, and return the indexes the store applied anyway."""
    await store.faults(timeout_rate=1.0, timeout_hang_ms=5_000, seed=seed)
    before = await store.stats()
    task = asyncio.create_task(store.client.post("/v1/invoices/batch",
                                                 json={"submissions": [{"invoice": d} for d in docs]}))
    # The request hangs after its writes; other requests are answered meanwhile.
    await eventually(lambda: _timeouts_above(store, before["timeouts"]), timeout=10, interval=0.02)
    assert not task.done()
    task.cancel()  # ASGITransport ignores client timeouts: cancelling is the client giving up
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.faults(timeout_rate=0.0)
    return {i for i, d in enumerate(docs) if (await store.get(d)).status_code == 200}


async def _timeouts_above(store: Store, n: int) -> bool:
    return (await store.stats())["timeouts"] > n


async def test_timeouts_apply_a_seeded_share_of_writes(store: Store) -> None:
    seller = factories.uscc()
    first = await _timed_out_batch(store, [doc(seller) for _ in range(20)], seed=7)
    stats = await store.stats()
    assert stats["timeouts"] == 1
    assert stats["timeouts_applied"] + stats["timeouts_not_applied"] == 20
    assert len(first) == stats["timeouts_applied"] == stats["stored"]
    assert 0 < len(first) < 20  # seed 7 gives a mix
    second = await _timed_out_batch(store, [doc(seller) for _ in range(20)], seed=7)
    assert second == first, "same seed, same requests in the same order: the same writes applied"
    other = await _timed_out_batch(store, [doc(seller) for _ in range(20)], seed=8)
    assert other != first

    # A client that waits gets the 504 once the hang is over.
    await store.faults(timeout_rate=1.0, timeout_hang_ms=300)
    started = time.perf_counter()
    r = await store.get(doc())
    assert r.status_code == 504 and r.json()["code"] == "injected_timeout"
    assert time.perf_counter() - started >= 0.3


async def test_latency_delays_v1_requests_only(store: Store) -> None:
    await store.faults(latency_ms=200, latency_jitter_ms=100)
    started = time.perf_counter()
    assert (await store.get(doc())).status_code == 404
    assert 0.2 <= time.perf_counter() - started < 2
    started = time.perf_counter()
    await store.stats()
    assert time.perf_counter() - started < 0.2


# --- admin ------------------------------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", "/admin/faults", None), ("PUT", "/admin/faults", {"outage": True}), ("GET", "/admin/stats", None),
    ("POST", "/admin/stats/reset", None), ("POST", "/admin/lose", {"count": 1000}),
    ("PUT", "/admin/sellers/91440300708461136T", {"name": "x"}), ("GET", "/admin/sellers/91440300708461136T", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
async def test_admin_endpoints_need_the_admin_token(store: Store, method: str, path: str, body: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": ADMIN_TOKEN}):
        r = await store.client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["code"] == "unauthorized"
    assert (await store.client.get("/admin/faults", headers=ADMIN)).json()["outage"] is False


async def test_put_faults_is_a_validated_partial_update(store: Store) -> None:
    full = await store.faults(drop_rate=0.25, seed=42)
    assert full == {**NO_FAULTS, "drop_rate": 0.25, "seed": 42}
    assert await store.faults(error_rate=1) == {**full, "error_rate": 1.0}
    for body, path in [({"error_rate": 1.5}, "error_rate"), ({"drop_rate": -0.1}, "drop_rate"),
                       ({"latency_ms": -1}, "latency_ms"), ({"bogus": 1}, "bogus"), ({"outage": "yes"}, "outage"),
                       ({"corrupt_rate": None}, "corrupt_rate"), ({"seed": 1.5}, "seed")]:
        r = await store.client.put("/admin/faults", json=body, headers=ADMIN)
        assert r.status_code == 422, body
        assert [e["path"] for e in r.json()["errors"]] == [path]
    assert (await store.client.get("/admin/faults", headers=ADMIN)).json() == {**full, "error_rate": 1.0}
    assert (await store.faults(seed=None))["seed"] is None
    stats = await store.stats()
    assert stats["faults"]["error_rate"] == 1.0 and stats["requests"] == 0


async def test_lose_deletes_stored_invoices_later(store: Store) -> None:
    seller, other = factories.uscc(), factories.uscc()
    mine = [doc(seller) for _ in range(3)]
    theirs = doc(other)
    results = await store.batch([{"invoice": d} for d in [*mine, theirs]])
    r = await store.client.post("/admin/lose", headers=ADMIN, json={"invoices": [
        {"seller_tax_id": seller, "number": mine[0]["number"]}, {"seller_tax_id": seller, "number": "1" * 20}]})
    assert r.status_code == 200
    assert r.json() == {"lost": [{"seller_tax_id": seller, "number": mine[0]["number"],
                                  "receipt_no": results[0]["receipt_no"]}]}
    assert (await store.get(mine[0])).status_code == 404
    r = await store.client.post("/admin/lose", headers=ADMIN, json={"count": 5, "seller_tax_id": seller})
    assert sorted(x["number"] for x in r.json()["lost"]) == sorted(d["number"] for d in mine[1:])
    for d in mine:
        assert (await store.get(d)).status_code == 404
    assert (await store.get(theirs)).status_code == 200
    assert (await store.stats())["lost"] == 3
    # A lost invoice submitted again is simply new.
    assert (await store.submit(mine[0])).status_code == 201
    bad = await store.client.post("/admin/lose", headers=ADMIN, json={"count": 1, "invoices": []})
    assert bad.status_code == 422


async def test_registration_is_required_when_configured(store: Store, database_url: str) -> None:
    app, client, lifespan = await start_taxstore(taxstore_settings(database_url, require_registration=True))
    try:
        d = doc()
        tax_id = d["seller"]["tax_id"]
        r = await client.post("/v1/invoices", json={"invoice": d})
        assert r.status_code == 422 and r.json()["reason_code"] == "SELLER_NOT_REGISTERED"
        assert r.json()["reasons"][0]["path"] == "invoice.seller.tax_id"
        assert (await client.get(f"/admin/sellers/{tax_id}", headers=ADMIN)).status_code == 404
        r = await client.put(f"/admin/sellers/{tax_id}", json={"name": "销方"}, headers=ADMIN)
        assert r.status_code == 201 and r.json()["tax_id"] == tax_id
        r = await client.put(f"/admin/sellers/{tax_id}", json={"name": "销方 renamed"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["name"] == "销方 renamed"
        assert (await client.get(f"/admin/sellers/{tax_id}", headers=ADMIN)).json()["name"] == "销方 renamed"
        bad = await client.put("/admin/sellers/914403001922038217", json={"name": "x"}, headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "tax_id"
        r = await client.post("/v1/invoices", json={"invoice": d})
        assert r.status_code == 201, r.text
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
    # Without the requirement, an unregistered seller is fine.
    assert (await store.submit(doc())).status_code == 201


# --- plumbing ---------------------------------------------------------------------------------

async def test_probes_and_metrics(store: Store) -> None:
    assert (await store.client.get("/healthz")).json() == {"status": "ok"}
    ready = await store.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok"}
    await store.submit(doc())
    metrics = (await store.client.get("/metrics")).text
    assert 'fapiao_http_requests_total{method="POST",route="/v1/invoices",service="taxstore",status="201"}' in metrics
    assert 'fapiao_taxstore_events_total{kind="stored"}' in metrics


async def test_hostile_bodies_get_4xx(store: Store) -> None:
    r = await store.client.post("/v1/invoices", content=b'{"invoice": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = await store.client.post("/v1/invoices", json=[1, 2])
    assert r.status_code == 422
    r = await store.client.post("/v1/invoices", content=b'{"invoice": {"\\udfff": 1}}',
                                headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["reason_code"] == "MALFORMED"
    big = b'{"invoice": {"remarks": "' + b"a" * (1024 * 1024) + b'"}}'
    r = await store.client.post("/v1/invoices", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert (await store.stats())["requests"] == 1  # only the one that reached the authority's checks


async def test_migrations_match_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from services.taxstore.models import metadata

    def diff(conn):  # type: ignore[no-untyped-def]
        ctx = MigrationContext.configure(conn, opts={"include_schemas": True, "compare_type": True,
                                                     "include_name": _ours})
        return compare_metadata(ctx, metadata)

    async with store.app.state.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


def _ours(name, type_, parent_names):  # type: ignore[no-untyped-def]
    if type_ == "schema":
        return name == "taxstore"
    return name != "alembic_version"


# --- the real process -------------------------------------------------------------------------

async def test_the_real_process_serves_and_times_out_over_http(infra, database_url: str) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    log = infra.workdir / "taxstore-process.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}
    env.update(FAPIAO_DATABASE_URL=database_url, FAPIAO_ADMIN_TOKEN=ADMIN_TOKEN, FAPIAO_ENV="test",
               FAPIAO_PORT=str(port), FAPIAO_FAULT_SEED="11")
    migrate = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.taxstore", "migrate", cwd=REPO,
                                                   env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(migrate.communicate(), timeout=60)
    assert migrate.returncode == 0, output.decode()[-3000:]
    proc = spawn([sys.executable, "-m", "services.taxstore"], log_path=log, cwd=REPO, env=env, die_with_parent=True)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async def ready() -> bool:
                assert proc.poll() is None, f"taxstore exited early:\n{log.read_text()[-3000:]}"
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, timeout=60, interval=0.2)
            d = doc()
            r = await client.post("/v1/invoices", json={"invoice": d})
            assert r.status_code == 201, r.text
            assert (await client.get(f"/v1/invoices/{d['seller']['tax_id']}/{d['number']}")).json()["content"] == d
            assert (await client.get("/admin/faults", headers=ADMIN)).json()["seed"] == 11  # from the environment

            r = await client.put("/admin/faults", json={"timeout_rate": 1.0, "timeout_hang_ms": 20_000}, headers=ADMIN)
            assert r.status_code == 200
            docs = [doc() for _ in range(10)]
            started = time.perf_counter()
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/invoices/batch", json={"submissions": [{"invoice": x} for x in docs]},
                                  timeout=0.5)
            assert time.perf_counter() - started < 5
            assert (await client.get("/healthz", timeout=2)).status_code == 200
            stats = (await client.get("/admin/stats", headers=ADMIN)).json()
            assert stats["timeouts"] == 1
            assert stats["timeouts_applied"] + stats["timeouts_not_applied"] == 10
            await client.put("/admin/faults", json={"timeout_rate": 0.0}, headers=ADMIN)
            found = [(await client.get(f"/v1/invoices/{x['seller']['tax_id']}/{x['number']}")).status_code
                     for x in docs]
            assert found.count(200) == stats["timeouts_applied"]
    finally:
        stopping = time.perf_counter()
        stop_group(proc.pid, timeout=10)
        proc.wait(5)
    # The hung request noticed its client leave, so it does not hold up shutdown (capped at 3 s otherwise).
    assert time.perf_counter() - stopping < 2.5
    assert ADMIN_TOKEN not in log.read_text(), "the admin token never reaches the logs"
