"""shared/kafka.py against a real broker: safe defaults, the consume loop, dead-lettering."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaProducer
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text

from shared.db import make_engine, mark_processed, processed_events_table
from shared.envelope import encode, new_envelope
from shared.errors import RetriableError
from shared.kafka import ConsumeLoop, consumer_config, ensure_topics, make_consumer, make_producer, producer_config
from shared.topics import Topic, dlq_name
from tests.harness import eventually, read_topic


def test_factories_override_aiokafkas_unsafe_defaults():
    p = producer_config("127.0.0.1:1")
    assert p["acks"] == "all" and p["enable_idempotence"] is True
    c = consumer_config("127.0.0.1:1", group_id="g")
    assert c["enable_auto_commit"] is False and c["auto_offset_reset"] == "earliest"
    assert c["isolation_level"] == "read_committed"


async def test_built_clients_carry_the_safe_settings(infra):
    producer = make_producer(infra.kafka_bootstrap)
    consumer = make_consumer(infra.kafka_bootstrap, "x", group_id="g")
    try:
        # aiokafka keeps these privately: a transaction manager exists only for idempotent producers.
        assert producer._txn_manager is not None, "idempotence on"
        assert producer._sender._acks == -1, "acks=all"
        assert consumer._enable_auto_commit is False
        assert consumer._auto_offset_reset == "earliest"
    finally:
        await consumer.stop()
        await producer.stop()


async def test_consume_loop_applies_once_dead_letters_poison_and_keeps_going(infra):
    """Valid events are applied exactly once (even when redelivered); poison goes to the DLQ with its
    origin, and the events after it are still processed; committed offsets survive a restart."""
    suffix = uuid.uuid4().hex[:8]
    topic = Topic(f"test.loop.{suffix}.v1", "test")
    await ensure_topics(infra.kafka_bootstrap, [topic, topic.dlq], partitions=2)
    schema = f"looptest_{suffix}"
    engine = make_engine(infra.database_url)
    md = MetaData(schema=schema)
    applied = Table("applied", md, Column("event_id", String, primary_key=True), Column("n", Integer))
    processed = processed_events_table(md)
    async with engine.begin() as conn:
        await conn.execute(text(f"create schema {schema}"))
        await conn.run_sync(md.create_all)

    flaky = {"left": 2}

    async def handler(envelope, record):  # type: ignore[no-untyped-def]
        if envelope.data.get("flaky") and flaky["left"] > 0:
            flaky["left"] -= 1
            raise RetriableError("database briefly unavailable")
        if envelope.data.get("explode"):
            raise ValueError("this event can never be applied")
        async with engine.begin() as conn:  # effect + idempotency record in one transaction
            if await mark_processed(conn, processed, group="test", event_id=envelope.id):
                await conn.execute(applied.insert().values(event_id=envelope.id, n=envelope.data["n"]))

    events = [new_envelope(source="test", type="cn.fapiao.test.v1", subject=f"inv-{i % 3}", tenant="t",
                           sequence=1, data={"n": i, "flaky": i == 4, "explode": i == 6}) for i in range(10)]
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    sent = {}
    for i, e in enumerate(events):
        sent[i] = await producer.send_and_wait(topic.name, encode(e), key=e.subject.encode())
        if i == 2:
            await producer.send_and_wait(topic.name, b"{not json", key=b"inv-2")
        if i == 7:
            await producer.send_and_wait(topic.name, encode(events[3]), key=events[3].subject.encode())  # redelivery
    group = f"test.loop.{suffix}"

    async def run_loop_until(done):  # type: ignore[no-untyped-def]
        consumer = make_consumer(infra.kafka_bootstrap, group_id=group)
        await consumer.start()
        loop = ConsumeLoop(consumer=consumer, producer=producer, topics=[topic.name], handler=handler,
                           dlq_topic=dlq_name, group_id=group, max_inline_retries=3)
        task = asyncio.create_task(loop.run())
        try:
            await eventually(done, timeout=30)
        finally:
            loop.stop()
            await asyncio.wait_for(task, 10)
            await consumer.stop()

    async def applied_ns():  # type: ignore[no-untyped-def]
        async with engine.connect() as conn:
            return sorted(r.n for r in await conn.execute(select(applied.c.n)))

    async def all_but_poison_applied():  # type: ignore[no-untyped-def]
        return await applied_ns() == [0, 1, 2, 3, 4, 5, 7, 8, 9]

    await run_loop_until(all_but_poison_applied)
    assert flaky["left"] == 0, "the retriable failure was retried, not dead-lettered"

    dead = await read_topic(infra.kafka_bootstrap, dlq_name(topic.name), until=lambda rs: len(rs) >= 2)
    assert len(dead) == 2
    by_value = {r.value: dict(r.headers) for r in dead}
    assert by_value[b"{not json"][ "dlq.origin.topic"] == topic.name.encode()
    assert b"EnvelopeError" in by_value[b"{not json"]["dlq.error"]
    exploded = next(h for v, h in by_value.items() if v != b"{not json")
    assert b"ValueError" in exploded["dlq.error"] and exploded["dlq.consumer.group"] == group.encode()
    assert (exploded["dlq.origin.partition"], exploded["dlq.origin.offset"]) == (
        str(sent[6].partition).encode(), str(sent[6].offset).encode()), "the poison record's own place"

    # A restarted consumer in the same group starts after the committed offsets: nothing is re-applied,
    # and one new event is processed.
    extra = new_envelope(source="test", type="cn.fapiao.test.v1", subject="inv-0", tenant="t", sequence=2,
                         data={"n": 10})
    await producer.send_and_wait(topic.name, encode(extra), key=b"inv-0")

    async def extra_applied():  # type: ignore[no-untyped-def]
        return 10 in await applied_ns()

    await run_loop_until(extra_applied)
    assert await applied_ns() == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]
    dead = await read_topic(infra.kafka_bootstrap, dlq_name(topic.name), until=lambda rs: False, timeout=1.5)
    assert len(dead) == 2, "nothing dead-lettered twice after the restart"
    await producer.stop()
    async with engine.begin() as conn:
        await conn.execute(text(f"drop schema {schema} cascade"))
    await engine.dispose()
    assert json.loads(encode(extra))["sequence"] == 2
