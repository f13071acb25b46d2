"""A real 3-broker KRaft cluster (fapiao.infra.KafkaCluster): topics are created replicated three times with
min.insync.replicas 2, and the outbox relay's idempotent acks=all producer loses nothing and writes nothing twice
when one broker is killed with SIGKILL in the middle of a stream. The rest of the suite stays on one broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from fapiao.infra import KafkaCluster
from shared.db import make_engine, make_metadata, outbox_table
from shared.kafka import client_config, ensure_topics, make_admin
from shared.outbox import PublishedRow, notify_outbox, service_relay
from shared.settings import SharedSettings
from shared.topics import ALL_TOPICS, Topic
from tests.harness import eventually, read_topic


async def _describe(bootstrap: str, names: Sequence[str]) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """Each topic's partitions (leader, replicas, ISR) and its min.insync.replicas / unclean election configs."""
    admin = make_admin(bootstrap)
    await asyncio.wait_for(admin.start(), 15)
    try:
        topics = {t["topic"]: t for t in await admin.describe_topics(list(names))}
        wanted = {"min.insync.replicas": None, "unclean.leader.election.enable": None}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, configs=dict(wanted)) for name in names])
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for _code, _msg, _type, name, entries in response.resources:
            configs[name] = {entry[0]: entry[1] for entry in entries}
    return topics, configs


async def _records_held(bootstrap: str, topic: str) -> int:
    """Offsets in use over the topic's partitions: one per record written (no transactions here), so a
    duplicate shows even before anyone reads it."""
    topics, _ = await _describe(bootstrap, [topic])
    partitions = [TopicPartition(topic, p["partition"]) for p in topics[topic]["partitions"]]
    consumer = AIOKafkaConsumer(**client_config(bootstrap), group_id=None, enable_auto_commit=False)
    await asyncio.wait_for(consumer.start(), 15)
    try:
        begin = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return sum(end[tp] - begin[tp] for tp in partitions)


async def test_topics_on_three_brokers_get_three_replicas_and_min_isr_two(kafka_cluster: KafkaCluster) -> None:
    """What the services do at start-up (ensure_topics with the default settings) on a 3-broker cluster."""
    prefix = f"rf{uuid.uuid4().hex[:6]}."
    defaults = SharedSettings.model_fields
    created = await ensure_topics(kafka_cluster.bootstrap, ALL_TOPICS, prefix=prefix,
                                  partitions=int(defaults["kafka_partitions"].default),
                                  replication_factor=defaults["kafka_replication_factor"].default)
    names = [t.qualified(prefix) for t in ALL_TOPICS]
    assert sorted(created) == sorted(names)

    async def described() -> tuple[dict[str, Any], dict[str, dict[str, str]]] | None:
        """Once every broker's metadata has the new topics' partitions (created is not yet propagated), each
        follower has caught up once (a new partition's ISR fills within moments, not at creation) and the broker
        asked for the configs knows the topics (one that does not yet answers with no entries at all: the
        fresh-clone run of 2026-12-06 got {} for a topic whose partitions were all in sync)."""
        topics, configs = got = await _describe(kafka_cluster.bootstrap, names)
        in_sync = all(topics.get(name, {}).get("partitions") and all(
            len(p["isr"]) == len(p["replicas"]) for p in topics[name]["partitions"]) for name in names)
        configured = all({"min.insync.replicas", "unclean.leader.election.enable"} <= set(configs.get(name, {}))
                         for name in names)
        return got if in_sync and configured else None

    topics, configs = await eventually(described, timeout=30, interval=0.5)
    for name in names:
        partitions = topics[name]["partitions"]
        assert partitions and all(sorted(p["replicas"]) == [1, 2, 3] for p in partitions), (name, partitions)
        assert all(sorted(p["isr"]) == [1, 2, 3] for p in partitions), (name, partitions)
        assert configs[name] == {"min.insync.replicas": "2", "unclean.leader.election.enable": "false"}, name
    assert len(topics[f"{prefix}invoice.events.v1"]["partitions"]) == 6
    assert len(topics[f"{prefix}invoice.events.v1.dlq"]["partitions"]) == 1


async def test_a_broker_killed_mid_stream_loses_no_acknowledged_record_and_writes_none_twice(
        infra, kafka_cluster: KafkaCluster) -> None:  # type: ignore[no-untyped-def]
    """The issuer's path to Kafka (an outbox table, service_relay, shared.kafka.make_producer) sends 3,000
    events; after the first 1,000 are acknowledged, the broker leading most of the topic's partitions gets
    kill -9. Every row still ends published, each event is on the topic exactly once at the partition and
    offset its acknowledgement named, and the killed broker rejoins every partition's ISR."""
    total, kill_after = 3000, 1000
    suffix = uuid.uuid4().hex[:8]
    topic = Topic(f"test.cluster.{suffix}.v1", "broker loss under load")
    await ensure_topics(kafka_cluster.bootstrap, [topic], partitions=6)
    schema = f"cluster_{suffix}"
    metadata = make_metadata(schema)
    outbox = outbox_table(metadata)
    engine = make_engine(infra.database_url)
    async with engine.begin() as conn:
        await conn.execute(text(f'create schema "{schema}"'))
        await conn.run_sync(metadata.create_all)

    acked: dict[str, tuple[int, int]] = {}  # event id -> (partition, offset), as acknowledged
    acks_per_event: Counter[str] = Counter()
    ids_by_row: dict[int, str] = {}

    ack_times: list[float] = []

    async def on_published(conn: AsyncConnection, rows: Sequence[PublishedRow]) -> None:
        ack_times.append(time.monotonic())
        for row in rows:
            event_id = ids_by_row[row.id]
            acks_per_event[event_id] += 1
            acked[event_id] = (row.partition, row.offset)

    relay = service_relay(service="cluster-test", engine=engine, table=outbox, bootstrap=kafka_cluster.bootstrap,
                          batch_size=200, poll_interval=0.2, on_published=on_published,
                          request_timeout_ms=int(SharedSettings.model_fields["kafka_request_timeout_ms"].default))
    relay_task = asyncio.create_task(relay.run())

    async def write(start: int, count: int) -> None:
        """Rows as a service writes them: in its own transaction, waking the relay."""
        async with engine.begin() as conn:
            for i in range(start, start + count):
                event_id = f"evt-{suffix}-{i:05d}"
                row_id = (await conn.execute(outbox.insert().values(
                    topic=topic.name, key=f"inv-{i % 97}", event_id=event_id, event_type="cn.fapiao.test.v1",
                    payload=event_id.encode()).returning(outbox.c.id))).scalar_one()
                ids_by_row[row_id] = event_id
            await notify_outbox(conn, outbox)

    async def published() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(outbox)
                                           .where(outbox.c.published_at.is_not(None)))).scalar_one())

    victim = None
    try:
        written = 0
        while written < total:
            await write(written, 50)
            written += 50
            if victim is None and len(acked) >= kill_after:
                topics, _ = await _describe(kafka_cluster.bootstrap, [topic.name])
                leaders = Counter(p["leader"] for p in topics[topic.name]["partitions"])
                victim = kafka_cluster.node(leaders.most_common(1)[0][0])
                victim.kill()
                killed_at = time.monotonic()
            await asyncio.sleep(0.02)
        assert victim is not None, f"only {len(acked)} rows were acknowledged while {total} were written"
        await eventually(lambda: len(acked) >= total, timeout=120, interval=0.5)
        drained = time.monotonic() - killed_at
        assert await published() == total
        assert set(acks_per_event.values()) == {1}, "each row was acknowledged once"
    finally:
        relay.stop()
        await asyncio.wait_for(asyncio.gather(relay_task, return_exceptions=True), 30)
        await engine.dispose()

    # The killed broker comes back with its data dir and catches up on every partition it holds.
    assert victim is not None
    victim.start(timeout=120)
    rejoined_at = time.monotonic()

    async def in_sync_everywhere() -> bool:
        topics, _ = await _describe(kafka_cluster.bootstrap, [topic.name])
        partitions = topics[topic.name]["partitions"]
        return len(partitions) == 6 and all(sorted(p["isr"]) == [1, 2, 3] for p in partitions)

    await eventually(in_sync_everywhere, timeout=90, interval=0.5)

    held = await _records_held(kafka_cluster.bootstrap, topic.name)
    assert held == total, f"the topic holds {held} records for {total} events"
    records = await read_topic(kafka_cluster.bootstrap, topic.name, until=lambda rs: len(rs) >= held, timeout=60)
    on_topic = Counter(r.value.decode() for r in records)
    assert len(records) == total and len(on_topic) == total, (
        f"{len(records)} records for {len(on_topic)} events; twice: {[e for e, n in on_topic.items() if n > 1][:5]}")
    assert {r.value.decode(): (r.partition, r.offset) for r in records} == acked, (
        "every event sits where its acknowledgement said")
    after = [t for t in ack_times if t >= killed_at]
    stall = max(b - a for a, b in zip([killed_at, *after], after, strict=False)) if after else float("nan")
    print(f"kill -9 of node {victim.node_id}: all {total} published {drained:.1f}s after the kill, the longest "
          f"wait between acknowledgements {stall:.1f}s; "
          f"back in every ISR {time.monotonic() - rejoined_at:.1f}s after its restart")
