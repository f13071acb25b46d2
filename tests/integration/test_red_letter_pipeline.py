"""Red-letter credit notes end to end: the issuer's request travels outbox -> Kafka -> sync -> tax store like an
invoice; the form's changes come back; the authority's red invoice is recorded, submitted and reconciled like any
invoice; the blue one ends red_lettered or shows what is left; a buyer that is a tenant confirms with its own key;
verification (查验) is answered by the store. Real tax store, sync, reconciler over Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests import factories, steps
from tests.harness import Receiver, ReconPipeline, Tenant, eventually
from tests.steps import new_tenant, problem

POLICY = {"confirm_window_s": 600.0, "used_rate": 0.0, "review_threshold": None, "review_delay_s": 600.0,
          "review_denial_rate": 0.0, "decision_seed": 0}


async def pdf_text(p: ReconPipeline, tenant: Tenant, invoice_id: str) -> str:
    """An invoice's PDF as pdftotext reads it, white space removed."""
    r = await p.issuer.client.get(f"/v1/invoices/{invoice_id}/pdf", headers=tenant.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf", r.text[:300]
    from fapiao.infra.tools import ensure_pdftoppm

    pdftotext = str(ensure_pdftoppm().with_name("pdftotext"))  # the same poppler-utils, installed on first use
    done = await asyncio.to_thread(subprocess.run, [pdftotext, "-", "-"], input=r.content, capture_output=True,
                                   timeout=60, check=True)
    return "".join(done.stdout.decode().split())


async def policy(p: ReconPipeline, **over: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.put(f"{p.taxstore.url}/admin/policy", json={**POLICY, **over}, headers=p.admin)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
async def rl(recon_pipeline: ReconPipeline) -> AsyncIterator[ReconPipeline]:
    """The pipeline with the store's policy as this test sets it, put back afterwards."""
    async with httpx.AsyncClient(timeout=10) as c:
        before = (await c.get(f"{recon_pipeline.taxstore.url}/admin/policy", headers=recon_pipeline.admin)).json()
    await policy(recon_pipeline)
    try:
        yield recon_pipeline
    finally:
        await policy(recon_pipeline, **before)


async def buyer_tenant(p: ReconPipeline) -> Tenant:
    r = await p.issuer.client.post("/admin/tenants", json={"name": "买方 Buyer Co.", "tax_id": factories.uscc()},
                                   headers=p.admin)
    assert r.status_code == 201, r.text
    body = r.json()
    return Tenant(body["id"], body["tax_id"], {"Authorization": f"Bearer {body['api_key']}"})


async def confirmed_invoices(p: ReconPipeline, seller: Tenant, buyers: list[str | None]) -> list[dict[str, Any]]:
    """Invoices of the seller (one per buyer tax id; None: the factories' buyer), confirmed at the store."""
    docs = []
    for b in buyers:
        doc = factories.invoice(seller.tax_id)
        if b is not None:
            doc["buyer"] = {"tax_id": b, "name": "买方 Buyer Co."}
        docs.append(doc)
    r = await p.issuer.client.post("/v1/invoices/batch", json={"invoices": docs}, headers=seller.headers)
    assert r.status_code == 200, r.text
    ids = [x["invoice"]["id"] for x in r.json()["results"]]
    await steps.until_all(p, seller, "confirmed", len(docs), timeout=60)
    return [{**d, "id": i} for d, i in zip(docs, ids, strict=True)]


async def ask(p: ReconPipeline, tenant: Tenant, invoice_id: str, body: dict[str, Any], *, expect: int = 202,
              key: str | None = None) -> dict[str, Any]:
    headers = {**tenant.headers, **({"Idempotency-Key": key} if key else {})}
    r = await p.issuer.client.post(f"/v1/invoices/{invoice_id}/red-letter", json=body, headers=headers)
    assert r.status_code == expect, r.text
    return r.json()  # type: ignore[no-any-return]


async def form(p: ReconPipeline, tenant: Tenant, form_id: str) -> dict[str, Any]:
    r = await p.issuer.client.get(f"/v1/red-letter-forms/{form_id}", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def until_form(p: ReconPipeline, tenant: Tenant, form_id: str, status: str, timeout: float = 30
                     ) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        f = await form(p, tenant, form_id)
        return f if f["status"] == status else None
    try:
        return await eventually(check, timeout=timeout, interval=0.25)  # type: ignore[no-any-return]
    except AssertionError:
        raise AssertionError(f"form never {status}: {await form(p, tenant, form_id)}\n"
                             f"{p.sync.log_text()[-3000:]}") from None


async def until_status(p: ReconPipeline, tenant: Tenant, invoice_id: str, status: str,
                       timeout: float = 40) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        d = await steps.detail(p, tenant, invoice_id)
        return d if d["status"] == status else None
    try:
        return await eventually(check, timeout=timeout, interval=0.25)  # type: ignore[no-any-return]
    except AssertionError:
        d = await steps.detail(p, tenant, invoice_id)
        raise AssertionError(f"invoice {invoice_id} never {status}: {d['status']} {d['reason']}") from None


async def verify(p: ReconPipeline, tenant: Tenant, number: str, issue_date: str, total: str) -> dict[str, Any]:
    r = await p.issuer.client.post("/v1/verify", json={"number": number, "issue_date": issue_date, "total": total},
                                   headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def red_invoice_of(p: ReconPipeline, tenant: Tenant, f: dict[str, Any]) -> dict[str, Any]:
    assert f["red_invoice_id"], f
    return await until_status(p, tenant, f["red_invoice_id"], "confirmed")


async def test_full_and_partial_red_letters_with_and_without_the_buyers_confirmation(rl: ReconPipeline) -> None:
    p = rl
    seller, buyer, stranger = await new_tenant(p), await buyer_tenant(p), await new_tenant(p)
    full, part = await confirmed_invoices(p, seller, [None, buyer.tax_id])

    # Full, no confirmation needed (the buyer has not used it): the authority issues the red invoice at once.
    body = {"reason_code": "02"}
    asked = await ask(p, seller, full["id"], body, key="rl-full-1")
    assert (asked["status"], asked["scope"], asked["total"], asked["role"]) == ("requested", "full", "-226.00",
                                                                               "seller")
    assert asked["reason"] and asked["next_action"]
    again = await ask(p, seller, full["id"], body, key="rl-full-1")  # the same key: the first answer
    assert again["id"] == asked["id"]
    done = await until_form(p, seller, asked["id"], "confirmed")
    assert done["form_no"].startswith("HZ") and done["red_invoice_number"] and done["next_action"] is None
    red = await red_invoice_of(p, seller, done)
    assert (red["red_letter_of"], red["total"], red["invoice"]["total"]) == (full["number"], "-226.00", "-226.00")
    blue = await until_status(p, seller, full["id"], "red_lettered")
    assert blue["red_letter"]["remaining_total"] == "0.00" and "red-letter" in blue["reason"]
    # The red invoice's own page (版式文件): stamped 红字, the blue one it reverses, the negative total in capitals.
    page = await pdf_text(p, seller, red["id"])
    assert "红字" in page and f"被红冲蓝字发票号码：{full['number']}" in page, page
    assert "负贰佰贰拾陆圆整" in page and "¥-226.00" in page, page
    assert "已红冲" in await pdf_text(p, seller, full["id"])  # and the blue one's says it is reversed
    problem(await p.issuer.client.post(f"/v1/invoices/{full['id']}/red-letter", json=body, headers=seller.headers),
            409, "nothing_left")
    problem(await p.issuer.client.post(f"/v1/invoices/{red['id']}/red-letter", json=body, headers=seller.headers),
            409, "red_invoice")

    # Partial, the buyer (a tenant here) has used it: the form waits for its confirmation.
    await policy(p, used_rate=1.0)
    line = {"line": 0, "amount": "-100.00", "quantity": "-1"}
    asked = await ask(p, seller, part["id"], {"reason_code": "04", "lines": [line]})
    pending = await until_form(p, seller, asked["id"], "pending")
    assert pending["awaiting_confirmation_from"] == buyer.tax_id and pending["expires_at"]
    assert pending["total"] == "-113.00"
    problem(await p.issuer.client.post(f"/v1/invoices/{part['id']}/red-letter", json={"reason_code": "01"},
                                       headers=seller.headers), 409, "form_open")
    problem(await p.issuer.client.post(f"/v1/red-letter-forms/{asked['id']}/confirm", json={},
                                       headers=seller.headers), 409, "own_form")
    problem(await p.issuer.client.get(f"/v1/red-letter-forms/{asked['id']}", headers=stranger.headers),
            404, "not_found")
    problem(await p.issuer.client.post(f"/v1/red-letter-forms/{asked['id']}/confirm", json={},
                                       headers=stranger.headers), 404, "not_found")

    async def awaiting_buyer() -> list[dict[str, Any]] | None:
        r = await p.issuer.client.get("/v1/red-letter-forms", params={"awaiting": "true"}, headers=buyer.headers)
        assert r.status_code == 200, r.text
        return r.json()["items"] or None
    [waiting] = await eventually(awaiting_buyer, timeout=10, interval=0.25)
    assert (waiting["id"], waiting["role"], waiting["invoice_id"]) == (asked["id"], "buyer", None)
    assert "this tenant's confirmation" in waiting["reason"] and waiting["next_action_at"]
    # The buyer tenant is alerted once that a form waits for it, and (its window is well within the default
    # FAPIAO_FORM_EXPIRY_WARNING of 12 h) once that it will be void soon.
    async def two_alerts() -> list[str] | None:
        kinds = await alerts_of(p, part["id"])
        return kinds if len(kinds) >= 2 else None
    assert await eventually(two_alerts, timeout=20, interval=0.5) == ["form_awaiting", "form_expiring"]
    mine = await p.issuer.client.get("/v1/red-letter-forms", params={"awaiting": "true"}, headers=seller.headers)
    assert mine.json()["items"] == []  # the seller waits; it has nothing to decide

    r = await p.issuer.client.post(f"/v1/red-letter-forms/{asked['id']}/confirm", json={"note": "同意"},
                                   headers=buyer.headers)
    assert r.status_code == 202, r.text
    r = await p.issuer.client.post(f"/v1/red-letter-forms/{asked['id']}/confirm", json={"note": "同意"},
                                   headers=buyer.headers)
    assert r.status_code == 200, r.text  # asked already: answered again
    problem(await p.issuer.client.post(f"/v1/red-letter-forms/{asked['id']}/reject", json={},
                                       headers=buyer.headers), 409, "form_decided")
    confirmed = await until_form(p, seller, asked["id"], "confirmed")
    red = await red_invoice_of(p, seller, confirmed)
    assert (red["total"], red["red_letter_of"]) == ("-113.00", part["number"])
    blue = await steps.detail(p, seller, part["id"])
    assert blue["status"] == "confirmed"
    assert (blue["red_letter"]["red_lettered_total"], blue["red_letter"]["remaining_total"]) == ("113.00", "113.00")
    assert "已部分红冲¥113.00，余额¥113.00" in await pdf_text(p, seller, part["id"])
    # A second form on what is left, rejected by the buyer: nothing reversed, the seller alerted once.
    second = await ask(p, seller, part["id"], {"reason_code": "04", "lines": [{"line": 0, "amount": "-10.00"}]})
    await until_form(p, seller, second["id"], "pending")  # the buyer sees it once the store made it
    r = await p.issuer.client.post(f"/v1/red-letter-forms/{second['id']}/reject", json={"note": "不同意"},
                                   headers=buyer.headers)
    assert r.status_code == 202, r.text
    rejected = await until_form(p, seller, second["id"], "rejected")
    assert rejected["red_invoice_id"] is None and "rejected" in rejected["reason"]

    async def seller_alerted() -> list[str] | None:
        kinds = await alerts_of(p, part["id"])
        return kinds if "form_rejected" in kinds else None
    # Each form's own alerts, once each: two forms waited for the buyer, the second was rejected.
    assert await eventually(seller_alerted, timeout=20, interval=0.5) == [
        "form_awaiting", "form_awaiting", "form_expiring", "form_expiring", "form_rejected"]
    over = await p.issuer.client.post(f"/v1/invoices/{part['id']}/red-letter", headers=seller.headers,
                                      json={"reason_code": "04", "lines": [{"line": 0, "amount": "-150.00"}]})
    body422 = problem(over, 422, "validation_failed")
    assert body422["errors"][0]["path"] == "lines[0].amount" and body422["remaining_total"] == "113.00"

    # Verification (查验) through the issuer: a partly and a fully red-lettered one, a red one, an unknown one.
    got = await verify(p, buyer, part["number"], part["issue_date"], part["total"])
    assert (got["result"], got["remaining_total"]) == ("partly_red_lettered", "113.00")
    got = await verify(p, buyer, full["number"], full["issue_date"], full["total"])
    assert got["result"] == "red_lettered"
    got = await verify(p, buyer, red["number"], red["issue_date"], red["total"])
    assert (got["result"], got["kind"], got["red_letter_of"]) == ("normal", "red", part["number"])
    got = await verify(p, buyer, factories.number(), part["issue_date"], part["total"])
    assert (got["result"], got["result_text"]) == ("not_found", "查无此票")
    bad = await p.issuer.client.post("/v1/verify", json={"number": "1", "issue_date": "2026-01-01", "total": "1"},
                                     headers=buyer.headers)
    assert {e["path"] for e in problem(bad, 422, "validation_failed")["errors"]} == {"number", "total"}

    # Across tenants: another tenant's invoice is none at all; bad requests name the field.
    problem(await p.issuer.client.post(f"/v1/invoices/{part['id']}/red-letter", json={"reason_code": "01"},
                                       headers=stranger.headers), 404, "not_found")
    for bad_body, path in [({"reason_code": "05"}, "reason_code"), ({"reason_code": "01", "lines": []}, "lines"),
                           ({"reason_code": "01", "lines": [{"line": 0, "amount": "5.00"}]}, "lines[0].amount")]:
        r = await p.issuer.client.post(f"/v1/invoices/{part['id']}/red-letter", json=bad_body, headers=seller.headers)
        assert problem(r, 422, "validation_failed")["errors"][0]["path"] == path


async def test_a_form_nobody_confirms_is_void_after_the_window_and_a_new_one_may_be_asked(rl: ReconPipeline) -> None:
    p = rl
    seller = await new_tenant(p)
    [inv] = await confirmed_invoices(p, seller, [None])
    await policy(p, used_rate=1.0, confirm_window_s=1.5)
    asked = await ask(p, seller, inv["id"], {"reason_code": "01"})
    voided = await until_form(p, seller, asked["id"], "voided", timeout=20)
    assert "void" in voided["reason"] and voided["next_action"] and voided["red_invoice_id"] is None
    d = await steps.detail(p, seller, inv["id"])
    assert d["status"] == "confirmed" and d["red_letter"]["remaining_total"] == d["total"]
    async def ended() -> list[str] | None:
        kinds = await alerts_of(p, inv["id"])
        return kinds if "form_voided" in kinds else None
    assert await eventually(ended, timeout=20, interval=0.5) == ["form_expiring", "form_voided"]
    await policy(p, used_rate=0.0)
    again = await ask(p, seller, inv["id"], {"reason_code": "01"})
    await until_form(p, seller, again["id"], "confirmed")
    await until_status(p, seller, inv["id"], "red_lettered")


async def test_under_a_flaky_store_one_form_and_one_red_invoice_even_when_the_store_loses_it(
        rl: ReconPipeline) -> None:
    """Errors and ambiguous timeouts while the form is made (every retry is the same request), then a red
    invoice the store drops on issue: the sync service submits it as the issuer's and the reconciler sees it."""
    p = rl
    seller = await new_tenant(p)
    flaky, lost = await confirmed_invoices(p, seller, [None, None])
    await p.faults(error_rate=0.35, timeout_rate=0.35, timeout_hang_ms=300, seed=7)
    asked = await ask(p, seller, flaky["id"], {"reason_code": "01", "lines": [{"line": 0, "amount": "-50.00"}]})
    done = await until_form(p, seller, asked["id"], "confirmed", timeout=60)
    stats = await p.stats()
    await p.clear_faults()
    assert stats["errors"] + stats["timeouts"] > 0, stats
    red = await red_invoice_of(p, seller, done)
    async with httpx.AsyncClient(timeout=10) as c:
        forms = (await c.get(f"{p.taxstore.url}/v1/red-letter-forms", params={
            "party_tax_id": seller.tax_id, "invoice_number": flaky["number"]})).json()["items"]
    assert [f["form_no"] for f in forms] == [done["form_no"]]  # retried, never made twice
    stored = await p.stored(seller.tax_id)
    assert [n for n, i in stored.items() if i["red_letter_of"] == flaky["number"]] == [red["number"]]
    assert (await steps.detail(p, seller, flaky["id"]))["red_letter"]["remaining_total"] == \
        f"{Decimal(flaky['total']) - Decimal('56.50'):.2f}"

    await p.faults(drop_rate=1.0)
    asked = await ask(p, seller, lost["id"], {"reason_code": "01"})
    done = await until_form(p, seller, asked["id"], "confirmed")
    await p.clear_faults()
    red = await red_invoice_of(p, seller, done)  # submitted again (or resynced), then seen at the store
    assert red["number"] in await p.stored(seller.tax_id)
    await until_status(p, seller, lost["id"], "red_lettered")
    assert uuid.UUID(red["id"])


async def test_a_form_on_an_acknowledged_invoice_the_store_dropped_is_made_once_the_invoice_is_resynced(
        rl: ReconPipeline) -> None:
    """The store acknowledged the blue invoice and kept nothing (drop): a form asked for meanwhile is refused
    with "no invoice" (404). That is lag or loss, not a refusal for good: the sync service asks again
    (FAPIAO_FORM_MISSING_INVOICE_RETRY) while the reconciler resyncs the invoice, and the form is then made and
    confirmed; it does not end `failed`."""
    p = rl
    p.start_own("reconciler", FAPIAO_VISIBILITY_SLA="6")  # time to ask while the issuer still says submitted
    seller = await new_tenant(p)
    await p.faults(drop_rate=1.0)
    doc = factories.invoice(seller.tax_id)
    r = await p.issuer.client.post("/v1/invoices", json=doc, headers=seller.headers)
    assert r.status_code == 201, r.text
    blue = r.json()["id"]
    await until_status(p, seller, blue, "submitted")
    assert doc["number"] not in await p.stored(seller.tax_id)
    asked = await ask(p, seller, blue, {"reason_code": "01"})
    await asyncio.sleep(2)  # the form's first requests meet an invoice the store does not hold
    assert (await form(p, seller, asked["id"]))["status"] == "requested"
    await p.clear_faults()
    done = await until_form(p, seller, asked["id"], "confirmed", timeout=90)
    await red_invoice_of(p, seller, done)
    await until_status(p, seller, blue, "red_lettered")


# --- cross-region review (跨区域审核) -----------------------------------------------------------------------

def uscc_in(province: str) -> str:
    """A valid USCC registered in `province` (its first two administrative-division digits)."""
    from shared.uscc import ALPHABET, check_char

    body = "91" + province + "0100" + "".join(ALPHABET[b % len(ALPHABET)] for b in uuid.uuid4().bytes[:9])
    return body + check_char(body)


async def alerts_of(p: ReconPipeline, invoice_id: str) -> list[str]:
    from sqlalchemy import text

    async with p.issuer.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = (await conn.execute(text("select kind from notifier.alerts where invoice_id = :i order by kind"),
                                   {"i": invoice_id})).all()
    return [r[0] for r in rows]


async def test_cross_region_invoices_are_held_for_review_then_approved_or_denied_with_alerts_once(
        rl: ReconPipeline) -> None:
    p = rl
    p.start_own("reconciler", FAPIAO_REVIEW_SLA="2")
    await policy(p, review_threshold="100.00")
    r = await p.issuer.client.post("/admin/tenants", json={"name": "北京卖方 Beijing Seller", "tax_id": uscc_in("11")},
                                   headers=p.admin)
    assert r.status_code == 201, r.text
    body = r.json()
    seller = Tenant(body["id"], body["tax_id"], {"Authorization": f"Bearer {body['api_key']}"})
    await p.register(seller.tax_id)
    docs = [factories.invoice(seller.tax_id) for _ in range(2)]  # to Guangdong (44), 226.00 each
    r = await p.issuer.client.post("/v1/invoices/batch", json={"invoices": docs}, headers=seller.headers)
    assert r.status_code == 200, r.text
    approved, denied = (x["invoice"]["id"] for x in r.json()["results"])
    for iid in (approved, denied):
        held = await until_status(p, seller, iid, "under_review")
        assert held["next_action_at"] and "cross-region" in held["reason"], held
        assert "never resubmitted" in held["next_action"]
    stats = await p.stats()
    await eventually(lambda: alerts_of(p, approved), timeout=20, interval=0.5)  # held past the 2 s review SLA
    got = await verify(p, seller, docs[0]["number"], docs[0]["issue_date"], docs[0]["total"])
    assert got["result"] == "under_review"

    async with httpx.AsyncClient(timeout=10) as c:
        for doc, decision in ((docs[0], "approve"), (docs[1], "deny")):
            r = await c.post(f"{p.taxstore.url}/admin/reviews/{seller.tax_id}/{doc['number']}",
                             json={"decision": decision}, headers=p.admin)
            assert r.status_code == 200, r.text
    ok = await until_status(p, seller, approved, "confirmed")
    assert ok["next_action"] is None
    no = await until_status(p, seller, denied, "review_denied")
    assert "does not count" in no["reason"] and no["next_action"]
    assert (await p.stats())["submissions"] == stats["submissions"]  # a held invoice is never resubmitted

    async def alerted() -> dict[str, list[str]] | None:
        got = {"approved": await alerts_of(p, approved), "denied": await alerts_of(p, denied)}
        return got if "review_denied" in got["denied"] else None
    await eventually(alerted, timeout=20, interval=0.5)
    await __import__("asyncio").sleep(3)  # later checks raise nothing more
    assert await alerts_of(p, approved) == ["review_overdue"]
    assert await alerts_of(p, denied) == ["review_denied", "review_overdue"]


# --- a confirmed form owes a red invoice (the expected ledger) ---------------------------------------------------

async def recon_forms(p: ReconPipeline, invoice_id: str) -> list[dict[str, Any]]:
    """The reconciler's red_letter_forms rows of this blue invoice."""
    from sqlalchemy import text

    async with p.issuer.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = (await conn.execute(text("select form_id, state, gap_kind, red_number, case_no, case_own "
                                        "from reconciler.red_letter_forms where invoice_id = :i"),
                                   {"i": invoice_id})).all()
    return [dict(r._mapping) for r in rows]


async def publish(p: ReconPipeline, topic: Any, envelope: Any) -> None:
    from aiokafka import AIOKafkaProducer

    from shared.envelope import encode

    producer = AIOKafkaProducer(bootstrap_servers=p.infra.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic.qualified(p.issuer.settings.topic_prefix),  # type: ignore[attr-defined]
                                     encode(envelope), key=envelope.subject.encode())
    finally:
        await producer.stop()


async def test_a_confirmed_form_whose_red_invoice_never_reaches_the_ledger_is_a_gap_with_a_case_and_one_alert(
        rl: ReconPipeline) -> None:
    """The authority confirms a form and issues its red invoice, but the confirmed update never reaches the issuer
    (this test publishes the sync service's update for a form the issuer does not know: it skips it, as it would
    an update it lost): past FAPIAO_RED_INVOICE_GRACE the reconciler finds no red invoice in its ledger. A gap,
    red_unrecorded while the store holds the red invoice, red_missing once the store loses it too; one case, one
    alert. When the red invoice's issued event arrives at last, the case is resolved. A form whose red invoice
    the issuer records in time (the ordinary path) is met, with no case and no alert."""
    from shared.content import content_hash
    from shared.envelope import new_envelope
    from shared.events import ISSUER_SOURCE, SYNC_SOURCE, InvoiceIssued, RedLetterFormUpdated
    from shared.topics import INVOICE_EVENTS, SYNC_RESULTS

    p = rl
    p.start_own("reconciler", FAPIAO_RED_INVOICE_GRACE="1.5", FAPIAO_STUCK_RECHECK="1")
    seller = await new_tenant(p)
    ordinary, lost = await confirmed_invoices(p, seller, [None, None])

    # The ordinary path: the form's red invoice is in the ledger in time; nothing to tell anyone.
    asked = await ask(p, seller, ordinary["id"], {"reason_code": "01"})
    done = await until_form(p, seller, asked["id"], "confirmed")
    await red_invoice_of(p, seller, done)
    async def met() -> list[dict[str, Any]] | None:
        rows = await recon_forms(p, ordinary["id"])
        return rows if rows and rows[0]["state"] == "met" else None
    [row] = await eventually(met, timeout=20, interval=0.25)
    assert (row["red_number"], row["case_no"]) == (done["red_invoice_number"], None)

    # A form the authority confirmed (no confirmation needed) whose update the issuer never took in.
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(f"{p.taxstore.url}/v1/red-letter-forms", json={
            "request_id": f"lost-{uuid.uuid4()}", "invoice": {"seller_tax_id": seller.tax_id, "number": lost["number"]},
            "requested_by": seller.tax_id, "reason_code": "02"})
    assert r.status_code in (200, 201), r.text
    store_form = r.json()
    assert store_form["status"] == "confirmed" and store_form["red_invoice"], store_form
    red_number = store_form["red_invoice"]["number"]
    form_id = uuid.uuid4()
    update = RedLetterFormUpdated(form_id=form_id, invoice_id=uuid.UUID(lost["id"]), tenant_id=uuid.UUID(seller.id),
                                  status="confirmed", form_no=store_form["form_no"], form=store_form)
    await publish(p, SYNC_RESULTS, new_envelope(source=SYNC_SOURCE, event=update, subject=lost["id"],
                                                tenant=seller.id, sequence=1))

    async def gap(kind: str) -> dict[str, Any] | None:
        async with httpx.AsyncClient(timeout=10) as c:
            items = (await c.get(f"{p.reconciler.url}/admin/gaps", headers=p.admin)).json()["red_letter_forms"]
        mine = [x for x in items if x["form_id"] == str(form_id)]
        return mine[0] if mine and mine[0]["gap_kind"] == kind else None
    found = await eventually(lambda: gap("red_unrecorded"), timeout=30, interval=0.25)
    assert (found["red_number"], found["blue_number"], found["invoice_id"]) == (red_number, lost["number"],
                                                                                lost["id"])
    case_no = found["case_no"]
    assert case_no
    async with httpx.AsyncClient(timeout=10) as c:
        case = (await c.get(f"{p.reconciler.url}/admin/cases/{case_no}", headers=p.admin)).json()
    assert (case["status"], case["invoice_id"], case["opened_by"]) == ("open", lost["id"], "system")
    gap_notes = [h["message"] for h in case["history"] if h["kind"] == "gap"]
    assert gap_notes and "never recorded the red invoice" in gap_notes[0] and red_number in gap_notes[0]

    async def alerts() -> list[dict[str, Any]] | None:
        from sqlalchemy import text

        async with p.issuer.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
            rows = (await conn.execute(text("select kind, data from notifier.alerts where invoice_id = :i "
                                            "order by received_at"), {"i": lost["id"]})).all()
        return [{"kind": k, **d} for k, d in rows] or None
    [alert] = await eventually(alerts, timeout=20, interval=0.5)
    assert (alert["kind"], alert["case_no"], alert["form_id"], alert["role"]) == ("red_missing", case_no,
                                                                                   str(form_id), "seller")
    assert "never recorded" in alert["reason"] and "dead letters" in alert["next_action"]

    # The store loses the red invoice too: the gap's kind follows; the case and its one alert stay.
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(f"{p.taxstore.url}/admin/lose", headers=p.admin,
                         json={"invoices": [{"seller_tax_id": seller.tax_id, "number": red_number}]})
    assert r.status_code == 200 and len(r.json()["lost"]) == 1, r.text
    found = await eventually(lambda: gap("red_missing"), timeout=20, interval=0.25)
    assert found["case_no"] == case_no
    await asyncio.sleep(2.5)  # more rechecks: nothing more is alerted
    assert [a["kind"] for a in await alerts() or []] == ["red_missing"]

    # The red invoice's issued event arrives at last (as the issuer sends it once the update is replayed): met,
    # the case resolved and the seller told once; the red invoice is then the ledger's, submitted again and seen.
    doc = store_form["red_invoice"]["content"]
    red_id = uuid.uuid4()
    issued = InvoiceIssued(invoice_id=red_id, tenant_id=uuid.UUID(seller.id), seller_tax_id=seller.tax_id,
                           number=red_number, content_hash=content_hash(doc), accepted_at=datetime.now(UTC),
                           invoice=doc, red_letter_of=lost["number"])
    await publish(p, INVOICE_EVENTS, new_envelope(source=ISSUER_SOURCE, event=issued, subject=str(red_id),
                                                  tenant=seller.id, sequence=1))

    async def resolved() -> list[dict[str, Any]] | None:
        rows = await recon_forms(p, lost["id"])
        return rows if rows and rows[0]["state"] == "met" else None
    await eventually(resolved, timeout=30, interval=0.25)
    async with httpx.AsyncClient(timeout=10) as c:
        case = (await c.get(f"{p.reconciler.url}/admin/cases/{case_no}", headers=p.admin)).json()
    assert case["status"] == "resolved" and red_number in case["resolution"], case
    async def told() -> list[str] | None:
        kinds = [a["kind"] for a in await alerts() or []]
        return kinds if "resolved" in kinds else None
    assert await eventually(told, timeout=20, interval=0.5) == ["red_missing", "resolved"]
    assert red_number in await p.stored(seller.tax_id)  # resubmitted by the sync service, held again


async def test_the_buyers_form_alerts_link_the_form_it_can_open_not_the_sellers_invoice(
        rl: ReconPipeline, receiver: Receiver) -> None:
    """A form waits for a buyer tenant: its webhook and its e-mail link the form (GET /v1/red-letter-forms/{id},
    which the buyer opens), never the seller's invoice (a 404 for the buyer); the seller's alert links both. All
    under a flaky store (errors and ambiguous timeouts while the form is made and watched): one form, it waits,
    then lapses, and each of its alerts is sent once."""
    p = rl
    seller, buyer = await new_tenant(p), await buyer_tenant(p)
    path = f"/hooks/{uuid.uuid4().hex}"
    r = await p.issuer.client.post("/v1/subscriptions", headers=buyer.headers,
                                   json={"channel": "webhook", "url": receiver.url(path)})
    assert r.status_code == 201, r.text
    address = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    r = await p.issuer.client.post("/v1/subscriptions", headers=buyer.headers,
                                   json={"channel": "email", "emails": [address]})
    assert r.status_code == 201, r.text
    [inv] = await confirmed_invoices(p, seller, [buyer.tax_id])
    await policy(p, used_rate=1.0, confirm_window_s=4)
    before = await p.stats()
    await p.faults(error_rate=0.3, timeout_rate=0.3, timeout_hang_ms=300, seed=11)
    asked = await ask(p, seller, inv["id"], {"reason_code": "01"})
    await until_form(p, seller, asked["id"], "voided", timeout=60)  # waited for the buyer, then lapsed
    after = await p.stats()
    await p.clear_faults()
    assert after["errors"] + after["timeouts"] > before["errors"] + before["timeouts"], after
    async with httpx.AsyncClient(timeout=10) as c:
        at_store = (await c.get(f"{p.taxstore.url}/v1/red-letter-forms", params={
            "party_tax_id": seller.tax_id, "invoice_number": inv["number"]})).json()["items"]
    assert [f["status"] for f in at_store] == ["voided"]  # retried, never made twice

    async def hooks() -> list[dict[str, Any]] | None:
        """The alerts delivered to the buyer's hook, each delivery once (a retry carries the same webhook-id)."""
        items = []
        for req in {r.headers["webhook-id"]: r for r in receiver.at(path)}.values():
            body = json.loads(req.body)
            items += body["data"]["alerts"] if body["type"] == "invoice.alerts.digest" else [body["data"]]
        return items if {"form_awaiting", "form_expiring"} <= {a["kind"] for a in items} else None
    received = await eventually(hooks, timeout=90, interval=0.5)  # the notifier's digest window may hold them
    form_path = f"/v1/red-letter-forms/{asked['id']}"
    for a in received:
        assert (a["form_id"], a["role"]) == (asked["id"], "buyer"), a
        assert list(a["links"]) == ["form"] and a["links"]["form"].endswith(form_path), a["links"]
    assert (await p.issuer.client.get(form_path, headers=buyer.headers)).status_code == 200
    problem(await p.issuer.client.get(f"/v1/invoices/{inv['id']}", headers=buyer.headers), 404, "not_found")
    mails = await eventually(lambda: p.mails(to=address) or None, timeout=90, interval=0.5)
    text = mails[0].get_body(("plain",)).get_content()
    assert form_path in text and "/v1/invoices/" not in text and "fapiao invoice show" not in text, text

    # The seller's own alert about the same form (void: nothing reversed) links the form and its invoice.
    from sqlalchemy import text as sql

    async with p.issuer.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        async def voided() -> dict[str, Any] | None:
            row = (await conn.execute(sql("select data from notifier.alerts where invoice_id = :i and "
                                          "kind = 'form_voided'"), {"i": inv["id"]})).first()
            return row[0] if row else None
        data = await eventually(voided, timeout=20, interval=0.5)
    assert (data["form_id"], data["role"]) == (asked["id"], "seller")
    from services.notifier.messages import webhook_payload

    links = webhook_payload(kind="single", alerts=[data], created_at="t", issuer_url="")["data"]["links"]
    assert links == {"form": form_path, "invoice": f"/v1/invoices/{inv['id']}"}
    await asyncio.sleep(2)  # later form rounds and expiry sweeps raise nothing more: each alert once
    assert await alerts_of(p, inv["id"]) == ["form_awaiting", "form_expiring", "form_voided"]
    kinds = Counter(a["kind"] for a in await hooks() or [])
    assert kinds == {"form_awaiting": 1, "form_expiring": 1}, kinds  # the buyer's, once each
