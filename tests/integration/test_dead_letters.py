"""Dead letters are counted per record and per consumer group, never once per copy: with the real sync service
and reconciler (both read invoice.events.v1, each in its own group, each dead-letters its own copy of a bad
record), over real Kafka, as the issuer's sampler, its /metrics, the ops API and `fapiao status` report them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from shared.kafka import OffsetReader
from shared.topics import INVOICE_EVENTS, dlq_name
from tests.harness import ADMIN_TOKEN, REPO, ReconPipeline, eventually, metric, process_env, read_topic

N = 20


def _point(p: ReconPipeline) -> dict[str, Any] | None:
    point = (p.issuer.app.state.ops_sampler.latest or {}).get("point")  # type: ignore[attr-defined]
    return point if point and point.get("dlq") is not None else None


def _counts(point: dict[str, Any], topic: str) -> tuple[int, dict[str, int]]:
    return point["dlq"].get(topic, 0), dict((point.get("dlq_groups") or {}).get(topic) or {})


async def test_bad_records_read_by_two_groups_count_once_and_once_per_group(recon_pipeline: ReconPipeline,
                                                                           recon_issuer_http: str) -> None:
    p = recon_pipeline
    settings = p.issuer.settings
    prefix, bootstrap = settings.topic_prefix, settings.kafka_bootstrap  # type: ignore[attr-defined]
    source = INVOICE_EVENTS.qualified(prefix)
    dlq = dlq_name(source)
    short = dlq.removeprefix(prefix)
    groups = {"sync": f"{prefix}sync.submit", "reconciler": f"{prefix}reconciler.ledger"}
    sizes = OffsetReader(bootstrap)
    try:
        before_point = await eventually(lambda: _point(p), timeout=20)
        records_before, groups_before = _counts(before_point, dlq)
        copies_before = (await sizes.sizes([dlq])).get(dlq, 0)

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for i in range(N):
                await producer.send_and_wait(source, b"{not an envelope %d" % i, key=b"bad-%d" % i)

            # Each of the two groups sets aside its own copy of every record: 2N copies on the topic ...
            async def copies() -> int | None:
                n = (await sizes.sizes([dlq])).get(dlq, 0) - copies_before
                return n if n >= 2 * N else None

            assert await eventually(copies, timeout=60, interval=0.3) == 2 * N
            # ... and N records, N for each group, in the sampler's reading.
            want = {name: groups_before.get(name, 0) + N for name in groups}

            def counted() -> dict[str, Any] | None:
                point = _point(p)
                return point if point and _counts(point, dlq) == (records_before + N, want) else None

            try:
                await eventually(counted, timeout=30, interval=0.3)
            except AssertionError:
                raise AssertionError(f"sampled {_counts(_point(p) or {'dlq': {}}, dlq)}, wanted "
                                     f"{(records_before + N, want)}") from None

            # A group that stopped between its copy and its commit writes the copy again: still one record.
            [again] = (await read_topic(bootstrap, dlq, until=lambda rs: len(rs) > copies_before))[-1:]
            await producer.send_and_wait(dlq, again.value, key=again.key, headers=list(again.headers))
            # One more bad record after it: once that one is counted, the repeated copy has been read too.
            await producer.send_and_wait(source, b"{one more", key=b"bad-last")
            want = {name: n + 1 for name, n in want.items()}

            def counted_again() -> dict[str, Any] | None:
                point = _point(p)
                return point if point and _counts(point, dlq) == (records_before + N + 1, want) else None

            await eventually(counted_again, timeout=60, interval=0.3)
            assert (await sizes.sizes([dlq])).get(dlq, 0) - copies_before == 2 * (N + 1) + 1
        finally:
            await producer.stop()
    finally:
        await sizes.close()

    # /metrics: records per topic, and per (topic, group) with the group's id.
    records = records_before + N + 1
    assert await metric(recon_issuer_http, "fapiao_dlq_records", topic=short) == records
    for name, group in groups.items():
        assert await metric(recon_issuer_http, "fapiao_dlq_group_records", topic=short, group=group) == want[name]

    # The ops API the dashboard page reads, and `fapiao status` (JSON and text).
    async def overview() -> dict[str, Any]:
        r = await p.issuer.client.get("/ops/api/overview", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200, r.text
        return r.json()

    seen = (await overview())["pipeline"]
    assert seen["dlq"][dlq] == records and seen["dlq_groups"][dlq] == want

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        env = process_env(p.infra, FAPIAO_ISSUER_URL=recon_issuer_http, FAPIAO_RECONCILER_URL=p.reconciler.url,
                          FAPIAO_TAXSTORE_URL=p.taxstore.url, FAPIAO_NOTIFIER_URL=p.notifier.url,
                          COLUMNS="400")
        return subprocess.run([sys.executable, "-m", "fapiao.cli", "status", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    as_json = await asyncio.to_thread(status, "--json")
    body = json.loads(as_json.stdout)
    assert body["dlq"][dlq] == records and body["dlq_groups"][dlq] == want, body
    text = await asyncio.to_thread(status)
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith("Dead letters"))
    assert f"{dlq} {records} (" in line and f"sync {want['sync']}" in line, line
    assert f"reconciler {want['reconciler']}" in line and f"{dlq} {2 * records}" not in line, line

    # Dealt with and deleted (the runbook's way, delete_records up to the log end): the counts forget them.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tp = TopicPartition(dlq, 0)
        end = await _log_end(bootstrap, tp)
        await admin.delete_records({tp: RecordsToDelete(end)}, timeout_ms=10_000)
    finally:
        await admin.close()

    def forgotten() -> dict[str, Any] | None:
        point = _point(p)
        return point if point and _counts(point, dlq) == (0, {}) else None

    await eventually(forgotten, timeout=30, interval=0.3)
    assert await metric(recon_issuer_http, "fapiao_dlq_records", topic=short) == 0
    for group in groups.values():
        assert await metric(recon_issuer_http, "fapiao_dlq_group_records", topic=short, group=group) == 0


async def _log_end(bootstrap: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
