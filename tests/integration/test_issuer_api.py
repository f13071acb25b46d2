"""The ERP-facing invoice API against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select

from fapiao.infra import free_port
from services.issuer import idempotency
from services.issuer import models as m
from services.issuer.invoices.issuing import create_invoices
from services.issuer.invoices.outcomes import Created
from services.issuer.schemas import InvoiceCreate
from services.issuer.tenants import Tenant
from shared.db import transaction
from tests import factories
from tests.harness import ADMIN_TOKEN, RunningIssuer, eventually, issuer_settings, read_topic, running_issuer


@pytest.fixture(scope="module")
async def issuer(infra) -> AsyncIterator[RunningIssuer]:  # type: ignore[no-untyped-def]
    """This module's own issuer on its own topics: the session's issuer shares its topics with the sync pipeline
    other modules start, and a running sync would move invoices on that these tests expect to stay `published`."""
    async with running_issuer(issuer_settings(infra)) as own:
        yield own


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
    tenant_obj = Tenant(uuid.UUID(tenant.id), "t", tenant.tax_id)
    doc = factories.invoice(tenant.tax_id)
    inv = InvoiceCreate.model_validate(doc)
    sessions = issuer.app.state.sessions

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with transaction(sessions) as session:
            [res] = await create_invoices(session=session, tenant=tenant_obj, items=[inv], source="api",
                                          topic=issuer.topic)
            assert isinstance(res, Created)
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
        await idempotency.claim(session=session, tenant_id=uuid.UUID(tenant.id), key=busy_key,
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


# --- cases and summaries, proxied to the reconciler ----------------------------------------------

@contextlib.asynccontextmanager
async def _reconciler(issuer, transport: httpx.MockTransport | None = None):  # type: ignore[no-untyped-def]
    """Point the issuer at another reconciler for one test: a closed port (nothing listens), or a stub."""
    state = issuer.app.state
    original = state.reconciler_http
    base = "http://reconciler.test" if transport is not None else f"http://127.0.0.1:{free_port()}"
    state.reconciler_http = httpx.AsyncClient(base_url=base, transport=transport, headers=original.headers,
                                              timeout=original.timeout)
    try:
        yield
    finally:
        await state.reconciler_http.aclose()
        state.reconciler_http = original


class StubReconciler:
    """The reconciler's admin case API as its contract describes it. Only for the issuer's side of the
    contract (shaping, isolation, bookkeeping); the real reconciler is exercised end to end elsewhere."""

    def __init__(self) -> None:
        self.cases: dict[str, dict] = {}
        self.requests: list[httpx.Request] = []
        self.fail: int | str | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail == "timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        if isinstance(self.fail, int):
            return httpx.Response(self.fail, json={"status": self.fail, "detail": "the invoice was voided at the "
                                                   "reconciler", "code": "conflict"})
        path, params = request.url.path, request.url.params
        if request.method == "POST" and path == "/admin/cases":
            body = json.loads(request.content)
            for case in self.cases.values():
                if case["invoice_id"] == body["invoice_id"] and case["status"] == "open":
                    return httpx.Response(200, json=case)
            case_no = f"CASE-20261125-{len(self.cases) + 1:06d}"
            self.cases[case_no] = {
                "case_no": case_no, "status": "open", "opened_by": "tenant", "opened_at": "2026-11-25T10:00:00Z",
                "resolved_at": None, "resolution": None, "note": body["note"], "invoice_id": body["invoice_id"],
                "tenant_id": body["tenant_id"], "seller_tax_id": body["seller_tax_id"], "number": body["number"],
                "invoice_state": "checking", "gap_kind": None, "receipt_no": None, "resyncs": 0,
                "next_check_at": "2026-11-25T10:00:01Z",
                "history": [{"at": "2026-11-25T10:00:00Z", "kind": "opened", "message": "opened", "detail": None}]}
            return httpx.Response(201, json=self.cases[case_no])
        if request.method == "GET" and path.startswith("/admin/cases/"):
            case = self.cases.get(path.rsplit("/", 1)[1])
            return httpx.Response(200, json=case) if case else httpx.Response(404, json={"detail": "no such case"})
        if request.method == "GET" and path == "/admin/cases":
            items = [{k: v for k, v in c.items() if k != "history"} for c in self.cases.values()
                     if c["tenant_id"] == params["tenant_id"] and params.get("status") in (None, c["status"])]
            return httpx.Response(200, json={"items": items[: int(params["limit"])]})
        if request.method == "GET" and path == "/admin/summary":
            return httpx.Response(200, json={"seller_tax_id": params["seller_tax_id"], "month": params["month"],
                                             "issued": 3, "confirmed": 2, "stuck": 1})
        return httpx.Response(404, json={"detail": "no route"})


async def _new_invoice(issuer, tenant) -> str:  # type: ignore[no-untyped-def]
    r = await issuer.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id), headers=tenant.headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_case_and_summary_requests_are_checked_before_the_reconciler_is_asked(issuer):
    # Nothing listens where the issuer now looks for the reconciler: any call to it would answer 503.
    a, b = await issuer.new_tenant("A"), await issuer.new_tenant("B")
    iid = await _new_invoice(issuer, a)
    async with _reconciler(issuer):
        theirs = await issuer.client.post(f"/v1/invoices/{iid}/cases", headers=b.headers)
        unknown_id = str(uuid.uuid4())
        unknown = await issuer.client.post(f"/v1/invoices/{unknown_id}/cases", headers=b.headers)
        assert (theirs.status_code, unknown.status_code) == (404, 404), (theirs.text, unknown.text)
        assert theirs.json()["detail"] == f"no invoice {iid}" and unknown.json()["detail"] == f"no invoice {unknown_id}"
        assert (await issuer.client.post("/v1/invoices/not-a-uuid/cases", headers=a.headers)).status_code == 404

        for case_no in ("not-a-case", "CASE-20261125-00001", "case-20261125-000001", "CASE-20261125-000001x"):
            r = await issuer.client.get(f"/v1/cases/{case_no}", headers=a.headers)
            assert r.status_code == 404 and r.json()["code"] == "not_found", (case_no, r.text)
        for month in ("2026-13", "2026-00", "2026-1", "26-11", "november", "\uff12\uff10\uff12\uff16-11"):
            r = await issuer.client.get(f"/v1/summaries/{month}", headers=a.headers)
            assert r.status_code == 422, (month, r.text)
            assert r.json()["errors"][0]["path"] == "month"

        for body, path in (({"note": "a\x00b"}, "note"), ({"note": "x" * 501}, "note"), ({"nope": 1}, "nope")):
            r = await issuer.client.post(f"/v1/invoices/{iid}/cases", json=body, headers=a.headers)
            assert r.status_code == 422 and r.json()["errors"][0]["path"] == path, r.text

        async with transaction(issuer.app.state.sessions) as session:
            await session.execute(m.invoices.update().where(m.invoices.c.id == uuid.UUID(iid))
                                  .values(status="rejected"))
        assert (await issuer.client.post(f"/v1/invoices/{iid}/void", json={"reason": "typo"},
                                         headers=a.headers)).status_code == 200
        r = await issuer.client.post(f"/v1/invoices/{iid}/cases", headers=a.headers)
        assert r.status_code == 409 and "voided" in r.json()["detail"], r.text
        assert (await issuer.client.get("/v1/cases", params={"status": "lost"}, headers=a.headers)).status_code == 422


async def test_an_unreachable_reconciler_is_503_with_retry_after(issuer, tenant):
    iid = await _new_invoice(issuer, tenant)
    async with _reconciler(issuer):
        calls = [("POST", f"/v1/invoices/{iid}/cases", {"note": "buyer cannot find it"}),
                 ("GET", "/v1/cases/CASE-20261125-000001", None), ("GET", "/v1/cases", None),
                 ("GET", "/v1/summaries/2026-11", None)]
        for method, url, body in calls:
            r = await issuer.client.request(method, url, json=body, headers=tenant.headers)
            assert r.status_code == 503, (url, r.text)
            assert r.headers["retry-after"] == "5"
            assert r.headers["content-type"].startswith("application/problem+json")
            problem = r.json()
            assert problem["code"] == "dependency_unavailable"
            assert problem["detail"] == "the reconciler is not reachable right now; retry shortly"
            assert ADMIN_TOKEN not in r.text and "Bearer" not in r.text
    stub = StubReconciler()
    async with _reconciler(issuer, httpx.MockTransport(stub)):
        for failure in (500, 502, "timeout"):
            stub.fail = failure
            r = await issuer.client.post(f"/v1/invoices/{iid}/cases", headers=tenant.headers)
            assert r.status_code == 503 and r.headers["retry-after"] == "5", (failure, r.text)
    detail = (await issuer.client.get(f"/v1/invoices/{iid}", headers=tenant.headers)).json()
    assert detail["case_no"] is None and "case_opened" not in [t["kind"] for t in detail["timeline"]]


async def test_cases_and_summaries_through_the_issuer(issuer):
    a, b = await issuer.new_tenant("A"), await issuer.new_tenant("B")
    iid = await _new_invoice(issuer, a)
    number = (await issuer.client.get(f"/v1/invoices/{iid}", headers=a.headers)).json()["number"]
    stub = StubReconciler()
    async with _reconciler(issuer, httpx.MockTransport(stub)):
        r = await issuer.client.post(f"/v1/invoices/{iid}/cases", json={"note": "买方查不到 buyer cannot find it"},
                                     headers=a.headers)
        assert r.status_code == 201, r.text
        case = r.json()
        case_no = case["case_no"]
        assert case["status"] == "open" and case["history"] and "tenant_id" not in case
        assert case["invoice"]["id"] == iid and case["invoice"]["case_no"] == case_no
        sent = stub.requests[-1]
        assert sent.headers["authorization"] == f"Bearer {ADMIN_TOKEN}"
        assert json.loads(sent.content) == {"invoice_id": iid, "tenant_id": a.id, "seller_tax_id": a.tax_id,
                                            "number": number, "note": "买方查不到 buyer cannot find it"}

        again = await issuer.client.post(f"/v1/invoices/{iid}/cases", headers=a.headers)  # no body at all
        assert again.status_code == 200 and again.json()["case_no"] == case_no, again.text
        detail = (await issuer.client.get(f"/v1/invoices/{iid}", headers=a.headers)).json()
        opened = [t for t in detail["timeline"] if t["kind"] == "case_opened"]
        assert len(opened) == 1 and detail["case_no"] == case_no
        assert opened[0]["message"] == f"Case {case_no} opened at the seller's request; the authority is being " \
                                       "checked now"

        got = await issuer.client.get(f"/v1/cases/{case_no}", headers=a.headers)
        assert got.status_code == 200 and got.json()["invoice"]["status"] == detail["status"], got.text
        assert "tenant_id" not in got.json()
        foreign = await issuer.client.get(f"/v1/cases/{case_no}", headers=b.headers)
        missing = await issuer.client.get("/v1/cases/CASE-20991231-999999", headers=b.headers)
        assert (foreign.status_code, missing.status_code) == (404, 404)
        assert foreign.json()["detail"] == f"no case {case_no}", "another tenant's case looks like none at all"

        mine = (await issuer.client.get("/v1/cases", params={"status": "open"}, headers=a.headers)).json()
        assert [c["case_no"] for c in mine["items"]] == [case_no] and "tenant_id" not in mine["items"][0]
        assert (await issuer.client.get("/v1/cases", headers=b.headers)).json() == {"items": []}

        r = await issuer.client.get("/v1/summaries/2026-11", headers=a.headers)
        assert r.status_code == 200 and r.json() == {"seller_tax_id": a.tax_id, "month": "2026-11", "issued": 3,
                                                     "confirmed": 2, "stuck": 1}

        other = await _new_invoice(issuer, a)
        stub.fail = 409
        r = await issuer.client.post(f"/v1/invoices/{other}/cases", headers=a.headers)
        assert r.status_code == 409 and r.json()["detail"] == "the invoice was voided at the reconciler"


async def test_a_reconciler_answer_that_is_not_the_case_contract_is_503_and_nothing_is_recorded(issuer, tenant):
    iid = await _new_invoice(issuer, tenant)
    stub = StubReconciler()
    async with _reconciler(issuer, httpx.MockTransport(stub)):
        assert (await issuer.client.post(f"/v1/invoices/{iid}/cases", headers=tenant.headers)).status_code == 201
        [case_no] = stub.cases
        good = stub.cases[case_no]
        for field, value in (("case_no", f"{case_no}\n"), ("resyncs", "many"), ("opened_by", None)):
            stub.cases[case_no] = {**good, field: value}
            for method, url in (("POST", f"/v1/invoices/{iid}/cases"), ("GET", f"/v1/cases/{case_no}"),
                                ("GET", "/v1/cases")):
                r = await issuer.client.request(method, url, headers=tenant.headers)
                assert r.status_code == 503 and r.headers["retry-after"] == "5", (field, url, r.text)
                assert r.json()["detail"] == "the reconciler cannot answer this right now; retry shortly"
        stub.cases[case_no] = good
        assert (await issuer.client.get(f"/v1/cases/{case_no}", headers=tenant.headers)).status_code == 200
    timeline = (await issuer.client.get(f"/v1/invoices/{iid}", headers=tenant.headers)).json()["timeline"]
    assert [t["kind"] for t in timeline].count("case_opened") == 1


async def test_subscription_and_history_requests_are_checked_here_and_an_unreachable_notifier_is_503(issuer):
    a, b = await issuer.new_tenant("A"), await issuer.new_tenant("B")
    iid = await _new_invoice(issuer, a)
    # Nothing listens at the issuer's notifier URL in this suite. What the issuer can check, it checks first.
    for body, path in (({"channel": "sms", "url": "https://x.example.com/h"}, "channel"),
                       ({"channel": "webhook", "url": "https://x.example.com/h", "kinds": ["all"]}, "kinds[0]"),
                       ({"channel": "email", "emails": ["a@example.com\r\nBcc: b@example.com"]}, "emails[0]"),
                       ({"channel": "webhook", "url": "https://x.example.com/h", "secret": "mine"}, "secret")):
        r = await issuer.client.post("/v1/subscriptions", json=body, headers=a.headers)
        assert r.status_code == 422 and r.json()["errors"][0]["path"] == path, (body, r.text)
    for method, url in (("GET", f"/v1/invoices/{iid}/notifications"), ("PUT", f"/v1/invoices/{iid}/mute"),
                        ("DELETE", f"/v1/invoices/{iid}/mute")):
        r = await issuer.client.request(method, url, headers=b.headers)  # B does not own it: 404 before asking
        assert r.status_code == 404 and r.json()["detail"] == f"no invoice {iid}", (method, url, r.text)
    assert (await issuer.client.get("/v1/subscriptions/not-a-uuid", headers=a.headers)).status_code == 422
    assert (await issuer.client.get("/v1/notifications", params={"limit": 500}, headers=a.headers)).status_code == 422
    assert (await issuer.client.get("/v1/subscriptions")).status_code == 401

    calls = [("POST", "/v1/subscriptions", {"channel": "webhook", "url": "https://erp.example.com/hooks"}),
             ("GET", "/v1/subscriptions", None), ("GET", f"/v1/subscriptions/{uuid.uuid4()}", None),
             ("GET", "/v1/notifications", None), ("GET", f"/v1/invoices/{iid}/notifications", None),
             ("PUT", f"/v1/invoices/{iid}/mute", None), ("GET", "/v1/mutes", None)]
    for method, url, body in calls:
        r = await issuer.client.request(method, url, json=body, headers=a.headers)
        assert r.status_code == 503 and r.headers["retry-after"] == "5", (url, r.text)
        assert r.json()["detail"] == "the notifier is not reachable right now; retry shortly"
        assert ADMIN_TOKEN not in r.text and "Bearer" not in r.text


async def test_every_commit_with_new_events_wakes_the_relay_and_writes_each_entry_once(issuer, tenant):
    """A single POST and batches small and large: PostgreSQL notifies the relay's channel once per commit that
    queued events (without it the relay would wait for its next poll), and each invoice has one `accepted` entry
    (with its detail) and one event."""
    import asyncpg

    url = issuer.settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    listener = await asyncpg.connect(url, timeout=10)
    woken: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("fapiao_outbox_issuer", lambda *args: woken.put_nowait(args[2]))
    sessions = issuer.app.state.sessions
    try:
        for n in (1, 2, 25):
            docs = [factories.invoice(tenant.tax_id) for _ in range(n)]
            if n == 1:
                r = await issuer.client.post("/v1/invoices", json=docs[0], headers=tenant.headers)
                assert r.status_code == 201, r.text
                ids = [r.json()["id"]]
            else:
                r = await issuer.client.post("/v1/invoices/batch", json={"invoices": docs}, headers=tenant.headers)
                assert r.status_code == 200, r.text
                ids = [x["invoice"]["id"] for x in r.json()["results"]]
                assert len(ids) == n
            await asyncio.wait_for(woken.get(), timeout=5)
            async with transaction(sessions) as session:
                details = (await session.execute(
                    select(m.timeline.c.detail).where(m.timeline.c.invoice_id.in_([uuid.UUID(i) for i in ids]),
                                                      m.timeline.c.kind == "accepted"))).scalars().all()
                entries = (await session.execute(
                    select(m.timeline.c.invoice_id, func.count()).where(
                        m.timeline.c.invoice_id.in_([uuid.UUID(i) for i in ids]), m.timeline.c.kind == "accepted")
                    .group_by(m.timeline.c.invoice_id))).all()
                events = (await session.execute(
                    select(m.outbox.c.key, func.count()).where(m.outbox.c.key.in_(ids)).group_by(m.outbox.c.key)
                )).all()
            assert {str(e[0]): e[1] for e in entries} == dict.fromkeys(ids, 1), f"{n} invoices: accepted entries"
            assert {e[0]: e[1] for e in events} == dict.fromkeys(ids, 1), f"{n} invoices: events"
            assert all(isinstance(d, dict) and d["event_id"] and d["content_hash"] for d in details), details
        await asyncio.sleep(0.3)
        assert woken.empty(), "one wake-up per commit"
    finally:
        await listener.close()
