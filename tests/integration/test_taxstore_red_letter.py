"""The tax store's life of an invoice after issue, against real PostgreSQL: red-letter confirmation forms
(红字发票信息确认单) and the red invoices issued for them, verification (发票查验), and cross-region review,
each under the store's fault knobs. What the store answers here is what the issuer, sync and reconciler will
build on."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from services.taxstore.policy import coin
from shared.uscc import ALPHABET, check_char
from tests import factories
from tests.harness import ADMIN_TOKEN, eventually, fresh_database
from tests.integration.test_taxstore import NO_FAULTS, Store, doc, start_taxstore, taxstore_settings
from tests.steps import problem

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BUYER = "91440300708461136T"  # the factories' buyer, registered in Guangdong (44)
POLICY = {"confirm_window_s": 600.0, "used_rate": 0.0, "review_threshold": None, "review_delay_s": 600.0,
          "review_denial_rate": 0.0, "decision_seed": 0}


@pytest.fixture(scope="module")
async def store(infra) -> AsyncIterator[Store]:  # type: ignore[no-untyped-def]
    database_url = await fresh_database(infra, f"taxstore_rl_{uuid.uuid4().hex[:8]}")
    app, client, lifespan = await start_taxstore(taxstore_settings(database_url))
    try:
        yield Store(app, client)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture(autouse=True)
async def clean_slate(store: Store) -> None:
    await store.faults(**NO_FAULTS)
    await policy(store)
    assert (await store.client.post("/admin/stats/reset", headers=ADMIN)).status_code == 200


async def policy(store: Store, **over: Any) -> dict[str, Any]:
    r = await store.client.put("/admin/policy", json={**POLICY, **over}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def uscc_in(province: str) -> str:
    """A valid USCC registered in `province` (the first two administrative-division digits)."""
    body = "91" + province + "0100" + "".join(random.choice(ALPHABET) for _ in range(9))
    return body + check_char(body)


async def issued(store: Store, seller: str | None = None, **line: Any) -> dict[str, Any]:
    d = doc(seller or uscc_in("44"), **line)
    r = await store.submit(d)
    assert r.status_code == 201, r.text
    return d


def form_body(d: dict[str, Any], *, by: str | None = None, lines: list[dict[str, Any]] | None = None,
              reason: str = "01", request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": request_id or uuid.uuid4().hex, "reason_code": reason,
                            "invoice": {"seller_tax_id": d["seller"]["tax_id"], "number": d["number"]},
                            "requested_by": by or d["seller"]["tax_id"]}
    if lines is not None:
        body["lines"] = lines
    return body


async def create(store: Store, body: dict[str, Any], expect: int = 201) -> dict[str, Any]:
    r = await store.client.post("/v1/red-letter-forms", json=body)
    assert r.status_code == expect, r.text
    return r.json()  # type: ignore[no-any-return]


async def decide(store: Store, form_no: str, by: str, action: str = "confirm") -> httpx.Response:
    return await store.client.post(f"/v1/red-letter-forms/{form_no}/{action}", json={"by": by})


async def view(store: Store, seller: str, number: str) -> dict[str, Any]:
    r = await store.client.get(f"/v1/invoices/{seller}/{number}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def verify(store: Store, number: str, issue_date: str, total: str) -> dict[str, Any]:
    r = await store.client.post("/v1/verify", json={"number": number, "issue_date": issue_date, "total": total})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# --- forms ------------------------------------------------------------------------------------

async def test_a_full_form_without_confirmation_issues_the_red_invoice_at_once(store: Store) -> None:
    d = await issued(store)  # 2 x 100.00 at 13 %: 226.00
    seller, number = d["seller"]["tax_id"], d["number"]
    body = form_body(d, reason="02")
    form = await create(store, body)
    assert (form["status"], form["confirmation_required"], form["scope"]) == ("confirmed", False, "full")
    assert (form["reason_code"], form["reason_text"], form["total"]) == ("02", "销货退回", "-226.00")
    assert form["invoice"] == {"seller_tax_id": seller, "number": number} and form["requested_role"] == "seller"
    red_no = form["red_invoice"]["number"]
    red = await view(store, seller, red_no)
    assert (red["kind"], red["red_letter_of"], red["total"]) == ("red", number, "-226.00")
    assert red["content"] == form["red_invoice"]["content"] and red["receipt_no"] == form["red_invoice"]["receipt_no"]
    assert red["content"]["lines"][0]["quantity"] == "-2" and red["content"]["buyer"] == d["buyer"]
    blue = await view(store, seller, number)
    assert (blue["state"], blue["red_letter_state"], blue["red_lettered_total"], blue["remaining_total"]) == \
        ("red_lettered", "fully", "226.00", "0.00")
    # Existing fields unchanged for the sync service and the reconciler.
    assert (blue["kind"], blue["total"], blue["red_letter_of"], blue["content"]) == ("blue", "226.00", None, d)

    again = await create(store, {k: body[k] for k in reversed(list(body))}, expect=200)
    assert again == form
    conflict = await store.client.post("/v1/red-letter-forms", json={**body, "reason_code": "01"})
    assert problem(conflict, 409, "request_conflict")["form_no"] == form["form_no"]
    nothing_left = await store.client.post("/v1/red-letter-forms", json=form_body(d))
    assert problem(nothing_left, 422, "validation_failed")["errors"][0]["path"] == "invoice"
    stats = await store.stats()
    assert {k: stats[k] for k in ("forms_created", "forms_answered_again", "red_issued")} == \
        {"forms_created": 1, "forms_answered_again": 1, "red_issued": 1}


async def test_partial_forms_wait_for_the_buyer_who_used_the_invoice(store: Store) -> None:
    await policy(store, used_rate=1.0)
    d = await issued(store)
    seller, number = d["seller"]["tax_id"], d["number"]
    first = await create(store, form_body(d, lines=[{"line": 0, "amount": "-100.00", "quantity": "-1"}]))
    assert (first["status"], first["confirmation_required"], first["awaiting_confirmation_from"]) == \
        ("pending", True, BUYER)
    assert first["red_invoice"] is None and first["expires_at"] and first["total"] == "-113.00"
    no = first["form_no"]

    problem(await decide(store, no, seller), 409, "own_form")
    problem(await decide(store, no, uscc_in("11")), 404, "not_found")  # a stranger learns nothing
    awaiting = (await store.client.get("/v1/red-letter-forms", params={"party_tax_id": BUYER, "awaiting": "true",
                                                                       "invoice_number": number})).json()
    assert [f["form_no"] for f in awaiting["items"]] == [no]
    mine = (await store.client.get("/v1/red-letter-forms", params={"party_tax_id": seller, "awaiting": "true"})).json()
    assert mine["items"] == []  # the seller waits; it has nothing to decide

    # The pending form holds its 100.00: 100.00 of the line is left, so 150.00 is too much.
    over = await store.client.post("/v1/red-letter-forms", json=form_body(d, lines=[{"line": 0, "amount": "-150.00"}]))
    body = problem(over, 422, "validation_failed")
    assert body["errors"][0]["path"] == "lines[0].amount" and "100.00" in body["errors"][0]["reason"]
    bad_line = await store.client.post("/v1/red-letter-forms",
                                       json=form_body(d, lines=[{"line": 3, "amount": "-1.00"}]))
    assert problem(bad_line, 422, "validation_failed")["errors"][0]["path"] == "lines[0].line"
    qty = await store.client.post("/v1/red-letter-forms",
                                  json=form_body(d, lines=[{"line": 0, "amount": "-50.00", "quantity": "-1"}]))
    assert problem(qty, 422, "validation_failed")["errors"][0]["path"] == "lines[0].amount"
    assert (await view(store, seller, number))["red_letter_state"] == "none"  # nothing issued while pending

    confirmed = await decide(store, no, BUYER)
    assert confirmed.status_code == 200, confirmed.text
    form = confirmed.json()
    assert (form["status"], form["decided_by"]) == ("confirmed", BUYER) and form["red_invoice"]["number"]
    blue = await view(store, seller, number)
    assert (blue["state"], blue["red_letter_state"], blue["remaining_total"]) == ("partly_red_lettered", "partly",
                                                                                "113.00")
    assert (await decide(store, no, BUYER)).json() == form  # a retried confirmation changes nothing
    problem(await decide(store, no, BUYER, "reject"), 409, "form_confirmed")

    # A rejected form frees its amount; a full form then takes what is left (113.00).
    second = await create(store, form_body(d, reason="04", lines=[{"line": 0, "amount": "-60.00"}]))
    rejected = await decide(store, second["form_no"], BUYER, "reject")
    assert rejected.json()["status"] == "rejected"
    problem(await decide(store, second["form_no"], BUYER), 409, "form_rejected")
    rest = await create(store, form_body(d, reason="03"))
    assert rest["total"] == "-113.00" and rest["lines"][0]["amount"] == "-100.00"
    assert (await decide(store, rest["form_no"], BUYER)).status_code == 200
    blue = await view(store, seller, number)
    assert (blue["state"], blue["remaining_total"], blue["red_lettered_total"]) == ("red_lettered", "0.00", "226.00")
    stats = await store.stats()
    assert {k: stats[k] for k in ("forms_created", "forms_confirmed", "forms_rejected", "red_issued")} == \
        {"forms_created": 3, "forms_confirmed": 2, "forms_rejected": 1, "red_issued": 2}


async def test_the_buyer_asks_and_the_seller_confirms(store: Store) -> None:
    d = await issued(store)  # the buyer has not used it (rate 0): a form of the buyer's still needs the seller
    form = await create(store, form_body(d, by=BUYER, reason="02"))
    assert (form["status"], form["requested_role"], form["awaiting_confirmation_from"]) == \
        ("pending", "buyer", d["seller"]["tax_id"])
    problem(await decide(store, form["form_no"], BUYER), 409, "own_form")
    done = await decide(store, form["form_no"], d["seller"]["tax_id"])
    assert done.json()["status"] == "confirmed"
    red = await view(store, d["seller"]["tax_id"], done.json()["red_invoice"]["number"])
    assert red["red_letter_of"] == d["number"] and red["total"] == "-226.00"
    other = await store.client.post("/v1/red-letter-forms", json=form_body(d, by=uscc_in("12")))
    problem(other, 404, "not_found")  # neither its seller nor its buyer


async def test_an_unconfirmed_form_is_void_after_the_window_and_frees_its_amount(store: Store) -> None:
    await policy(store, used_rate=1.0, confirm_window_s=1.0)
    d = await issued(store)
    form = await create(store, form_body(d))
    assert form["status"] == "pending"

    async def voided() -> dict[str, Any] | None:
        r = (await store.client.get(f"/v1/red-letter-forms/{form['form_no']}", params={"party_tax_id": BUYER})).json()
        return r if r["status"] == "voided" else None

    gone = await eventually(voided, timeout=5, interval=0.2)
    assert gone["decided_at"] == gone["expires_at"] and gone["awaiting_confirmation_from"] is None
    problem(await decide(store, form["form_no"], BUYER), 409, "form_voided")
    listed = (await store.client.get("/v1/red-letter-forms", params={"party_tax_id": BUYER, "status": "voided",
                                                                     "invoice_number": d["number"]})).json()
    assert [f["form_no"] for f in listed["items"]] == [form["form_no"]]
    again = await create(store, form_body(d))  # the whole 226.00 is free again
    assert again["total"] == "-226.00" and again["status"] == "pending"


async def test_bad_form_requests_are_problems_never_500(store: Store) -> None:
    d = await issued(store)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**form_body(d), "reason_code": "05"}, 422, "reason_code"),
        ({**form_body(d), "lines": []}, 422, "lines"),
        (form_body(d, lines=[{"line": 0, "amount": "50.00"}]), 422, "lines[0].amount"),
        ({**form_body(d), "requested_by": "9144030070846113"}, 422, "requested_by"),
        ({**form_body(d), "request_id": "a b"}, 422, "request_id"),
        ({**form_body(d), "extra": 1}, 422, "extra"),
    ]
    for body, status, path in cases:
        r = await store.client.post("/v1/red-letter-forms", json=body)
        assert problem(r, status, "validation_failed")["errors"][0]["path"] == path, (body, r.text)
    unknown = form_body(d)
    unknown["invoice"] = {**unknown["invoice"], "number": factories.number()}
    problem(await store.client.post("/v1/red-letter-forms", json=unknown), 404, "not_found")
    red_form = await create(store, form_body(d))
    of_red = form_body(d)
    of_red["invoice"]["number"] = red_form["red_invoice"]["number"]
    r = await store.client.post("/v1/red-letter-forms", json=of_red)
    assert problem(r, 422, "validation_failed")["errors"][0]["path"] == "invoice.number"
    problem(await store.client.get("/v1/red-letter-forms/HZ000000000000000000", params={"party_tax_id": BUYER}),
            404, "not_found")
    assert (await store.client.get("/v1/red-letter-forms/nope", params={"party_tax_id": BUYER})).status_code == 422
    assert (await store.client.get(f"/v1/red-letter-forms/{red_form['form_no']}")).status_code == 422
    assert (await store.client.get("/v1/red-letter-forms")).status_code == 422  # party_tax_id is required


# --- faults -----------------------------------------------------------------------------------

async def _until_answered(call: Any, attempts: int = 60) -> httpx.Response:
    """Retry as a client does through injected 500s and 504s, until an answer that is not a fault."""
    for _ in range(attempts):
        r = await call()
        if r.status_code not in (500, 503, 504):
            return r  # type: ignore[no-any-return]
    raise AssertionError(f"no answer in {attempts} attempts")


async def test_retried_form_writes_under_errors_and_timeouts_make_one_form_and_one_red_invoice(store: Store) -> None:
    await policy(store, used_rate=1.0)
    docs = [await issued(store) for _ in range(5)]
    # Seed 5: among these writes are errors, timeouts that applied the write and ones that did not.
    await store.faults(error_rate=0.3, timeout_rate=0.4, timeout_hang_ms=50, seed=5)
    answers = []
    for d in docs:
        body = form_body(d, lines=[{"line": 0, "amount": "-100.00", "quantity": "-1"}])
        made = await _until_answered(lambda body=body: store.client.post("/v1/red-letter-forms", json=body))
        assert made.status_code in (200, 201), made.text
        no = made.json()["form_no"]
        confirmed = await _until_answered(lambda no=no: decide(store, no, BUYER))
        assert confirmed.status_code == 200 and confirmed.json()["status"] == "confirmed", confirmed.text
        answers.append((made.status_code, confirmed.json()))
    stats = await store.stats()
    await store.faults(error_rate=0.0, timeout_rate=0.0)
    assert stats["timeouts"] > 0 and stats["errors"] > 0, stats
    # A timed-out create that had made its form: the retry is answered that form (200), not a second one.
    assert stats["forms_answered_again"] > 0 and any(status == 200 for status, _ in answers), stats

    for d, (_, form) in zip(docs, answers, strict=True):
        seller = d["seller"]["tax_id"]
        forms = (await store.client.get("/v1/red-letter-forms", params={
            "party_tax_id": seller, "invoice_number": d["number"]})).json()["items"]
        assert [f["form_no"] for f in forms] == [form["form_no"]]
        listed = (await store.client.get("/v1/invoices", params={"seller_tax_id": seller})).json()["items"]
        assert [i["number"] for i in listed if i["red_letter_of"] == d["number"]] == [form["red_invoice"]["number"]]
        assert (await view(store, seller, d["number"]))["remaining_total"] == "113.00"
    assert (stats["forms_created"], stats["red_issued"]) == (5, 5)


async def test_a_dropped_red_invoice_is_resubmitted_without_counting_twice(store: Store) -> None:
    d = await issued(store)
    seller = d["seller"]["tax_id"]
    await store.faults(drop_rate=1.0)
    form = await create(store, form_body(d))
    await store.faults(drop_rate=0.0)
    red = form["red_invoice"]
    assert form["status"] == "confirmed" and red["receipt_no"].startswith("TS")
    assert (await store.get({"seller": {"tax_id": seller}, "number": red["number"]})).status_code == 404
    assert (await store.stats())["red_dropped"] == 1
    assert (await view(store, seller, d["number"]))["red_letter_state"] == "none"
    # What a resync sends: the form's red invoice, as a red letter of the blue one. The form already holds
    # its 226.00, which must not be counted a second time.
    r = await store.submit(red["content"], red_letter_of=d["number"])
    assert r.status_code == 201, r.text
    assert (await view(store, seller, d["number"]))["state"] == "red_lettered"
    r = await store.submit(doc(seller, quantity="-1"), red_letter_of=d["number"])
    assert r.json()["reason_code"] == "RED_LETTER_EXCEEDS_ORIGINAL"


async def test_outage_refuses_form_writes_and_verification(store: Store) -> None:
    d = await issued(store)
    await store.faults(outage=True)
    problem(await store.client.post("/v1/red-letter-forms", json=form_body(d)), 503, "outage")
    problem(await store.client.post("/v1/verify", json={"number": d["number"], "issue_date": d["issue_date"],
                                                        "total": d["total"]}), 503, "outage")
    await store.faults(outage=False)
    assert (await store.stats())["forms_created"] == 0


# --- verification -----------------------------------------------------------------------------

async def test_verification_answers_the_invoices_standing_and_counts_lookups(store: Store) -> None:
    await policy(store, used_rate=1.0)
    normal, partly, full = await issued(store), await issued(store), await issued(store)
    answer = await verify(store, normal["number"], normal["issue_date"], normal["total"])
    assert (answer["result"], answer["result_text"], answer["seller_tax_id"], answer["remaining_total"]) == \
        ("normal", "正常", normal["seller"]["tax_id"], "226.00")

    part = await create(store, form_body(partly, lines=[{"line": 0, "amount": "-100.00"}]))
    pending = await verify(store, partly["number"], partly["issue_date"], partly["total"])
    assert pending["result"] == "normal"  # a pending form reverses nothing yet
    assert (await decide(store, part["form_no"], BUYER)).status_code == 200
    answer = await verify(store, partly["number"], partly["issue_date"], partly["total"])
    assert (answer["result"], answer["result_text"], answer["remaining_total"]) == \
        ("partly_red_lettered", "部分红冲", "113.00")

    whole = await create(store, form_body(full))
    assert (await decide(store, whole["form_no"], BUYER)).status_code == 200
    answer = await verify(store, full["number"], full["issue_date"], full["total"])
    assert (answer["result"], answer["result_text"]) == ("red_lettered", "已红冲")
    got = await store.client.get(f"/v1/red-letter-forms/{whole['form_no']}", params={"party_tax_id": BUYER})
    red = got.json()["red_invoice"]["content"]
    problem(await store.client.get(f"/v1/red-letter-forms/{whole['form_no']}",
                                   params={"party_tax_id": uscc_in("11")}), 404, "not_found")
    answer = await verify(store, red["number"], red["issue_date"], red["total"])
    assert (answer["result"], answer["kind"], answer["red_letter_of"]) == ("normal", "red", full["number"])

    for number, day, total in [(factories.number(), normal["issue_date"], normal["total"]),
                               (normal["number"], normal["issue_date"], "226.01"),
                               (normal["number"], "2020-01-01", normal["total"])]:
        answer = await verify(store, number, day, total)
        assert (answer["result"], answer["result_text"]) == ("not_found", "查无此票")
        assert "seller_tax_id" not in answer  # nothing about an invoice that was not named exactly
    for bad, path in [({"number": "1", "issue_date": "2026-01-01", "total": "1.00"}, "number"),
                      ({"number": normal["number"], "issue_date": "2026-02-30", "total": "1.00"}, "issue_date"),
                      ({"number": normal["number"], "issue_date": "2026-01-01", "total": 1}, "total")]:
        r = await store.client.post("/v1/verify", json=bad)
        assert problem(r, 422, "validation_failed")["errors"][0]["path"] == path
    stats = await store.stats()
    assert {k: stats[k] for k in ("verifications", "verified_normal", "verified_partly_red_lettered",
                                  "verified_red_lettered", "verified_not_found")} == \
        {"verifications": 8, "verified_normal": 3, "verified_partly_red_lettered": 1, "verified_red_lettered": 1,
         "verified_not_found": 3}
    metrics = (await store.client.get("/metrics")).text
    assert 'fapiao_taxstore_events_total{kind="verifications"}' in metrics


# --- cross-region review ----------------------------------------------------------------------

async def test_cross_region_invoices_above_the_threshold_are_held_until_the_bureau_decides(store: Store) -> None:
    await policy(store, review_threshold="200.00")
    far = uscc_in("11")  # Beijing, selling to Guangdong
    held_ok, held_denied = await issued(store, far), await issued(store, far)
    small = await issued(store, far, quantity="1")  # 113.00: under the threshold
    near = await issued(store, uscc_in("44"))  # same province
    for d in (small, near):
        v = await view(store, d["seller"]["tax_id"], d["number"])
        assert (v["review_status"], v["state"]) == (None, "normal")
    for d in (held_ok, held_denied):
        v = await view(store, far, d["number"])
        assert (v["review_status"], v["state"]) == ("under_review", "under_review") and v["review_due_at"]
        assert (await verify(store, d["number"], d["issue_date"], d["total"]))["result"] == "under_review"
    r = await store.client.post("/v1/red-letter-forms", json=form_body(held_ok))
    problem(r, 409, "invoice_under_review")
    queue = (await store.client.get("/admin/reviews", params={"status": "under_review", "seller_tax_id": far},
                                    headers=ADMIN)).json()["items"]
    assert sorted(i["number"] for i in queue) == sorted([held_ok["number"], held_denied["number"]])

    path = f"/admin/reviews/{far}/{held_ok['number']}"
    r = await store.client.post(path, json={"decision": "approve"}, headers=ADMIN)
    assert r.status_code == 200 and (r.json()["review_status"], r.json()["state"]) == ("approved", "normal")
    assert (await store.client.post(path, json={"decision": "approve"}, headers=ADMIN)).status_code == 200
    problem(await store.client.post(path, json={"decision": "deny"}, headers=ADMIN), 409, "review_decided")
    r = await store.client.post(f"/admin/reviews/{far}/{held_denied['number']}",
                                json={"decision": "deny", "note": "交易不真实"}, headers=ADMIN)
    assert (r.json()["review_status"], r.json()["state"], r.json()["review_note"]) == ("denied", "voided", "交易不真实")
    answer = await verify(store, held_denied["number"], held_denied["issue_date"], held_denied["total"])
    assert (answer["result"], answer["result_text"]) == ("voided", "作废")
    problem(await store.client.post("/v1/red-letter-forms", json=form_body(held_denied)), 409, "invoice_voided")
    assert (await create(store, form_body(held_ok)))["status"] == "confirmed"  # approved: it counts
    problem(await store.client.post(f"/admin/reviews/{far}/{near['number']}", json={"decision": "approve"},
                                    headers=ADMIN), 404, "not_found")
    stats = await store.stats()
    assert (stats["reviews_approved"], stats["reviews_denied"]) == (2, 1)


async def test_the_bureau_decides_on_its_own_after_the_delay_with_a_seeded_denial_rate(store: Store) -> None:
    await policy(store, review_threshold="100.00", review_delay_s=1.0, review_denial_rate=0.5, decision_seed=9)
    far = uscc_in("31")
    docs: list[dict[str, Any]] = []
    expected: dict[str, str] = {}
    while len(docs) < 6 or len(set(expected.values())) < 2:  # numbers are random: go on until both outcomes
        assert len(docs) < 40
        docs.append(d := await issued(store, far))
        expected[d["number"]] = "denied" if coin(9, "deny", far, d["number"]) < 0.5 else "approved"

    async def decided() -> dict[str, str] | None:
        got = {d["number"]: (await view(store, far, d["number"]))["review_status"] for d in docs}
        return got if "under_review" not in got.values() else None

    assert await eventually(decided, timeout=6, interval=0.25) == expected
    late = next(n for n, outcome in expected.items() if outcome == "denied")
    r = await store.client.post(f"/admin/reviews/{far}/{late}", json={"decision": "approve"}, headers=ADMIN)
    assert "on its own" in problem(r, 409, "review_decided")["detail"]


# --- admin ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/admin/policy", None), ("PUT", "/admin/policy", {"used_rate": 1.0}), ("GET", "/admin/reviews", None),
    ("POST", f"/admin/reviews/{BUYER}/{'2' * 20}", {"decision": "approve"})])
async def test_new_admin_endpoints_need_the_admin_token(store: Store, method: str, path: str, body: Any) -> None:
    r = await store.client.request(method, path, json=body)
    problem(r, 401, "unauthorized")
    assert (await store.client.get("/admin/policy", headers=ADMIN)).json()["used_rate"] == 0.0


async def test_put_policy_is_a_validated_partial_update(store: Store) -> None:
    full = await policy(store)
    r = await store.client.put("/admin/policy", json={"review_threshold": "5000.00"}, headers=ADMIN)
    assert r.json() == {**full, "review_threshold": "5000.00"}
    for bad, path in [({"used_rate": 2}, "used_rate"), ({"confirm_window_s": 0}, "confirm_window_s"),
                      ({"review_threshold": 5000}, "review_threshold"), ({"bogus": 1}, "bogus")]:
        r = await store.client.put("/admin/policy", json=bad, headers=ADMIN)
        assert problem(r, 422, "validation_failed")["errors"][0]["path"] == path
    assert (await store.client.get("/admin/policy", headers=ADMIN)).json()["review_threshold"] == "5000.00"


async def test_the_policy_starts_from_the_settings(store: Store, infra) -> None:  # type: ignore[no-untyped-def]
    database_url = await fresh_database(infra, f"taxstore_rp_{uuid.uuid4().hex[:8]}")
    app, client, lifespan = await start_taxstore(taxstore_settings(
        database_url, red_letter_confirm_window="2h", review_threshold=Decimal("1000.00"), red_letter_used_rate=0.25))
    try:
        got = (await client.get("/admin/policy", headers=ADMIN)).json()
        assert (got["confirm_window_s"], got["review_threshold"], got["used_rate"]) == (7200.0, "1000.00", 0.25)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
    defaults = taxstore_settings(database_url)
    assert (defaults.red_letter_confirm_window, defaults.review_threshold) == (72 * 3600, None)


async def test_concurrent_twins_of_one_request_make_one_form(store: Store) -> None:
    d = await issued(store)
    body = form_body(d)
    answers = await asyncio.gather(*(store.client.post("/v1/red-letter-forms", json=body) for _ in range(4)))
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201]
    assert len({r.json()["form_no"] for r in answers}) == 1
