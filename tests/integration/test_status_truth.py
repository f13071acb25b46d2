"""The status never lies: what the issuer says about an invoice agrees with the reconciler's ledger, under a
flaky store, after late and redelivered facts, and after someone or something made them disagree.

Real processes (tax store, sync, reconciler, notifier) over real Kafka and PostgreSQL; the issuer in process.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY
from sqlalchemy import text

from services.issuer.feeds.reconciliation import apply_reconciliation
from services.issuer.feeds.sync_results import apply_sync_results
from services.issuer.invoices.issuing import create_invoices, validate_item
from services.issuer.invoices.outcomes import Created
from services.issuer.lifecycle import Status
from services.issuer.selfcheck import disagrees
from services.issuer.tenants import TenantCreated, create_tenant
from shared.db import transaction
from shared.envelope import Received, new_envelope
from shared.events import (
    INVOICE_CONFIRMED,
    INVOICE_GAP_FOUND,
    INVOICE_STUCK,
    INVOICE_SUBMISSION_FAILED,
    INVOICE_SUBMITTED,
    RECONCILER_SOURCE,
    SYNC_SOURCE,
)
from tests import factories, steps
from tests.harness import Infra, ReconPipeline, eventually, fresh_database, issuer_settings, start_issuer
from tests.steps import issue, new_tenant


def repairs() -> float:
    """fapiao_issuer_status_repairs_total, all labels (the issuer runs in this process)."""
    return sum(s.value for m in REGISTRY.collect() if m.name == "fapiao_issuer_status_repairs"
               for s in m.samples if s.name.endswith("_total"))


async def _sql(p: ReconPipeline, sql: str, **params: object) -> list:
    async with p.issuer.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        return list((await conn.execute(text(sql), params)).all())


async def _disagreeing(p: ReconPipeline, tenant_id: str) -> list:
    """Invoices the ledger has confirmed that the issuer shows otherwise."""
    return await _sql(p, "select i.id, i.status, i.sync_seq, l.sync_seq from issuer.invoices i "
                         "join reconciler.ledger l on l.invoice_id = i.id "
                         "where i.tenant_id = :t and l.state = 'confirmed' and i.status <> 'confirmed'", t=tenant_id)


async def test_under_a_flaky_store_every_confirmed_invoice_stays_confirmed(recon_pipeline: ReconPipeline) -> None:
    """The drill that found the regression: drops, ambiguous timeouts and errors at once. Late sync results
    (a resync's read-back that failed, then one that found it) arrive after the reconciler confirmed; on the
    old lifecycle they moved ~3 % of confirmed invoices back to `submitted` for good."""
    p = recon_pipeline
    tenant = await new_tenant(p)
    repairs_before = repairs()
    await p.faults(drop_rate=0.3, timeout_rate=0.2, error_rate=0.2, timeout_hang_ms=2000, seed=11)
    ids = await issue(p, tenant, 1000)
    await asyncio.sleep(20)  # faults on while the resyncs pile up
    await p.clear_faults()

    async def ledger_all_confirmed() -> bool:
        return (await p.ledger(tenant.id)).get("confirmed", 0) == 1000
    await eventually(ledger_all_confirmed, timeout=240, interval=1.0)

    async def issuer_agrees() -> bool:
        return not await _disagreeing(p, tenant.id)
    try:
        await eventually(issuer_agrees, timeout=30, interval=1.0)
    except AssertionError:
        wrong = await _disagreeing(p, tenant.id)
        raise AssertionError(
            f"{len(wrong)} invoices confirmed in the ledger but not in the issuer, e.g. {wrong[:5]}") from None
    # ... and it stays so while the late results of earlier attempts keep arriving.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wrong = await _disagreeing(p, tenant.id)
        assert not wrong, f"{len(wrong)} confirmed invoices fell back, e.g. {wrong[:5]}"
        counts = await p.statuses(tenant.id)
        assert counts == {"confirmed": 1000}, counts
        await asyncio.sleep(3)
    assert set(ids) == set(await p.stored(tenant.tax_id))
    # Nothing needed repairing: the statuses were right by construction, not by the self-check.
    assert repairs() == repairs_before
    # An invoice's explanation is the reconciler's, never a stale "check visibility" for a check that won't come.
    one = await steps.detail(p, tenant, next(iter(ids.values())))
    assert one["status"] == "confirmed" and one["next_action"] is None and "Visible" in one["reason"]


async def test_the_self_check_repairs_a_status_that_disagrees_with_the_ledger(recon_pipeline: ReconPipeline) -> None:
    """Statuses made wrong behind the issuer's back (as a lost event or a bug would) are found and restated."""
    p = recon_pipeline
    tenant = await new_tenant(p)
    ids = list((await issue(p, tenant, 6)).values())
    await steps.until_all(p, tenant, "confirmed", 6, timeout=60)
    before = repairs()
    wrong, reopened = ids[0], ids[1]
    # One confirmed invoice shown as submitted (the drill's symptom), facts and all; one the ledger reopened
    # (found missing: a gap) while the issuer still shows it confirmed.
    async with p.issuer.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(text(
            "update issuer.invoices set status = 'submitted', finding_status = null, reason_source = 'sync', "
            "updated_at = now() - interval '1 hour' where id = :i"), {"i": wrong})
        await conn.execute(text(
            "update reconciler.ledger set state = 'gap', gap_kind = 'missing', next_check_at = now() + interval "
            "'1 hour' where invoice_id = :i"), {"i": reopened})
        await conn.execute(text(
            "update issuer.invoices set updated_at = now() - interval '1 hour' where id = :i"), {"i": reopened})

    async def repaired() -> bool:
        statuses = dict(await _sql(p, "select id::text, status from issuer.invoices where id = any(:ids)",
                                   ids=[uuid.UUID(wrong), uuid.UUID(reopened)]))
        return statuses == {wrong: "confirmed", reopened: "retrying"}
    await eventually(repaired, timeout=30, interval=0.5)
    assert repairs() - before == 2
    kinds = [e["message"] for e in (await steps.detail(p, tenant, wrong))["timeline"]]
    assert any("restated: the status self-check" in m for m in kinds), kinds
    restated = (await _sql(p, "select count(*) from reconciler.outbox where convert_from(payload, 'UTF8') like :pat "
                              "and key = any(:k)", pat='%"restated":true%', k=[wrong, reopened]))[0][0]
    assert restated == 2
    # Left alone afterwards: nothing else disagrees, so no further repairs.
    await asyncio.sleep(3)
    assert repairs() - before == 2
    # Put the ledger back for the tests after this one (the sweep would find it visible and confirm it anyway).
    await p.recon("POST", f"/admin/invoices/{reopened}/check")


def test_disagreement_is_judged_per_ledger_state() -> None:
    assert disagrees("submitted", "confirmed") and disagrees("retrying", "confirmed")
    assert disagrees("stuck", "confirmed")
    assert not disagrees("confirmed", "confirmed") and not disagrees("voided", "confirmed")
    assert disagrees("confirmed", "gap") and disagrees("stuck", "awaiting") and disagrees("confirmed", "pending")
    assert not disagrees("submitted", "gap") and not disagrees("retrying", "awaiting")
    assert disagrees("retrying", "stuck") and not disagrees("stuck", "stuck") and not disagrees("rejected", "stuck")
    assert not disagrees("confirmed", "rejected") and not disagrees("submitted", "voided")


# --- random interleavings through the issuer's real handlers and database ---------------------------

async def test_random_interleavings_of_real_events_end_on_the_last_authoritative_fact(infra: Infra) -> None:
    """The property of tests/unit/test_lifecycle.py, end to end through apply_sync_results and
    apply_reconciliation on PostgreSQL: many invoices, each with its own random history, delivered
    with the two topics interleaved at random and redeliveries."""
    from tests.unit.test_lifecycle import Finding, SyncResult, truth

    db = await fresh_database(infra, f"truth_{uuid.uuid4().hex[:8]}")
    app, client, lifespan = await start_issuer(issuer_settings(infra, database_url=db))
    try:
        sessions = app.state.sessions  # type: ignore[attr-defined]
        async with transaction(sessions) as session:
            registered = await create_tenant(session=session, name="Truth Co.", tax_id=factories.uscc())
        assert isinstance(registered, TenantCreated)
        tenant = registered.tenant
        rng = random.Random(20261202)
        histories: dict[str, list] = {}
        async with transaction(sessions) as session:
            items = [validate_item(factories.invoice(tenant.tax_id), tenant=tenant, today=factories.today(),
                                   window_days=365) for _ in range(200)]
            created = await create_invoices(session=session, tenant=tenant, items=items, source="api", topic="t")
        ids = [str(r.invoice.id) for r in created if isinstance(r, Created)]
        assert len(ids) == len(items)
        envelopes = []
        for iid in ids:
            history, n_sync, n_find, last, rejected = [], 0, 0, None, False
            for _ in range(rng.randint(1, 12)):
                if not rejected and rng.random() < 0.5:
                    n_sync += 1
                    kind = rng.choice(["submitted", "retrying", "rejected"])
                    rejected = kind == "rejected"
                    history.append(SyncResult(n_sync, Status(kind)))
                else:
                    last = rng.choice({None: ["submitted", "retrying", "confirmed", "stuck"],
                                       "submitted": ["retrying", "confirmed", "stuck"],
                                       "retrying": ["retrying", "confirmed", "stuck"], "stuck": ["stuck", "confirmed"],
                                       "confirmed": ["retrying", "stuck", "confirmed"]}[last])
                    n_find += 1
                    history.append(Finding(n_find, Status(last), n_sync))
            histories[iid] = history
            syncs = [_sync_event(iid, tenant.id, f) for f in history if isinstance(f, SyncResult)]
            finds = [_finding_event(iid, tenant.id, f) for f in history if isinstance(f, Finding)]
            envelopes.append((syncs, finds))
        # Deliver: each topic in order per invoice, the two topics and the invoices interleaved, with repeats.
        streams = [list(s) for s, _ in envelopes] + [list(f) for _, f in envelopes]
        sent: list = []
        while any(streams):
            stream = rng.choice([s for s in streams if s])
            batch = [stream.pop(0) for _ in range(min(len(stream), rng.randint(1, 3)))]
            if sent and rng.random() < 0.2:
                batch.append(rng.choice(sent))
            sent.extend(batch)
            async with transaction(sessions) as session:
                syncs = [e for e in batch if e.source == SYNC_SOURCE]
                finds = [e for e in batch if e.source == RECONCILER_SOURCE]
                await apply_sync_results(session=session, events=[Received.of(e) for e in syncs])
                await apply_reconciliation(session=session, events=[Received.of(e) for e in finds])
        got = dict(await _rows(app, "select id::text, status from issuer.invoices where tenant_id = :t", t=tenant.id))
        wrong = {iid: (got[iid], truth(h).value) for iid, h in histories.items() if got[iid] != truth(h).value}
        assert not wrong, f"{len(wrong)} of {len(ids)} invoices end on the wrong status: {list(wrong.items())[:5]}"
        assert {truth(h) for h in histories.values()} >= {Status.CONFIRMED, Status.STUCK,
                                                         Status.SUBMITTED}  # the histories were varied
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)  # type: ignore[attr-defined]


async def _rows(app: object, sql: str, **params: object) -> list:
    async with app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        return list((await conn.execute(text(sql), params)).all())


_SYNC_TYPES = {"submitted": INVOICE_SUBMITTED, "retrying": INVOICE_SUBMISSION_FAILED,
               "rejected": "cn.fapiao.invoice.rejected.v1"}
_FINDING = {"confirmed": (INVOICE_CONFIRMED, "confirmed"), "stuck": (INVOICE_STUCK, "stuck"),
            "retrying": (INVOICE_GAP_FOUND, "gap"), "submitted": ("cn.fapiao.invoice.awaiting-visibility.v1",
                                                                  "awaiting")}


def _sync_event(iid: str, tenant_id: uuid.UUID, f) -> object:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    data: dict = {"invoice_id": iid, "attempt": f.seq, "at": now.isoformat(), "latency_ms": 5}
    if f.status.value == "submitted":
        data |= {"receipt_no": f"R-{f.seq}", "how": "created"}
    elif f.status.value == "rejected":
        data |= {"reason_code": "E1", "reason": "bad"}
    else:
        data |= {"error": "timeout", "next_attempt_at": (now + timedelta(seconds=5)).isoformat()}
    return new_envelope(source=SYNC_SOURCE, type=_SYNC_TYPES[f.status.value], subject=iid, tenant=str(tenant_id),
                        sequence=f.seq, data=data)


def _finding_event(iid: str, tenant_id: uuid.UUID, f) -> object:  # type: ignore[no-untyped-def]
    event_type, ledger_state = _FINDING[f.status.value]
    now = datetime.now(UTC).isoformat()
    data: dict = {"invoice_id": iid, "ledger_state": ledger_state, "sync_seq": f.sync_seen}
    if ledger_state == "confirmed":
        data |= {"confirmed_at": now, "receipt_no": "R-1"}
    elif ledger_state == "stuck":
        data |= {"case_no": "CASE-20261202-000001", "accepted_at": now}
    elif ledger_state == "gap":
        data |= {"kind": "missing"}
    else:
        data |= {"acked_at": now, "receipt_no": "R-1"}
    return new_envelope(source=RECONCILER_SOURCE, type=event_type, subject=iid, tenant=str(tenant_id),
                        sequence=f.seq, data=data)


async def test_explanations_quote_the_reconcilers_schedule_as_it_is_at_read_time(
        recon_pipeline: ReconPipeline) -> None:
    """A probe found "next at 04:40:40 UTC" still shown two minutes later while the reconciler had moved on."""
    p = recon_pipeline
    tenant = await new_tenant(p)
    await p.faults(visibility_delay_ms=20_000)  # acknowledged, not visible: the reconciler keeps checking
    (iid,) = (await issue(p, tenant, 1)).values()

    async def explained_by_the_reconciler() -> bool:
        rows = await _sql(p, "select reason_source, status from issuer.invoices where id = :i", i=uuid.UUID(iid))
        return rows[0][0] == "reconciler" and rows[0][1] in ("submitted", "retrying")
    await eventually(explained_by_the_reconciler, timeout=30, interval=0.3)
    # The reconciler reschedules its next check (as a resync or an operator would) without telling the issuer.
    planned = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)

    async def ledger_time() -> datetime:
        return (await _sql(p, "select next_check_at from reconciler.ledger where invoice_id = :i",
                           i=uuid.UUID(iid)))[0][0]
    for _ in range(5):  # a check round holding the row at that moment may write its own time over ours
        async with p.issuer.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(text("update reconciler.ledger set next_check_at = :t, check_requested_by = null "
                                    "where invoice_id = :i"), {"t": planned, "i": uuid.UUID(iid)})
        view = await steps.detail(p, tenant, iid)
        if await ledger_time() == planned:
            break
    stored = (await _sql(p, "select recon->>'next_check_at' from issuer.invoices where id = :i",
                         i=uuid.UUID(iid)))[0][0]
    assert datetime.fromisoformat(view["next_action_at"]) == planned, (view["next_action_at"], stored)
    assert planned.strftime("%H:%M:%S UTC") in view["next_action"]
    assert stored is None or datetime.fromisoformat(stored) != planned
    # The list and the operator's view read the same live schedule.
    listed = (await p.issuer.client.get(f"/v1/invoices?number={view['number']}", headers=tenant.headers)).json()
    assert datetime.fromisoformat(listed["items"][0]["next_action_at"]) == planned
    await p.clear_faults()
    await p.recon("POST", f"/admin/invoices/{iid}/check")
    await steps.until_all(p, tenant, "confirmed", 1, timeout=60)


async def test_without_the_reconciler_a_past_check_time_says_it_is_overdue(recon_pipeline: ReconPipeline) -> None:
    """When the live schedule cannot be read, the stored time is shown, and once it has passed it says so."""
    p = recon_pipeline
    tenant = await new_tenant(p)
    (iid,) = (await issue(p, tenant, 1)).values()
    await steps.until_all(p, tenant, "confirmed", 1, timeout=60)
    past = (datetime.now(UTC) - timedelta(minutes=3)).isoformat()
    p.reconciler.kill()  # before the row is changed: the self-check must not put it right under our eyes
    async with p.issuer.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        # As the row would read had the last finding been "awaiting visibility" three minutes ago.
        await conn.execute(text(
            "update issuer.invoices set status = 'submitted', finding_status = 'submitted', reason_source = "
            "'reconciler', recon = recon || jsonb_build_object('type', 'cn.fapiao.invoice.awaiting-visibility.v1', "
            "'acked_at', CAST(:p AS text), 'next_check_at', CAST(:p AS text)) where id = :i"),
            {"p": past, "i": uuid.UUID(iid)})
    try:
        view = await steps.detail(p, tenant, iid)
        assert view["next_action"].startswith("Check visibility now (it was due at "), view["next_action"]
    finally:
        p.reconciler.start()
    # The self-check puts it right once the reconciler is back (it is confirmed in the ledger).
    await steps.until_all(p, tenant, "confirmed", 1, timeout=60)
