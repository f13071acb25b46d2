"""The end-to-end lag on the issuer's /metrics: while a store outage holds invoices back, the pipeline gauges
say how many wait in which stage and for how long; once the store is back they drain to 0.

Real processes (tax store, sync, reconciler, notifier) over real Kafka and PostgreSQL; the issuer in process,
read over its own HTTP interface, as Prometheus scrapes it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ReconPipeline, eventually
from tests.steps import issue, new_tenant

IN_FLIGHT = ("outbox", "kafka", "sync_retries", "awaiting_visibility", "resync")
"""The stages an invoice passes on its way; stuck and rejected ones stay until someone acts."""


async def pipeline_gauges(p: ReconPipeline) -> tuple[dict[str, float], dict[str, float]]:
    """fapiao_pipeline_waiting_invoices and fapiao_pipeline_oldest_waiting_seconds by stage, from GET /metrics."""
    r = await p.issuer.client.get("/metrics")
    assert r.status_code == 200
    waiting: dict[str, float] = {}
    oldest: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == "fapiao_pipeline_waiting_invoices":
                waiting[sample.labels["stage"]] = sample.value
            elif sample.name == "fapiao_pipeline_oldest_waiting_seconds":
                oldest[sample.labels["stage"]] = sample.value
    return waiting, oldest


async def test_the_pipeline_gauges_count_invoices_held_by_an_outage_and_drain_after_it(
        recon_pipeline: ReconPipeline) -> None:
    p = recon_pipeline
    tenant = await new_tenant(p)
    await p.faults(outage=True)
    ids = await issue(p, tenant, 12)

    async def held() -> tuple[str, float, float] | None:
        waiting, oldest = await pipeline_gauges(p)
        busy = [(s, waiting[s], oldest[s]) for s in IN_FLIGHT if waiting.get(s, 0) > 0 and oldest.get(s, 0) > 0]
        # At least our twelve wait, and not yet at the authority: the store refuses every submission.
        if sum(waiting.get(s, 0) for s in IN_FLIGHT) >= len(ids) and busy:
            return max(busy, key=lambda b: b[1])
        return None

    stage, count, age = await eventually(held, timeout=15, interval=0.5)
    assert stage in IN_FLIGHT and count > 0 and age > 0
    # The outage outlasts the first attempts: sync holds them for another try (its queue is a stage of its own,
    # one no Kafka lag figure sees).
    async def in_sync_retries() -> bool:
        waiting, oldest = await pipeline_gauges(p)
        return waiting.get("sync_retries", 0) >= 1 and oldest.get("sync_retries", 0) > 0
    await eventually(in_sync_retries, timeout=10, interval=0.5)

    await p.clear_faults()

    async def drained() -> bool:
        waiting, oldest = await pipeline_gauges(p)
        return all(waiting.get(s) == 0 and oldest.get(s) == 0 for s in IN_FLIGHT)
    await eventually(drained, timeout=25, interval=0.5)
    assert (await p.ledger(tenant.id)).get("confirmed", 0) == len(ids), "drained because confirmed, not lost"
