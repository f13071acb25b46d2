"""The ERP-facing invoice API against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from sqlalchemy import func, select

from services.issuer import models as m
from services.issuer import service
from services.issuer.schemas import InvoiceCreate
from shared.db import transaction
from tests import factories
from tests.conftest import eventually, read_topic


async def _status(issuer, tenant, iid: str) -> str:
    r = await issuer.client.get(f"/v1/invoices/{iid}", headers=tenant.headers)
    return r.json()["status"]


async def test_valid_invoice_is_accepted_published_once_as_a_cloudevent(issuer, tenant):
    doc = factories.invoice(tenant.tax_id)
    r = await issuer.client.post("/v1/invoices", json=doc, headers=tenant.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    iid = body["id"]
    assert body["status"] == "accepted" and body["number"] == doc["number"] and body["total"] == doc["total"]

    records = await read_topic(issuer.settings.kafka_bootstrap, issuer.topic,
                               until=lambda rs: any(x.key == iid.encode() for x in rs))
    mine = [x for x in records if x.key == iid.encode()]
    assert len(mine) == 1, "exactly one event per accepted invoice"
    event = json.loads(mine[0].value)
    assert event["specversion"] == "1.0"
    assert event["type"] == "cn.fapiao.invoice.issued.v1"
    assert event["subject"] == iid and event["tenant"] == tenant.id and event["sequence"] == 1
    assert event["source"] == "fapiao/issuer" and event["datacontenttype"] == "application/json"
    assert event["id"] and event["time"]
    assert event["data"]["invoice"]["number"] == doc["number"]
    assert event["data"]["content_hash"]

    await eventually(lambda: _is(issuer, tenant, iid, "published"))
    detail = (await issuer.client.get(f"/v1/invoices/{iid}", headers=tenant.headers)).json()
    kinds = [t["kind"] for t in detail["timeline"]]
    assert kinds == ["accepted", "published"]
    assert detail["timeline"][1]["detail"]["offset"] == mine[0].offset
    assert detail["reason"] and detail["next_action"]


async def _is(issuer, tenant, iid, status) -> bool:
    return await _status(issuer, tenant, iid) == status


async def test_ledger_row_and_outbox_row_commit_or_roll_back_together(issuer, tenant):
    tenant_obj = service.Tenant(uuid.UUID(tenant.id), "t", tenant.tax_id)
    doc = factories.invoice(tenant.tax_id)
    inv = InvoiceCreate.model_validate(doc)
    sessions = issuer.app.state.sessions

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with transaction(sessions) as session:
            [res] = await service.create_invoices(session=session, tenant=tenant_obj, items=[inv], source="api",
                                                  topic=issuer.topic)
            assert res.status == 201
            raise Boom  # the request fails after the insert: nothing may remain
    async with transaction(sessions) as session:
        n_inv = (await session.execute(select(func.count()).select_from(m.invoices)
                                       .where(m.invoices.c.number == doc["number"]))).scalar_one()
        n_out = (await session.execute(select(func.count()).select_from(m.outbox)
                                       .where(m.outbox.c.payload.contains(doc["number"].encode())))).scalar_one()
    assert (n_inv, n_out) == (0, 0)

    r = await issuer.client.post("/v1/invoices", json=doc, headers=tenant.headers)
    assert r.status_code == 201
    async with transaction(sessions) as session:
        row = (await session.execute(select(m.invoices).where(m.invoices.c.number == doc["number"]))).one()
        outbox = (await session.execute(select(m.outbox).where(m.outbox.c.key == str(row.id)))).all()
        accepted = (await session.execute(select(m.timeline).where(m.timeline.c.invoice_id == row.id,
                                                                   m.timeline.c.kind == "accepted"))).one()
    assert len(outbox) == 1
    assert outbox[0].event_id == accepted.detail["event_id"], "the event announces exactly this ledger row"


async def test_validation_errors_name_the_field_and_store_nothing(issuer, tenant):
    cases = {
        "lines[0].tax_amount": lambda d: d["lines"][0].update(tax_amount="99.00"),
        "total": lambda d: d.update(total="1.00"),
        "seller.tax_id": lambda d: d["seller"].update(tax_id="914403001922038217"),  # wrong check character
        "number": lambda d: d.update(number="25" + d["number"][2:]),
        "lines[0].tax_rate": lambda d: d["lines"][0].update(tax_rate="0.17"),
        "buyer.tax_id": lambda d: d["buyer"].update(tax_id=None),
        "lines[0].amount": lambda d: d["lines"][0].update(amount=226),
        "lines": lambda d: d.update(lines=[]),
    }
    for path, breaker in cases.items():
        doc = factories.invoice(tenant.tax_id)
        breaker(doc)
        r = await issuer.client.post("/v1/invoices", json=doc, headers=tenant.headers)
        assert r.status_code == 422, (path, r.text)
        problem = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        assert path in [e["path"] for e in problem["errors"]], (path, problem)
        listed = await issuer.client.get("/v1/invoices", params={"number": doc["number"]}, headers=tenant.headers)
        assert listed.json()["items"] == [], f"nothing stored for a rejected invoice ({path})"


async def test_real_world_usccs_are_accepted_as_buyers(issuer, tenant):
    for buyer in ("914403001922038216", "91330100716105852F", "91520000214434146R", "91110108558521630L"):
        doc = factories.invoice(tenant.tax_id, buyer={"tax_id": buyer, "name": "buyer"})
        r = await issuer.client.post("/v1/invoices", json=doc, headers=tenant.headers)
        assert r.status_code == 201, r.text


async def test_same_number_same_content_is_the_same_invoice_other_content_is_409(issuer, tenant):
    doc = factories.invoice(tenant.tax_id)
    first = await issuer.client.post("/v1/invoices", json=doc, headers=tenant.headers)
    again = await issuer.client.post("/v1/invoices", json=doc, headers=tenant.headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    changed = dict(doc, remarks="another remark")
    clash = await issuer.client.post("/v1/invoices", json=changed, headers=tenant.headers)
    assert clash.status_code == 409
    assert clash.json()["existing"]["id"] == first.json()["id"]


async def test_fifty_concurrent_requests_with_one_idempotency_key(issuer, tenant):
    doc = factories.invoice(tenant.tax_id)
    headers = {**tenant.headers, "Idempotency-Key": f"erp-{uuid.uuid4()}"}
    responses = await asyncio.gather(*[
        issuer.client.post("/v1/invoices", json=doc, headers=headers) for _ in range(50)
    ])
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1, "every caller gets the identical response"
    iid = responses[0].json()["id"]
    listed = await issuer.client.get("/v1/invoices", params={"number": doc["number"]}, headers=tenant.headers)
    assert [i["id"] for i in listed.json()["items"]] == [iid]
    records = await read_topic(issuer.settings.kafka_bootstrap, issuer.topic,
                               until=lambda rs: any(x.key == iid.encode() for x in rs))
    await asyncio.sleep(1.0)  # give a (wrong) second event time to show up
    records = await read_topic(issuer.settings.kafka_bootstrap, issuer.topic, until=lambda rs: False, timeout=2)
    assert sum(x.key == iid.encode() for x in records) == 1


async def test_idempotency_key_with_another_body_is_422_and_in_flight_is_409(issuer, tenant):
    key = f"erp-{uuid.uuid4()}"
    headers = {**tenant.headers, "Idempotency-Key": key}
    doc = factories.invoice(tenant.tax_id)
    assert (await issuer.client.post("/v1/invoices", json=doc, headers=headers)).status_code == 201
    replay = await issuer.client.post("/v1/invoices", json=doc, headers=headers)
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    other = await issuer.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id), headers=headers)
    assert other.status_code == 422
    assert other.json()["errors"][0]["path"] == "Idempotency-Key"

    # A request holding a key for longer than the wait makes a repeat answer 409, not wait forever.
    busy_key = f"erp-{uuid.uuid4()}"
    async with transaction(issuer.app.state.sessions) as session:
        await service.claim_idempotency_key(session=session, tenant_id=uuid.UUID(tenant.id), key=busy_key,
                                            endpoint="POST /v1/invoices", req_hash="x", wait_seconds=1)
        r = await issuer.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id),
                                     headers={**tenant.headers, "Idempotency-Key": busy_key})
        assert r.status_code == 409, r.text
        await session.rollback()


async def test_batch_of_1000_in_one_request_with_per_item_results(issuer, tenant):
    docs = [factories.invoice(tenant.tax_id) for _ in range(1000)]
    docs[10]["lines"][0]["tax_amount"] = "1.00"
    docs[20] = dict(docs[19])  # same number, same content: a duplicate within the batch
    docs[30] = dict(docs[29], remarks="changed")  # same number, other content
    r = await issuer.client.post("/v1/invoices/batch", json={"invoices": docs}, headers=tenant.headers)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    results = body["results"]
    assert len(results) == 1000 and [x["index"] for x in results] == list(range(1000))
    assert results[10]["status"] == 422 and results[10]["errors"][0]["path"] == "lines[0].tax_amount"
    assert results[20]["status"] == 200 and results[20]["invoice"]["id"] == results[19]["invoice"]["id"]
    assert results[30]["status"] == 409
    assert body["created"] == 997 and body["invalid"] == 1 and body["conflicts"] == 1 and body["existing"] == 1

    too_many = [factories.invoice(tenant.tax_id) for _ in range(1001)]
    r = await issuer.client.post("/v1/invoices/batch", json={"invoices": too_many}, headers=tenant.headers)
    assert r.status_code == 413


async def test_list_filters_and_cursor_paging(issuer):
    tenant = await issuer.new_tenant()
    docs = [factories.invoice(tenant.tax_id, lines=[factories.line(quantity=str(q))]) for q in range(1, 8)]
    docs[0]["buyer"] = {"tax_id": "91520000214434146R", "name": "茅台"}
    for d in docs:
        assert (await issuer.client.post("/v1/invoices", json=d, headers=tenant.headers)).status_code == 201
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await issuer.client.get("/v1/invoices", params=params, headers=tenant.headers)).json()
        seen += [i["number"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [d["number"] for d in reversed(docs)], "newest first, every invoice exactly once"

    async def q(**params):  # type: ignore[no-untyped-def]
        r = await issuer.client.get("/v1/invoices", params=params, headers=tenant.headers)
        assert r.status_code == 200, r.text
        return {i["number"] for i in r.json()["items"]}

    assert await q(buyer_tax_id="91520000214434146R") == {docs[0]["number"]}
    assert await q(number=docs[3]["number"]) == {docs[3]["number"]}
    assert await q(min_total="452.00", max_total="678") == {docs[3]["number"], docs[4]["number"], docs[5]["number"]}
    today = factories.today().isoformat()
    assert len(await q(issued_from=today, issued_to=today)) == 7
    assert await q(issued_to="2000-01-01") == set()
    bad = await issuer.client.get("/v1/invoices", params={"status": "lost"}, headers=tenant.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "status"
    bad = await issuer.client.get("/v1/invoices", params={"cursor": "garbage!"}, headers=tenant.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "cursor"


async def test_tenant_isolation(issuer):
    a, b = await issuer.new_tenant("A"), await issuer.new_tenant("B")
    doc = factories.invoice(a.tax_id)
    iid = (await issuer.client.post("/v1/invoices", json=doc, headers=a.headers)).json()["id"]
    assert (await issuer.client.get(f"/v1/invoices/{iid}", headers=b.headers)).status_code == 404
    void = await issuer.client.post(f"/v1/invoices/{iid}/void", json={"reason": "x"}, headers=b.headers)
    assert void.status_code == 404
    listed = await issuer.client.get("/v1/invoices", params={"number": doc["number"]}, headers=b.headers)
    assert listed.json()["items"] == []
    # B cannot issue or import as A: the seller must be the key's own enterprise.
    r = await issuer.client.post("/v1/invoices", json=factories.invoice(a.tax_id), headers=b.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "seller.tax_id"
    csv_text = _csv([doc | {"number": factories.number()}])
    r = await issuer.client.post("/v1/invoices/import", content=csv_text, headers={**b.headers,
                                                                                   "Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json()["created"] == 1
    created_id = r.json()["results"][0]["id"]
    assert (await issuer.client.get(f"/v1/invoices/{created_id}", headers=a.headers)).status_code == 404
    got = (await issuer.client.get(f"/v1/invoices/{created_id}", headers=b.headers)).json()
    assert got["seller_tax_id"] == b.tax_id, "an import always issues as the key's own enterprise"
    # No key, or a wrong key: 401.
    assert (await issuer.client.get(f"/v1/invoices/{iid}")).status_code == 401
    bad_key = {"Authorization": "Bearer fsk_" + "x" * 43}
    assert (await issuer.client.get(f"/v1/invoices/{iid}", headers=bad_key)).status_code == 401


async def test_void_only_what_the_authority_has_not_accepted(issuer, tenant):
    iid = (await issuer.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id),
                                    headers=tenant.headers)).json()["id"]
    r = await issuer.client.post(f"/v1/invoices/{iid}/void", json={"reason": "wrong buyer"}, headers=tenant.headers)
    assert r.status_code == 409 and "rejected or stuck" in r.json()["detail"]
    # Put it where the authority refused it (the sync service does this for real in a later issue).
    async with transaction(issuer.app.state.sessions) as session:
        await session.execute(m.invoices.update().where(m.invoices.c.id == uuid.UUID(iid)).values(status="rejected"))
    r = await issuer.client.post(f"/v1/invoices/{iid}/void", json={"reason": "wrong buyer"}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "voided"
    records = await read_topic(issuer.settings.kafka_bootstrap, issuer.topic,
                               until=lambda rs: any(json.loads(x.value)["type"].endswith("voided.v1")
                                                    and x.key == iid.encode() for x in rs))
    events = [json.loads(x.value) for x in records if x.key == iid.encode()]
    assert [e["type"] for e in events] == ["cn.fapiao.invoice.issued.v1", "cn.fapiao.invoice.voided.v1"]
    assert [e["sequence"] for e in events] == [1, 2]


def _csv(docs: list[dict]) -> str:
    from services.issuer.csv_import import COLUMNS

    rows = [",".join(COLUMNS)]
    for d in docs:
        for ln in d["lines"]:
            cells = [d["number"], d["kind"], d["issue_date"], d["buyer"]["tax_id"] or "", d["buyer"]["name"],
                     ln["description"], ln["tax_code"], ln["quantity"], ln["unit_price"], ln["amount"],
                     ln["tax_rate"], ln["tax_amount"], d.get("remarks") or ""]
            rows.append(",".join(cells))
    return "\n".join(rows) + "\n"


async def test_csv_import_reports_rows_and_keeps_good_invoices(issuer, tenant):
    good = [factories.invoice(tenant.tax_id, lines=[factories.line(), factories.line(quantity="3")])
            for _ in range(3)]
    bad = factories.invoice(tenant.tax_id, lines=[factories.line(), factories.line(amount="1.00")])
    text = _csv([good[0], bad, good[1], good[2]])
    r = await issuer.client.post("/v1/invoices/import", content=text.encode(),
                                 headers={**tenant.headers, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["invoices"] == 4 and body["created"] == 3 and body["rejected"] == 1
    # bad invoice occupies file rows 4-5 (header is row 1); its second line has the wrong amount
    assert {"row": 5, "column": "line_amount", "number": bad["number"]}.items() <= body["errors"][0].items()
    for g in good:
        listed = await issuer.client.get("/v1/invoices", params={"number": g["number"]}, headers=tenant.headers)
        assert len(listed.json()["items"]) == 1
    listed = await issuer.client.get("/v1/invoices", params={"number": bad["number"]}, headers=tenant.headers)
    assert listed.json()["items"] == []
    r = await issuer.client.post("/v1/invoices/import", content=b"number,kind\n1,2\n",
                                 headers={**tenant.headers, "Content-Type": "text/csv"})
    assert r.status_code == 422 and "lacks column" in r.json()["errors"][0]["reason"]
