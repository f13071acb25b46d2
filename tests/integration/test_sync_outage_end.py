"""After a store outage ends, the backlog drains at once, not when the circuit's open interval runs out, nor when
the backoff of each attempt the outage failed runs out.

A fault drill found it: after a 60 s outage nothing drained for ~18 s while the breaker waited out an open interval
that had grown to its cap, and most stuck alerts of that round were raised in that wait. Here the open interval is
at least 30 s (FAPIAO_BREAKER_BASE = CAP = 60, equal jitter), and so is the backoff after a failed attempt
(FAPIAO_RETRY_BASE = CAP = 60), so every invoice being submitted within 20 s of the outage's end can only come from
the health read noticing the store is back (services/sync/breaker.py) and sync then releasing what the outage held
back (Syncer._release_held)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.harness import (
    SYNC_ENV,
    Pipeline,
    RunningIssuer,
    ServiceProcess,
    eventually,
    fresh_database,
    issuer_settings,
    metric,
    process_env,
    running_issuer,
    service_process,
    start_all,
    stop_all,
)
from tests.steps import delta, issue, new_tenant, until_all


@pytest.fixture(scope="module")
async def issuer(infra) -> AsyncIterator[RunningIssuer]:  # type: ignore[no-untyped-def]
    """Topics of its own: the session's sync must not take these invoices."""
    async with running_issuer(issuer_settings(infra)) as own:
        yield own


@pytest.fixture(scope="module")
async def slow_breaker_processes(infra, issuer: RunningIssuer,  # type: ignore[no-untyped-def]
                                 ) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess]]:
    # A database of their own: two sync services on one `sync` schema take each other's due rows (the session's
    # would submit these invoices to its own store, with its closed circuit).
    database = await fresh_database(infra, f"outage_end_{uuid.uuid4().hex[:8]}")
    taxstore = service_process("taxstore", infra, env=process_env(
        infra, FAPIAO_DATABASE_URL=database, FAPIAO_REQUIRE_REGISTRATION="true"))
    sync = service_process("sync", infra, env=process_env(
        infra, FAPIAO_DATABASE_URL=database, FAPIAO_TOPIC_PREFIX=issuer.settings.topic_prefix,
        FAPIAO_TAXSTORE_URL=taxstore.url,
        **{**SYNC_ENV, "FAPIAO_BREAKER_BASE": "60", "FAPIAO_BREAKER_CAP": "60", "FAPIAO_BREAKER_THRESHOLD": "2",
           "FAPIAO_BREAKER_HEALTH_INTERVAL": "0.3", "FAPIAO_RETRY_BASE": "60", "FAPIAO_RETRY_CAP": "60"}))
    procs = (taxstore, sync)
    try:
        start_all(procs)
    except Exception as exc:  # noqa: BLE001 - any failure to start is this module's failure, said plainly
        stop_all(procs)
        pytest.fail(f"could not start the tax store and sync processes: {exc}", pytrace=False)
    yield procs
    stop_all(procs)


async def test_the_backlog_drains_as_soon_as_the_store_answers_again(
        issuer: RunningIssuer, slow_breaker_processes: tuple[ServiceProcess, ServiceProcess]) -> None:
    taxstore, sync = slow_breaker_processes
    pipeline = Pipeline(issuer, taxstore, sync)
    tenant = await new_tenant(pipeline)
    await pipeline.faults(outage=True)
    ids = await issue(pipeline, tenant, 60)

    async def circuit() -> dict:
        async with httpx.AsyncClient(timeout=5) as c:
            return (await c.get(f"{sync.url}/admin/status", headers=pipeline.admin)).json()["circuit"]

    async def open_and_long() -> dict | None:
        c = await circuit()
        return c if c and c["state"] == "open" and c["retry_in_seconds"] > 25 else None

    opened = await eventually(open_and_long, timeout=30)
    before = await pipeline.stats()
    await eventually(lambda: _refused_more(pipeline, before), timeout=10)  # the health reads saw it down

    await pipeline.faults(outage=False)
    lifted = time.monotonic()
    await until_all(pipeline, tenant, "submitted", len(ids), timeout=20)
    after = await circuit()
    assert after["state"] == "closed" and after["early_probes"] >= 1, (opened, after)
    assert time.monotonic() - lifted < opened["retry_in_seconds"], "drained before the open interval would end"
    assert set(await pipeline.stored(tenant.tax_id)) == set(ids)
    released = await metric(sync.url, "fapiao_sync_released_total")
    assert released >= 1, "invoices the outage failed were released, not left to their 30-60 s backoff"


async def _refused_more(pipeline: Pipeline, before: dict) -> bool:
    return delta(await pipeline.stats(), before, "outage_refused") > 0
