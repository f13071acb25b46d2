"""The issuer's side of the reconciler's ledger contract (the status self-check and the live schedule): an
answer that is not the contract is "the ledger is unavailable", never a crash. The reconciler is a
MockTransport here; the real one is exercised in tests/integration/test_status_truth.py."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from services.issuer.selfcheck import LedgerClient, LedgerUnavailable


def _client(answer: object, seen: list[httpx.Request] | None = None) -> LedgerClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        body = answer(request) if callable(answer) else answer
        return httpx.Response(200, json=body)

    return LedgerClient(httpx.AsyncClient(base_url="http://reconciler.test", transport=httpx.MockTransport(handle)),
                        timeout=1.0)


def _entry(iid: uuid.UUID, **over: object) -> dict[str, object]:
    return {"invoice_id": str(iid), "state": "stuck", "recon_seq": 2, "sync_seq": 1,
            "next_check_at": "2026-12-02T10:05:00+00:00", "last_resync_at": None, "case_no": None} | over


async def test_lookup_reads_the_ledger_entries() -> None:
    iid = uuid.uuid4()
    rows = await _client({"items": [_entry(iid)]}).lookup([iid])
    assert rows[iid].state == "stuck" and rows[iid].recon_seq == 2


@pytest.mark.parametrize("answer", [
    {"items": [{"invoice_id": "x", "state": "stuck", "recon_seq": 2, "sync_seq": 1}]},
    {"items": [{"state": "stuck", "recon_seq": 2, "sync_seq": 1}]},  # a KeyError before the contract
    {"items": "none"}, {"rows": []}, [],
])
async def test_an_answer_that_is_not_the_contract_is_an_unavailable_ledger(answer: object) -> None:
    client = _client(answer)
    with pytest.raises(LedgerUnavailable):
        await client.lookup([uuid.uuid4()])
    assert await client.schedule([uuid.uuid4()]) == {}  # a read shows the stored times instead


async def test_restate_sends_at_most_the_reconcilers_batch_per_request_and_adds_the_counts() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> object:
        return {"restated": {"stuck": len(json.loads(request.content)["invoice_ids"]), "confirmed": 1}}

    counts = await _client(answer, seen).restate([uuid.uuid4() for _ in range(2500)])
    assert [len(json.loads(r.content)["invoice_ids"]) for r in seen] == [1000, 1000, 500]
    assert counts == {"stuck": 2500, "confirmed": 3}


async def test_open_page_follows_next_after() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    rows, after = await _client({"items": [_entry(a), _entry(b)], "next_after": str(b)}).open_page(None, 2)
    assert [r.invoice_id for r in rows] == [a, b] and after == b
    rows, after = await _client({"items": [], "next_after": None}).open_page(b, 2)
    assert rows == [] and after is None
