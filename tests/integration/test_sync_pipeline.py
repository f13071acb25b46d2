"""The sync service against the real tax store process, fed by the real issuer over real Kafka.

Each test drives invoices through the issuer's batch API and watches three things agree: the issuer's
status view, the tax store's listing (what the authority actually holds) and the store's own counters.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from aiokafka import AIOKafkaProducer

from shared.topics import INVOICE_EVENTS, dlq_name
from tests import steps
from tests.harness import Pipeline, eventually, read_topic
from tests.steps import delta, issue, new_tenant, until_all


async def test_faults_off_1000_invoices_are_stored_exactly_once_and_submitted(pipeline: Pipeline) -> None:
    tenant = await new_tenant(pipeline)
    before = await pipeline.stats()
    ids = await issue(pipeline, tenant, 1000)
    await until_all(pipeline, tenant, "submitted", 1000, timeout=90)

    stored = await pipeline.stored(tenant.tax_id)
    assert set(stored) == set(ids)
    after = await pipeline.stats()
    assert delta(after, before, "stored") == 1000
    assert delta(after, before, "conflicts") == 0

    # The issuer shows the authority's receipt, and the timeline says how it got there.
    number = next(iter(ids))
    detail = await steps.detail(pipeline, tenant, ids[number])
    assert detail["status"] == "submitted"
    assert detail["receipt_no"] == stored[number]["receipt_no"]
    assert "Acknowledged by the tax authority" in detail["reason"]
    kinds = [e["kind"] for e in detail["timeline"]]
    assert kinds[0] == "accepted" and kinds[-1] == "submitted", kinds


async def test_errors_and_ambiguous_timeouts_lose_nothing_and_duplicate_nothing(pipeline: Pipeline) -> None:
    tenant = await new_tenant(pipeline)
    await pipeline.faults(error_rate=0.3, timeout_rate=0.2, timeout_hang_ms=2500, seed=7)
    before = await pipeline.stats()
    ids = await issue(pipeline, tenant, 400)
    await until_all(pipeline, tenant, "submitted", 400, timeout=150)
    await pipeline.clear_faults()

    stored = await pipeline.stored(tenant.tax_id)
    assert set(stored) == set(ids), f"missing at the store: {len(set(ids) - set(stored))}"
    after = await pipeline.stats()
    # Faults really happened, timeouts really left some writes applied, yet every invoice is stored once:
    # resubmissions of applied writes were recognised (duplicates: no effect), never a conflicting copy.
    assert delta(after, before, "errors") > 0
    assert delta(after, before, "timeouts") > 0
    assert delta(after, before, "timeouts_applied") > 0
    assert delta(after, before, "stored") == 400
    assert delta(after, before, "conflicts") == 0

    # Some invoice went through failed attempts; its timeline shows each, then the acknowledgement.
    async with pipeline.issuer.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        from sqlalchemy import text

        row = (await conn.execute(text(
            "select invoice_id from issuer.invoice_timeline t join issuer.invoices i on i.id = t.invoice_id "
            "where i.tenant_id = :t and t.kind = 'attempt_failed' limit 1"), {"t": tenant.id})).first()
    assert row is not None, "with 30% errors some attempt must have failed"
    detail = await steps.detail(pipeline, tenant, str(row[0]))
    kinds = [e["kind"] for e in detail["timeline"]]
    assert "attempt_failed" in kinds and kinds[-1] == "submitted", kinds
    failed = next(e for e in detail["timeline"] if e["kind"] == "attempt_failed")
    assert failed["detail"]["attempt"] >= 1 and failed["detail"]["error"]
    assert detail["timeline"][-1]["detail"]["attempt"] > failed["detail"]["attempt"]


async def test_outage_backs_off_without_a_busy_loop_then_drains(pipeline: Pipeline) -> None:
    tenant = await new_tenant(pipeline)
    await pipeline.faults(outage=True)
    before = await pipeline.stats()
    started = time.monotonic()
    ids: dict[str, str] = {}
    for _ in range(4):  # load keeps arriving during the outage
        ids.update(await issue(pipeline, tenant, 100))
        await asyncio.sleep(1)
    # While it lasts, invoices show why they wait and when the next try is.
    async def shows_retrying() -> dict | None:
        counts = await pipeline.statuses(tenant.id)
        return counts if counts.get("retrying") else None

    await eventually(shows_retrying, timeout=15)
    async with httpx.AsyncClient(timeout=5) as c:
        status = (await c.get(f"{pipeline.sync.url}/admin/status", headers=pipeline.admin)).json()
    assert status["circuit"]["state"] in ("open", "half_open"), status
    await asyncio.sleep(max(0.0, 20 - (time.monotonic() - started)))
    during = await pipeline.stats()
    elapsed = time.monotonic() - started
    refused = delta(during, before, "outage_refused")
    assert refused >= 1, "sync must keep probing"
    assert refused / elapsed < 2.0, f"{refused} requests in {elapsed:.0f}s of outage: that is a busy loop"
    assert (await pipeline.statuses(tenant.id)).get("submitted", 0) == 0

    await pipeline.faults(outage=False)
    await until_all(pipeline, tenant, "submitted", len(ids), timeout=60)
    assert set(await pipeline.stored(tenant.tax_id)) == set(ids)
    assert delta(await pipeline.stats(), before, "conflicts") == 0


async def test_kill_minus_9_mid_batch_loses_nothing_and_stores_nothing_twice(pipeline: Pipeline) -> None:
    tenant = await new_tenant(pipeline)
    await pipeline.faults(latency_ms=150, latency_jitter_ms=100)
    before = await pipeline.stats()
    ids = await issue(pipeline, tenant, 1000)

    async def some_progress() -> int | None:
        n = (await pipeline.statuses(tenant.id)).get("submitted", 0)
        return n if n >= 50 else None

    await eventually(some_progress, timeout=60)
    pipeline.sync.kill()
    partial = (await pipeline.statuses(tenant.id)).get("submitted", 0)
    assert partial < 1000, "killed too late to prove anything"
    await pipeline.clear_faults()
    pipeline.sync.start()
    await until_all(pipeline, tenant, "submitted", 1000, timeout=120)

    stored = await pipeline.stored(tenant.tax_id)
    assert set(stored) == set(ids)
    after = await pipeline.stats()
    assert delta(after, before, "stored") == 1000
    assert delta(after, before, "conflicts") == 0


async def test_poison_message_goes_to_the_dlq_and_later_invoices_still_sync(pipeline: Pipeline) -> None:
    tenant = await new_tenant(pipeline)
    prefix = pipeline.issuer.settings.topic_prefix  # type: ignore[attr-defined]
    topic = INVOICE_EVENTS.qualified(prefix)
    marker = f"poison-{time.time_ns()}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.issuer.settings.kafka_bootstrap)  # type: ignore[attr-defined]
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=b"{not json " + marker, key=b"poison")
        await producer.send_and_wait(topic, value=b'{"specversion": "1.0", "id": "x"}', key=marker)
    finally:
        await producer.stop()
    ids = await issue(pipeline, tenant, 20)
    await until_all(pipeline, tenant, "submitted", 20, timeout=60)

    records = await read_topic(pipeline.issuer.settings.kafka_bootstrap, dlq_name(topic),  # type: ignore[attr-defined]
                               until=lambda rs: sum(marker in (r.value + (r.key or b"")) for r in rs) >= 2)
    mine = [r for r in records if marker in (r.value + (r.key or b""))]
    assert len(mine) == 2
    headers = dict(mine[0].headers)
    assert headers["dlq.origin.topic"] == topic.encode()
    assert headers["dlq.consumer.group"] == f"{prefix}sync.submit".encode()
    assert b"envelope" in headers["dlq.error"]
    assert set(await pipeline.stored(tenant.tax_id)) == set(ids)


async def test_authority_rejection_shows_as_rejected_with_the_authoritys_reason(pipeline: Pipeline) -> None:
    tenant = await new_tenant(pipeline, registered=False)  # the authority does not know this seller
    ids = await issue(pipeline, tenant, 3)
    await until_all(pipeline, tenant, "rejected", 3, timeout=60)
    detail = await steps.detail(pipeline, tenant, next(iter(ids.values())))
    assert detail["status"] == "rejected"
    assert "SELLER_NOT_REGISTERED" in detail["reason"]
    assert detail["next_action"] and "void" in detail["next_action"]
    assert detail["timeline"][-1]["kind"] == "rejected"
    assert await pipeline.stored(tenant.tax_id) == {}
    # Rejected is final for sync: nothing retries it.
    await asyncio.sleep(1.5)
    assert (await pipeline.statuses(tenant.id)) == {"rejected": 3}


async def test_silent_drops_look_submitted_but_are_absent_and_counted(pipeline: Pipeline) -> None:
    tenant = await new_tenant(pipeline)
    await pipeline.faults(drop_rate=0.4, seed=11)
    before = await pipeline.stats()
    ids = await issue(pipeline, tenant, 200)
    await until_all(pipeline, tenant, "submitted", 200, timeout=60)
    await pipeline.clear_faults()

    stored = await pipeline.stored(tenant.tax_id)
    missing = set(ids) - set(stored)
    after = await pipeline.stats()
    assert missing, "a 40% drop rate must drop some"
    assert delta(after, before, "dropped") == len(missing)
    assert delta(after, before, "stored") == len(stored) == 200 - len(missing)
    # The issuer cannot tell: it holds a receipt for each. Finding the gap is the reconciler's job.
    lost = await steps.detail(pipeline, tenant, ids[next(iter(missing))])
    assert lost["status"] == "submitted" and lost["receipt_no"]
