"""Each event is its type's model on the way in: a record of a known type whose payload misses a required field,
or of a type nobody declared, goes to the dead-letter topic with the reason (the field named), and the consumer
goes on. Real issuer, sync service and tax store over real Kafka."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from shared.consumers import ISSUER_STATUS_FEED, SYNC_SUBMIT
from shared.envelope import encode, new_envelope
from shared.events import INVOICE_ISSUED, INVOICE_SUBMITTED, ISSUER_SOURCE, SYNC_SOURCE
from shared.topics import INVOICE_EVENTS, SYNC_RESULTS, dlq_name
from tests.conftest import Pipeline, read_topic
from tests.steps import issue, new_tenant, until_all


def _issued_without(field: str, marker: str) -> dict[str, object]:
    iid = str(uuid.uuid4())
    data: dict[str, object] = {
        "invoice_id": iid, "tenant_id": str(uuid.uuid4()), "seller_tax_id": "91440300708461136T",
        "number": "26" + "0" * 18, "content_hash": "a" * 64, "accepted_at": datetime.now(UTC).isoformat(),
        "invoice": {"marker": marker}}
    del data[field]
    return data


async def _dead_letters(pipeline: Pipeline, topic: str, marker: bytes, group: str, n: int) -> list[dict[str, bytes]]:
    """The headers of the copies `group` set aside of the records keyed with `marker` (waiting for `n`)."""
    bootstrap = pipeline.issuer.settings.kafka_bootstrap  # type: ignore[attr-defined]

    def mine(records: list) -> list[dict[str, bytes]]:  # type: ignore[type-arg]
        headers = [dict(r.headers) for r in records if marker in (r.key or b"")]
        return [h for h in headers if h["dlq.consumer.group"] == group.encode()]

    return mine(await read_topic(bootstrap, dlq_name(topic), timeout=60, until=lambda rs: len(mine(rs)) >= n))


async def test_a_payload_missing_a_required_field_or_of_an_unknown_type_is_dead_lettered_with_the_reason(
        pipeline: Pipeline) -> None:
    tenant = await new_tenant(pipeline)
    settings = pipeline.issuer.settings
    prefix = settings.topic_prefix  # type: ignore[attr-defined]
    events_topic, results_topic = INVOICE_EVENTS.qualified(prefix), SYNC_RESULTS.qualified(prefix)
    marker = f"contract-{uuid.uuid4().hex[:8]}"
    missing = new_envelope(source=ISSUER_SOURCE, type=INVOICE_ISSUED, subject=str(uuid.uuid4()),
                           tenant=str(uuid.uuid4()), sequence=1, data=_issued_without("content_hash", marker))
    unknown = new_envelope(source=ISSUER_SOURCE, type="cn.fapiao.invoice.red-lettered.v1", subject=str(uuid.uuid4()),
                           tenant=str(uuid.uuid4()), sequence=2, data={"invoice_id": str(uuid.uuid4())})
    result = new_envelope(source=SYNC_SOURCE, type=INVOICE_SUBMITTED, subject=str(uuid.uuid4()),
                          tenant=str(uuid.uuid4()), sequence=1,
                          data={"invoice_id": str(uuid.uuid4()), "receipt_no": "R-1", "how": "created"})  # no attempt
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)  # type: ignore[attr-defined]
    await producer.start()
    try:
        await producer.send_and_wait(events_topic, encode(missing), key=f"{marker}-missing".encode())
        await producer.send_and_wait(events_topic, encode(unknown), key=f"{marker}-unknown".encode())
        await producer.send_and_wait(results_topic, encode(result), key=f"{marker}-result".encode())
    finally:
        await producer.stop()

    # The sync service sets both aside, saying why, and keeps submitting what comes after them.
    ids = await issue(pipeline, tenant, 5)
    await until_all(pipeline, tenant, "submitted", 5, timeout=60)
    mine = await _dead_letters(pipeline, events_topic, marker.encode(), SYNC_SUBMIT.qualified(prefix), 2)
    errors = sorted(h["dlq.error"].decode() for h in mine)
    assert len(errors) == 2, errors
    assert any("PayloadError" in e and f"{INVOICE_ISSUED} payload: data.content_hash: Field required" in e
               for e in errors), errors
    assert any("UnknownEventType" in e and "cn.fapiao.invoice.red-lettered.v1" in e for e in errors), errors
    assert set(await pipeline.stored(tenant.tax_id)) == set(ids)

    # The issuer's status feed does the same with a sync result that does not say which attempt it was.
    [feed] = await _dead_letters(pipeline, results_topic, marker.encode(), ISSUER_STATUS_FEED.qualified(prefix), 1)
    assert f"{INVOICE_SUBMITTED} payload: data.attempt: Field required" in feed["dlq.error"].decode()
    assert feed["dlq.origin.topic"] == results_topic.encode()
