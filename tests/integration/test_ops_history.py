"""The dashboard's history lives in PostgreSQL: it survives an issuer restart, and two issuer replicas show one
history (a replica skips its reading when the other has just taken one)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from services.issuer import models as m
from tests.harness import ADMIN, Infra, eventually, fresh_database, issuer_settings, running_issuer


async def _series(issuer) -> list[dict]:  # type: ignore[no-untyped-def]
    r = await issuer.client.get("/ops/api/overview", headers=ADMIN, params={"stuck_limit": 0})
    assert r.status_code == 200, r.text
    return list(r.json()["series"])


async def test_the_history_survives_a_restart_and_two_replicas_share_it(infra: Infra) -> None:
    database = await fresh_database(infra, f"ops_history_{uuid.uuid4().hex[:8]}")
    settings = issuer_settings(infra, database_url=database, ops_sample_interval=0.5, ops_history=60)
    async with running_issuer(settings) as first:
        await eventually(lambda: _at_least(first, 4), timeout=30)
        before = [p["t"] for p in await _series(first)]
    assert before == sorted(before)

    # A new process on the same database: the readings taken before it started are on its charts.
    async with running_issuer(settings) as again, running_issuer(settings) as replica:
        await eventually(lambda: _at_least(again, len(before) + 6), timeout=30)
        now, theirs = await _series(again), await _series(replica)
        times = [p["t"] for p in now]
        assert set(before) <= set(times), "the readings from before the restart are kept"
        assert [p["t"] for p in theirs][: len(times)] == times[: len(theirs)], "both replicas show one history"
        gaps = [b - a for a, b in zip(times[len(before):], times[len(before) + 1:], strict=False)]
        assert min(gaps) >= 0.25 - 0.01, f"two replicas, one reading per half interval at most: {gaps}"
        assert all("waiting" in p and "counts" in p for p in now)
        async with again.app.state.engine.connect() as conn:
            rows = (await conn.execute(select(func.count()).select_from(m.ops_samples))).scalar_one()
        assert rows >= len(times), "what the charts show is what the table holds"


async def _at_least(issuer, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await _series(issuer)) >= n


async def test_an_invoice_keeps_its_age_when_it_changes_stage(infra: Infra) -> None:
    """"Oldest" is how long an invoice has not been at the authority: an invoice that moves on (a resync, a
    resubmission, stuck) keeps its age; the time in its new stage is shown beside it, not instead."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from services.issuer.ops.waiting import waiting
    from tests import factories

    database = await fresh_database(infra, f"ops_age_{uuid.uuid4().hex[:8]}")
    async with running_issuer(issuer_settings(infra, database_url=database)) as issuer:
        tenant = await issuer.new_tenant()
        r = await issuer.client.post("/v1/invoices", headers=tenant.headers, json=factories.invoice(tenant.tax_id))
        assert r.status_code == 201, r.text
        now = datetime.now(UTC)
        # As the reconciler's resync leaves it: issued 10 minutes ago, in "resync after a gap" for 5 seconds.
        async with issuer.app.state.engine.begin() as conn:
            await conn.execute(update(m.invoices).where(m.invoices.c.id == uuid.UUID(r.json()["id"])).values(
                status="retrying", reason_source="reconciler", accepted_at=now - timedelta(minutes=10),
                status_since=now - timedelta(seconds=5)))
        async with issuer.app.state.sessions() as session:
            w = await waiting(session=session, tenant_id=uuid.UUID(tenant.id), now=now)
        resync = next(s for s in w.stages if s.stage == "resync")
        assert resync.count == 1 and resync.oldest_seconds == 600.0 and resync.in_stage_seconds == 5.0
        assert w.oldest_seconds == 600.0 and "oldest 10 min 0 s" in w.headline(), w.headline()
        shown = (await issuer.client.get("/ops/api/overview", headers=ADMIN, params={"tenant_id": tenant.id}))
        assert shown.status_code == 200, shown.text
        stage = {s["stage"]: s for s in shown.json()["waiting"]["stages"]}["resync"]
        assert stage["oldest_seconds"] >= 600 and 5 <= stage["in_stage_seconds"] < 600, stage
